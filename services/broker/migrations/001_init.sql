-- Messages between agents, the operator and the system (DESIGN.md section 3).
-- A message is pending until acked; ``lease_until`` is set while it is handed
-- out, and a lease in the past makes it available again (redelivery).
CREATE TABLE messages (
    id bigserial PRIMARY KEY,
    sender text NOT NULL,
    recipient text NOT NULL,
    body text NOT NULL,
    event jsonb,  -- the typed system event when sender = 'system'
    idempotency_key text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at timestamptz,  -- first hand-out
    lease_until timestamptz,  -- handed out until then; NULL: never handed out or acked
    deliveries integer NOT NULL DEFAULT 0,
    acked_at timestamptz
);

-- the same key from the same sender names one message
CREATE UNIQUE INDEX messages_idempotency ON messages (sender, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- recv: the oldest pending message of one recipient
CREATE INDEX messages_pending ON messages (recipient, id) WHERE acked_at IS NULL;

-- history filtered by agent
CREATE INDEX messages_recipient ON messages (recipient, id);
CREATE INDEX messages_sender ON messages (sender, id);
CREATE INDEX messages_created ON messages (created_at);

-- Turn statistics, one row per (turn, key), from hive.agent.<n>.stats.
CREATE TABLE stats (
    agent text NOT NULL,
    ts timestamptz NOT NULL,
    key text NOT NULL,
    value double precision NOT NULL
);

CREATE INDEX stats_agent_ts ON stats (agent, ts);
CREATE INDEX stats_ts ON stats (ts);
