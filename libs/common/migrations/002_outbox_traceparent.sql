-- the trace context of the transaction that wrote the row, published with it
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent text;
