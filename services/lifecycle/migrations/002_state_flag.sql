-- The transient flag of the change into the current state ('' for none), so
-- a poll of the registry tells a deliberate stop from a crash on its own.
ALTER TABLE agents ADD COLUMN state_flag text NOT NULL DEFAULT '';
