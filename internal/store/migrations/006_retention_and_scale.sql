-- Issue 13: bounded storage at 100,000 devices. Retention (what the cleanup workflow deletes
-- and when), the counts of reports the bridge's flood limit shed, and the indexes the access
-- patterns at that scale need. Independent of other migrations: it only adds.

-- The retention policy, one row, read by every run of the cleanup workflow and changed by
-- `starter retention set`. An interval of NULL keeps the rows forever.
CREATE TABLE IF NOT EXISTS retention_policy (
    only_row           boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    -- Progress reports, by when the bridge received them.
    progress_events    interval DEFAULT interval '30 days',
    -- Messages the bridge refused, by when it received them.
    rejected_messages  interval DEFAULT interval '30 days',
    -- Counts of reports the flood limit shed, by the start of their interval.
    shed_reports       interval DEFAULT interval '90 days',
    -- Finished upgrade records with their state changes, by when they finished: kept.
    upgrades           interval DEFAULT NULL,
    -- Target lists of rollouts (explicit lists, snapshots) that no rollout runs with and no
    -- schedule starts, by when they were stored.
    target_lists       interval DEFAULT interval '30 days',
    -- Rows one delete takes at most (one short transaction), and the pause between two.
    batch_size         integer NOT NULL DEFAULT 5000 CHECK (batch_size BETWEEN 100 AND 50000),
    batch_pause        interval NOT NULL DEFAULT interval '100 milliseconds',
    -- When `starter retention set` last changed it; NULL: the defaults of this migration.
    updated_at         timestamptz
);
INSERT INTO retention_policy (only_row) VALUES (true) ON CONFLICT DO NOTHING;

-- The counts of reports the bridge's flood limit did not store: one row per device, reason
-- and interval, added to by each flush (several bridges may count the same interval).
CREATE TABLE IF NOT EXISTS shed_reports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id     text NOT NULL,
    reason        text NOT NULL,
    period_start  timestamptz NOT NULL,
    count         bigint NOT NULL CHECK (count > 0),
    first_at      timestamptz NOT NULL,
    last_at       timestamptz NOT NULL,
    UNIQUE (device_id, period_start, reason)
);

-- The cleanup walks the expired rows in (time, id) order, a batch at a time, from where the
-- previous batch ended: each batch is an index range, never a scan of what went before.
CREATE INDEX IF NOT EXISTS progress_events_received ON progress_events (received_at, id);
CREATE INDEX IF NOT EXISTS rejected_messages_received ON rejected_messages (received_at, id);
CREATE INDEX IF NOT EXISTS shed_reports_period ON shed_reports (period_start, id);
CREATE INDEX IF NOT EXISTS upgrades_finished ON upgrades (finished_at, run_id) WHERE finished_at IS NOT NULL;

-- The cleanup deletes a thirtieth of these tables a day. Vacuumed when 2% of their rows are
-- dead rather than 20% (PostgreSQL's default), their heap settles at about 12% above what the
-- live rows need, not 34% (BenchmarkRetentionBloat). Taking no lock that writes wait for.
ALTER TABLE progress_events SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE rejected_messages SET (autovacuum_vacuum_scale_factor = 0.02);

-- Device IDs are ASCII (PROTOCOL.md: A-Z a-z 0-9 _ . -). Compared byte by byte (COLLATE "C")
-- a prefix is an index range, whatever the database's collation: `devices list --prefix` and
-- the targets of a rollout by prefix read only the devices they list.
CREATE INDEX IF NOT EXISTS devices_id_bytes ON devices ((id COLLATE "C"));
