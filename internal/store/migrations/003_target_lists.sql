-- Every explicit target list gets a key of its own, "<rollout name>/<random>", instead of the
-- rollout name: two starts of one rollout name then never share, merge or replace a list.
-- target_lists says which rollout name a list belongs to and when it was stored, so that the
-- lists no rollout uses any more can be pruned (rollout_targets.rollout holds the list's key).
CREATE TABLE IF NOT EXISTS target_lists (
    key         text PRIMARY KEY,
    rollout     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS target_lists_rollout ON target_lists (rollout, created_at);

-- The lists earlier versions stored under the rollout name itself.
INSERT INTO target_lists (key, rollout) SELECT DISTINCT rollout, rollout FROM rollout_targets
ON CONFLICT DO NOTHING;

ALTER TABLE rollout_targets ADD CONSTRAINT rollout_targets_list_fkey
    FOREIGN KEY (rollout) REFERENCES target_lists (key) ON DELETE CASCADE;
