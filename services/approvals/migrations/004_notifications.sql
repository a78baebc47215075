-- What the webhook (notify.url) was told: one row per decision that waited
-- for the operator, so that a restart neither loses nor repeats a
-- notification. decision + ref_id name an approvals or questions row.
CREATE TABLE notifications (
    id bigserial PRIMARY KEY,
    decision text NOT NULL CHECK (decision IN ('approval', 'question')),
    ref_id bigint NOT NULL,
    -- pending: to send (at next_at); sent: a 2xx answered; skipped: decided
    -- before it was sent; gave_up: max_attempts failures
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sent', 'skipped', 'gave_up')),
    attempts integer NOT NULL DEFAULT 0,
    next_at timestamptz NOT NULL DEFAULT now(),
    last_error text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    UNIQUE (decision, ref_id)
);

CREATE INDEX notifications_due_idx ON notifications (next_at) WHERE state = 'pending';
