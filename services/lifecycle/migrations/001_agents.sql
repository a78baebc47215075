-- The agent registry: one row per name, kept after destroy (kept state).
CREATE TABLE agents (
    name text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('manager', 'agent')),
    state text NOT NULL
        CHECK (state IN ('draft', 'creating', 'running', 'stopped', 'failed', 'destroyed')),
    port integer,
    rev text NOT NULL DEFAULT '',
    backend text NOT NULL DEFAULT '',
    state_seq bigint NOT NULL DEFAULT 0,
    state_since timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    kept_state boolean NOT NULL DEFAULT false,
    error text NOT NULL DEFAULT ''
);

-- Two live agents never share a web port.
CREATE UNIQUE INDEX agents_port_live ON agents (port)
    WHERE port IS NOT NULL AND state <> 'destroyed';
