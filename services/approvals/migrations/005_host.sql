-- The node a Spawn approval places the agent on ('' : lifecycle picks).
ALTER TABLE approvals ADD COLUMN host text NOT NULL DEFAULT '';
