-- The first run ID of the rollout that started an upgrade ('' for upgrades started alone, and
-- by rollouts before this column): two rollouts of one name, one after the other, share the
-- rollout column, and their records are told apart by this one.
ALTER TABLE upgrades ADD COLUMN IF NOT EXISTS rollout_run text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS upgrades_rollout_run_state ON upgrades (rollout_run, state) WHERE rollout_run <> '';
