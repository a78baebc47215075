-- The outbox every service schema holds: events committed with the state
-- change they describe, published to HIVE_EVENTS by the service's relay
-- (hyperhive.common.outbox). IF NOT EXISTS: schemas made before this file
-- existed already have the table.
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY,
    subject text NOT NULL,
    payload bytea NOT NULL,
    msg_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
