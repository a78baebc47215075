-- Every operator decision is attributed: who (as the operator's tool says,
-- e.g. 'operator via dashboard (token "operator")') and when. An approve is
-- decided when it starts, before its build; a deny when it is recorded.
ALTER TABLE approvals ADD COLUMN decided_by text NOT NULL DEFAULT '';
ALTER TABLE approvals ADD COLUMN decided_at timestamptz;
ALTER TABLE questions ADD COLUMN answered_by text NOT NULL DEFAULT '';
