package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/protocol"
)

// Report is one progress or status report of a device, for RecordBatch.
type Report struct {
	// DeviceID is the reporting device.
	DeviceID string
	// Progress is set for a progress report; when it is nil, the report is the status report
	// Status.
	Progress *protocol.Progress
	// Status is the versions reported, for a status report.
	Status protocol.Status
	// ReceivedAt is when the report was received.
	ReceivedAt time.Time
}

// RecordBatch records reports and rejected messages in one transaction and one round trip
// to the database. Its effect is that of RecordProgress or RecordStatus called for each
// report in the order given, then RecordRejected for each rejected message in order: progress
// events and rejected messages are stored in order, a device's reported versions are those of
// its last status report, its last_seen the latest of its reports.
//
// It returns, for each report, whether it was stored: false when its device is not registered
// (what RecordProgress and RecordStatus report as ErrNotFound). Such a report changes nothing
// and does not stop the others from being stored. An error means nothing was stored.
func (s *Store) RecordBatch(ctx context.Context, reports []Report, rejected []Rejected) (stored []bool, err error) {
	var progress progressColumns
	var status statusColumns
	for _, r := range reports {
		if r.Progress != nil {
			progress.add(r.DeviceID, *r.Progress, r.ReceivedAt)
			continue
		}
		if err := status.add(r.DeviceID, r.Status, r.ReceivedAt); err != nil {
			return nil, err
		}
	}
	batch := &pgx.Batch{}
	known := map[string]bool{}
	collect := func(what string) func(pgx.Rows) error {
		return func(rows pgx.Rows) error {
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return fmt.Errorf("record %s: %w", what, err)
			}
			for _, id := range ids {
				known[id+"\x00"+what] = true
			}
			return nil
		}
	}
	if ids := append(append([]string(nil), progress.device...), status.device...); len(ids) > 0 {
		// The batch's devices are locked first, in ID order: bridges sharing a subscription
		// store the same devices at once, and rows locked in the order of each batch's
		// messages deadlock (PostgreSQL then aborts one batch).
		batch.Queue(lockDevicesBatch, ids)
	}
	if len(progress.device) > 0 {
		batch.Queue(recordProgressBatch, progress.device, progress.commandID, progress.typ, progress.version,
			progress.progress, progress.desc, progress.at).Query(collect("progress"))
		batch.Queue(advanceUpgradesBatch, progress.device, progress.commandID, progress.typ, progress.version,
			progress.progress, progress.desc, progress.at)
	}
	if len(status.device) > 0 {
		batch.Queue(recordStatusBatch, status.device, status.reported, status.at).Query(collect("status"))
	}
	if len(rejected) > 0 {
		var c rejectedColumns
		for _, r := range rejected {
			c.add(r)
		}
		batch.Queue(recordRejectedBatch, c.topic, c.device, c.reason, c.payload, c.at)
	}
	if batch.Len() == 0 {
		return []bool{}, nil
	}
	// A batch without transaction control statements runs as one implicit transaction.
	if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("record batch of %d reports and %d rejected messages: %w", len(reports), len(rejected), err)
	}
	stored = make([]bool, len(reports))
	for i, r := range reports {
		what := "status"
		if r.Progress != nil {
			what = "progress"
		}
		stored[i] = known[r.DeviceID+"\x00"+what]
	}
	return stored, nil
}

// lockDevicesBatch locks the registered devices among $1 in ID order, as the updates of a
// batch would lock them.
const lockDevicesBatch = `SELECT id FROM devices WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE`

// recordProgressBatch stores progress reports given as parallel arrays ($1 device, $2
// command ID, $3 type, $4 version, $5 progress, $6 description, $7 received at): it marks
// the registered devices seen and inserts their reports in array order. It returns the IDs
// of the registered devices. (advanceUpgradesBatch then moves the devices' upgrade records.)
const recordProgressBatch = `WITH r AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::timestamptz[])
		WITH ORDINALITY AS r(device_id, command_id, type, version, progress, description, received_at, ord)
), seen AS (
	UPDATE devices d SET last_seen = GREATEST(d.last_seen, m.at)
	FROM (SELECT device_id, max(received_at) AS at FROM r GROUP BY device_id) m
	WHERE d.id = m.device_id
	RETURNING d.id
), events AS (
	INSERT INTO progress_events (device_id, command_id, type, version, progress, description, received_at)
	SELECT r.device_id, r.command_id, r.type, r.version, r.progress, r.description, r.received_at
	FROM r WHERE r.device_id IN (SELECT id FROM seen) ORDER BY r.ord
)
SELECT id FROM seen`

// advanceUpgradesBatch moves the upgrade records on with the progress reports given as the
// parallel arrays of recordProgressBatch, in array order, as the upgrade's workflow would on
// each report: 1..99 means downloading, 100 downloaded. It changes only a record in flight
// (finished_at NULL) of the reporting device in state sent or downloading whose attempt the
// report is of (same type and version, and the record's command ID unless the report has
// none; without one, the latest such record), and only forwards: the progress never goes
// down, downloaded never goes back to downloading, and error codes change nothing. What the
// workflow decides (sent, pending between attempts, the final states) it alone writes; a
// record in another state, or of another attempt, is left as it is. Each change of state is
// recorded in upgrade_events too, at the report's time, as the workflow's records are.
//
// The records are locked (FOR UPDATE) before they are read, so that a workflow recording its
// decision at the same time either goes first (and the record no longer qualifies) or waits.
// The batch's devices are locked already, in ID order, so that bridges do not deadlock.
const advanceUpgradesBatch = `WITH r AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::timestamptz[])
		WITH ORDINALITY AS r(device_id, command_id, type, version, progress, description, received_at, ord)
	WHERE r.progress BETWEEN 1 AND 100
), open AS (
	SELECT run_id, device_id, type, version, command_id, state, progress, attempt, created_at FROM upgrades
	WHERE device_id IN (SELECT device_id FROM r) AND finished_at IS NULL AND state IN ('sent', 'downloading')
	FOR UPDATE
), matched AS (
	SELECT DISTINCT ON (r.ord) o.run_id, o.state AS old_state, o.progress AS old_progress, o.attempt,
		r.progress, r.description, r.received_at, r.ord
	FROM r JOIN open o ON o.device_id = r.device_id AND o.type = r.type AND o.version = r.version
		AND (o.command_id = r.command_id OR r.command_id = '')
	ORDER BY r.ord, o.created_at DESC
), advancing AS (
	-- The reports that move their record on: above every earlier one of the record.
	SELECT * FROM (
		SELECT m.*, GREATEST(m.old_progress, max(m.progress) OVER (PARTITION BY m.run_id ORDER BY m.ord
			ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS before
		FROM matched m) a
	WHERE a.progress > a.before
), moved AS (
	UPDATE upgrades u SET state = CASE WHEN c.progress = 100 THEN 'downloaded' ELSE 'downloading' END,
		progress = c.progress, updated_at = GREATEST(u.updated_at, c.at)
	FROM (SELECT run_id, max(progress) AS progress, max(received_at) AS at FROM advancing GROUP BY run_id) c
	WHERE u.run_id = c.run_id AND u.finished_at IS NULL AND u.state IN ('sent', 'downloading') AND u.progress < c.progress
	RETURNING u.run_id
)
INSERT INTO upgrade_events (run_id, state, attempt, error_code, detail, at)
SELECT e.run_id, CASE WHEN e.progress = 100 THEN 'downloaded' ELSE 'downloading' END, e.attempt, 0,
	'progress ' || e.progress || ' reported by the device' || CASE WHEN e.description <> '' THEN ': ' || e.description ELSE '' END,
	e.received_at
FROM (
	-- The state changes: the first report of 1..99 of a record that was sent, and the first 100.
	SELECT DISTINCT ON (run_id, progress = 100) * FROM advancing
	WHERE progress = 100 OR old_state = 'sent'
	ORDER BY run_id, progress = 100, ord
) e
WHERE e.run_id IN (SELECT run_id FROM moved)
ORDER BY e.ord`

// recordStatusBatch stores status reports given as parallel arrays ($1 device, $2 reported
// versions as JSON, $3 received at): each registered device gets the versions of its last
// report and is marked seen. It returns the IDs of the registered devices.
const recordStatusBatch = `WITH r AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS r(device_id, reported, received_at, ord)
), last AS (
	SELECT DISTINCT ON (device_id) device_id, reported::jsonb AS reported, received_at,
		max(received_at) OVER (PARTITION BY device_id) AS seen_at
	FROM r ORDER BY device_id, ord DESC
)
UPDATE devices d SET reported = l.reported, reported_at = l.received_at, last_seen = GREATEST(d.last_seen, l.seen_at)
FROM last l WHERE d.id = l.device_id
RETURNING d.id`

// recordRejectedBatch stores rejected messages given as parallel arrays ($1 topic, $2
// device, $3 reason, $4 payload, $5 received at), in array order.
const recordRejectedBatch = `INSERT INTO rejected_messages (topic, device_id, reason, payload, received_at)
SELECT topic, device_id, reason, payload, received_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::timestamptz[])
	WITH ORDINALITY AS r(topic, device_id, reason, payload, received_at, ord)
ORDER BY ord`

// progressColumns holds progress reports as the parallel arrays of recordProgressBatch.
type progressColumns struct {
	device, commandID, typ, version, desc []string
	progress                              []int32
	at                                    []time.Time
}

func (c *progressColumns) add(device string, p protocol.Progress, at time.Time) {
	c.device = append(c.device, device)
	c.commandID = append(c.commandID, p.ID)
	c.typ = append(c.typ, p.Type)
	c.version = append(c.version, p.Version)
	c.progress = append(c.progress, int32(p.Progress))
	c.desc = append(c.desc, p.Desc)
	c.at = append(c.at, at)
}

// statusColumns holds status reports as the parallel arrays of recordStatusBatch.
type statusColumns struct {
	device, reported []string
	at               []time.Time
}

func (c *statusColumns) add(device string, st protocol.Status, at time.Time) error {
	if st == nil {
		st = protocol.Status{}
	}
	js, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("record status of %s: %w", device, err)
	}
	c.device = append(c.device, device)
	c.reported = append(c.reported, string(js))
	c.at = append(c.at, at)
	return nil
}

// rejectedColumns holds rejected messages as the parallel arrays of recordRejectedBatch.
type rejectedColumns struct {
	topic, device, reason []string
	payload               [][]byte
	at                    []time.Time
}

func (c *rejectedColumns) add(r Rejected) {
	c.topic = append(c.topic, r.Topic)
	c.device = append(c.device, r.DeviceID)
	c.reason = append(c.reason, r.Reason)
	payload := r.Payload
	if payload == nil {
		payload = []byte{} // the column is NOT NULL, as with RecordRejected's empty payloads
	}
	c.payload = append(c.payload, payload)
	c.at = append(c.at, r.ReceivedAt)
}
