-- Issue 14: the bridge advances a device's open upgrade record (downloading, downloaded and
-- the progress) from the progress reports it stores; it finds the record by device among
-- the upgrades not finished. The partial index holds the upgrades in flight only.
CREATE INDEX IF NOT EXISTS upgrades_open_device ON upgrades (device_id) WHERE finished_at IS NULL;
