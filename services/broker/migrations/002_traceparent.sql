-- The trace context of the send that wrote a message (DESIGN.md section 8):
-- recv hands it to the recipient, whose turn continues the sender's trace.
ALTER TABLE messages ADD COLUMN traceparent text;
