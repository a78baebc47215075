-- Hosts that run agents (docs/architecture.md "Beyond one host"): each runs a
-- node agent; the control half places agents on them and tracks their
-- heartbeats. ``state`` is ``up`` while heartbeats come, ``lost`` after
-- ``node.lost_after_s`` without one.
CREATE TABLE nodes (
    name text PRIMARY KEY,
    nkey text NOT NULL DEFAULT '',  -- its NATS user's public key (when known)
    state text NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'lost')),
    revision text NOT NULL DEFAULT '',
    backend text NOT NULL DEFAULT '',
    joined_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz,
    state_since timestamptz NOT NULL DEFAULT now()
);

-- The node an agent's container is placed on (its state dir lives there).
ALTER TABLE agents ADD COLUMN node text NOT NULL DEFAULT 'hub';
