-- proposal/<id> is written after the row is committed (a crash in between
-- leaves a row without its tag, never a tag without a row): pinned says the
-- tag is in the applied repo; recovery writes it where it is false.
ALTER TABLE approvals ADD COLUMN pinned boolean NOT NULL DEFAULT true;

CREATE INDEX approvals_unpinned_idx ON approvals (id) WHERE NOT pinned;
