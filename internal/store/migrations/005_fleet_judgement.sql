-- Issue 11, the rollout's judgement about the fleet: quarantine, devices left out of a
-- rollout, and the change stream continuous rollouts follow. It needs only 001 and 003.

-- Changes to the registry, in commit order. Every registration, status report, label and
-- enable/disable change stamps the device with the ID of the transaction that made it
-- (pg_current_xact_id()). A reader that has seen every change below the oldest transaction
-- still running (pg_snapshot_xmin(pg_current_snapshot())) has seen every change that can
-- ever be stamped below it: no change is missed, however long a transaction takes to
-- commit, and no clock is compared.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS changed_xid xid8 NOT NULL DEFAULT '0';
CREATE INDEX IF NOT EXISTS devices_changed ON devices (changed_xid, id);

CREATE OR REPLACE FUNCTION otaflow_device_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS devices_changed ON devices;
CREATE TRIGGER devices_changed BEFORE INSERT OR UPDATE OF labels, reported, disabled ON devices
    FOR EACH ROW EXECUTE FUNCTION otaflow_device_changed();

-- The quarantine policy: a device whose last of_last judged upgrades (succeeded, failed,
-- timed out, reverted; skipped and canceled ones do not judge a device) include failures
-- failed, timed-out or reverted ones is quarantined. No row: quarantine is off.
CREATE TABLE IF NOT EXISTS quarantine_policy (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    failures    integer NOT NULL CHECK (failures >= 1),
    of_last     integer NOT NULL CHECK (of_last >= failures AND of_last <= 100),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Devices in quarantine (quarantined_at set) and devices released from it (released_at set:
-- only the upgrades that end after the release judge them again). No foreign key: judging a
-- device must never keep its upgrade's end from being recorded.
CREATE TABLE IF NOT EXISTS device_quarantine (
    device_id       text PRIMARY KEY,
    quarantined_at  timestamptz,
    reason          text NOT NULL DEFAULT '',
    released_at     timestamptz
);
CREATE INDEX IF NOT EXISTS device_quarantine_in ON device_quarantine (device_id) WHERE quarantined_at IS NOT NULL;

-- otaflow_judge_quarantine quarantines the device when the policy says so, and returns
-- whether it did (false when it already was, or the policy is off or not met).
CREATE OR REPLACE FUNCTION otaflow_judge_quarantine(dev text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    p quarantine_policy;
    since timestamptz;
    bad integer;
    judged integer;
    last_bad text;
BEGIN
    SELECT * INTO p FROM quarantine_policy;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM device_quarantine WHERE device_id = dev AND quarantined_at IS NOT NULL) THEN
        RETURN false;
    END IF;
    SELECT released_at INTO since FROM device_quarantine WHERE device_id = dev;
    SELECT count(*) FILTER (WHERE state IN ('failed', 'timed_out', 'reverted')), count(*),
           (array_agg(state || CASE WHEN rollout <> '' THEN ' in rollout ' || rollout ELSE '' END ORDER BY finished_at DESC)
               FILTER (WHERE state IN ('failed', 'timed_out', 'reverted')))[1]
      INTO bad, judged, last_bad
      FROM (SELECT state, rollout, finished_at FROM upgrades
             WHERE device_id = dev AND finished_at IS NOT NULL
               AND state IN ('succeeded', 'failed', 'timed_out', 'reverted')
               AND finished_at > COALESCE(since, '-infinity')
             ORDER BY finished_at DESC LIMIT p.of_last) last;
    IF bad < p.failures THEN
        RETURN false;
    END IF;
    INSERT INTO device_quarantine (device_id, quarantined_at, reason)
    VALUES (dev, now(), format('%s of its last %s upgrades failed, timed out or reverted (last: %s)', bad, judged, last_bad))
    ON CONFLICT (device_id) DO UPDATE SET quarantined_at = EXCLUDED.quarantined_at, reason = EXCLUDED.reason;
    RETURN true;
END
$$;

-- An upgrade that ends judges its device, whoever records the end.
CREATE OR REPLACE FUNCTION otaflow_upgrade_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.finished_at IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.finished_at IS NULL) THEN
        PERFORM otaflow_judge_quarantine(NEW.device_id);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS upgrades_ended ON upgrades;
CREATE TRIGGER upgrades_ended AFTER INSERT OR UPDATE OF finished_at ON upgrades
    FOR EACH ROW EXECUTE FUNCTION otaflow_upgrade_ended();

-- The devices a rollout left out as incompatible or quarantined, by its target snapshot's
-- key: a continuous rollout counts each once, and no longer once it is taken on.
CREATE TABLE IF NOT EXISTS rollout_left_out (
    list       text NOT NULL REFERENCES target_lists (key) ON DELETE CASCADE,
    device_id  text NOT NULL,
    reason     text NOT NULL,
    PRIMARY KEY (list, device_id)
);
