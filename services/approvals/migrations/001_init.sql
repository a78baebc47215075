-- The approval queue. A row is the system of record for one approval; the
-- agent's applied repo carries the matching tags (proposal/<id>, then one of
-- deployed/<id>, failed/<id>, denied/<id>).
CREATE TABLE approvals (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('ApplyCommit', 'Spawn')),
    agent text NOT NULL,
    commit_ref text NOT NULL DEFAULT '',
    fetched_sha text NOT NULL DEFAULT '',
    -- main of the applied repo when the approval started ('' = no main yet);
    -- a rollback returns main and the working tree here
    base_sha text NOT NULL DEFAULT '',
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'approved', 'deployed', 'failed', 'denied')),
    note text NOT NULL DEFAULT '',
    error text NOT NULL DEFAULT '',
    tag text NOT NULL DEFAULT '',
    -- the end tag is in the repo (a deny commits first and tags after)
    tagged boolean NOT NULL DEFAULT false,
    -- the outcome reached the manager's inbox
    notified boolean NOT NULL DEFAULT false,
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    approved_at timestamptz,
    resolved_at timestamptz
);

CREATE INDEX approvals_state_idx ON approvals (state, id);

-- One approval per agent in flight: two builds never move one working tree.
CREATE UNIQUE INDEX approvals_one_in_flight ON approvals (agent) WHERE state = 'approved';

-- One open spawn per name.
CREATE UNIQUE INDEX approvals_one_open_spawn ON approvals (agent)
    WHERE kind = 'Spawn' AND state IN ('pending', 'approved');

CREATE INDEX approvals_unsettled_idx ON approvals (id)
    WHERE state IN ('deployed', 'failed', 'denied') AND (NOT tagged OR NOT notified);

-- Questions from the manager to the operator. options NULL: free text;
-- otherwise radio (multi false) or checkboxes (multi true).
CREATE TABLE questions (
    id bigserial PRIMARY KEY,
    asked_by text NOT NULL,
    question text NOT NULL,
    options jsonb,
    multi boolean NOT NULL DEFAULT false,
    answer jsonb,
    notified boolean NOT NULL DEFAULT false,
    asked_at timestamptz NOT NULL DEFAULT now(),
    answered_at timestamptz
);

CREATE INDEX questions_open_idx ON questions (id) WHERE answer IS NULL;
CREATE INDEX questions_unnotified_idx ON questions (id) WHERE answer IS NOT NULL AND NOT notified;
