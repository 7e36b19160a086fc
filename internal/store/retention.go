package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/ota"
)

// RetentionPolicy returns the stored retention policy (migration 006 stores the defaults).
func (s *Store) RetentionPolicy(ctx context.Context) (ota.RetentionPolicy, error) {
	var p ota.RetentionPolicy
	keeps := []*time.Duration{&p.ProgressEvents, &p.RejectedMessages, &p.ShedReports, &p.Upgrades, &p.TargetLists}
	var secs [5]*float64
	var pause float64
	var updated *time.Time
	err := s.pool.QueryRow(ctx, `SELECT extract(epoch FROM progress_events), extract(epoch FROM rejected_messages),
		extract(epoch FROM shed_reports), extract(epoch FROM upgrades), extract(epoch FROM target_lists),
		batch_size, extract(epoch FROM batch_pause), updated_at FROM retention_policy`).
		Scan(&secs[0], &secs[1], &secs[2], &secs[3], &secs[4], &p.BatchSize, &pause, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return ota.RetentionPolicy{}, fmt.Errorf("retention policy: %w (the database's schema is older than OTAflow: run starter setup)", ErrNotFound)
	}
	if err != nil {
		return ota.RetentionPolicy{}, fmt.Errorf("read retention policy: %w", err)
	}
	for i, s := range secs {
		if s != nil { // NULL keeps forever: 0
			*keeps[i] = seconds(*s)
		}
	}
	p.BatchPause = seconds(pause)
	if updated != nil {
		p.UpdatedAt = *updated
	}
	return p, nil
}

// SetRetentionPolicy stores p, which must be valid, as the retention policy.
func (s *Store) SetRetentionPolicy(ctx context.Context, p ota.RetentionPolicy) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("retention policy: %w", err)
	}
	keep := func(d time.Duration) *float64 {
		if d == 0 {
			return nil // NULL: forever
		}
		s := d.Seconds()
		return &s
	}
	tag, err := s.pool.Exec(ctx, `UPDATE retention_policy SET
		progress_events = make_interval(secs => $1), rejected_messages = make_interval(secs => $2),
		shed_reports = make_interval(secs => $3), upgrades = make_interval(secs => $4),
		target_lists = make_interval(secs => $5), batch_size = $6, batch_pause = make_interval(secs => $7),
		updated_at = now()`,
		keep(p.ProgressEvents), keep(p.RejectedMessages), keep(p.ShedReports), keep(p.Upgrades), keep(p.TargetLists),
		p.BatchSize, p.BatchPause.Seconds())
	if err != nil {
		return fmt.Errorf("store retention policy: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("store retention policy: %w (run starter setup)", ErrNotFound)
	}
	return nil
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond)
}

// expiry says how an item's expired rows are found and deleted, a batch at a time: the
// batch's rows in (time, key) order after the cursor, deleted in one statement, which
// returns how many rows the batch held, how many of them it deleted (fewer when another
// delete took some first) and the (time, key) of the batch's last row.
type expiry struct {
	sql string
	// textKey is set when the key is text (the cursor's Key), not a bigint (its ID).
	textKey bool
}

// expiries are the batch deletes of the items kept in tables of their own. $1 is the cutoff,
// ($2, $3) the cursor, $4 the batch size.
var expiries = map[ota.RetentionItem]expiry{
	ota.RetainProgressEvents:   {sql: deleteByTime("progress_events", "received_at")},
	ota.RetainRejectedMessages: {sql: deleteByTime("rejected_messages", "received_at")},
	ota.RetainShedReports:      {sql: deleteByTime("shed_reports", "period_start")},
	// A finished upgrade goes with its state changes; a device's latest upgrade stays, so
	// that `starter status` always has it.
	ota.RetainUpgrades: {textKey: true, sql: `WITH batch AS (
		SELECT u.finished_at AS at, u.run_id AS key FROM upgrades u
		WHERE u.finished_at IS NOT NULL AND u.finished_at < $1 AND (u.finished_at, u.run_id) > ($2, $3)
		  AND EXISTS (SELECT 1 FROM upgrades later WHERE later.device_id = u.device_id AND later.created_at > u.created_at)
		ORDER BY u.finished_at, u.run_id LIMIT $4
	), events AS (
		DELETE FROM upgrade_events e WHERE e.run_id = ANY (ARRAY(SELECT key FROM batch))
	), gone AS (
		DELETE FROM upgrades u WHERE u.run_id = ANY (ARRAY(SELECT key FROM batch)) RETURNING 1
	)
	SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), last.at, last.key
	FROM (SELECT at, key FROM batch ORDER BY at DESC, key DESC LIMIT 1) last`},
}

// deleteByTime is the batch delete of a table with a bigint id by its time column. The rows
// are deleted by their keys (= ANY of an array), so that every plan, a generic one too, finds
// them through the primary key whatever size it guesses for the batch.
func deleteByTime(table, at string) string {
	return fmt.Sprintf(`WITH batch AS (
		SELECT id, %[2]s AS at FROM %[1]s WHERE %[2]s < $1 AND (%[2]s, id) > ($2, $3)
		ORDER BY %[2]s, id LIMIT $4
	), gone AS (
		DELETE FROM %[1]s t WHERE t.id = ANY (ARRAY(SELECT id FROM batch)) RETURNING 1
	)
	SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), last.at, last.id
	FROM (SELECT at, id FROM batch ORDER BY at DESC, id DESC LIMIT 1) last`, table, at)
}

// DeleteExpiredBatch deletes, in one short transaction, at most limit rows of item that are
// older than before and come after cursor in the item's (time, key) order, oldest first. It
// returns how many it deleted and the cursor after them, and done when the batch was the
// last: fewer than limit rows were left after the cursor. (Rows that expire meanwhile, or
// arrive with older times, are the next cleanup's.) The rows the bridge writes meanwhile are
// never locked nor waited for.
func (s *Store) DeleteExpiredBatch(ctx context.Context, item ota.RetentionItem, before time.Time, cursor ota.CleanupCursor, limit int) (deleted int, next ota.CleanupCursor, done bool, err error) {
	e, ok := expiries[item]
	if !ok {
		return 0, cursor, false, fmt.Errorf("delete expired %s: not a table the cleanup deletes in batches", item)
	}
	if limit <= 0 {
		return 0, cursor, false, fmt.Errorf("delete expired %s: batch size %d", item, limit)
	}
	var key any = cursor.ID
	next = cursor
	var lastKey any = &next.ID
	if e.textKey {
		key, lastKey = cursor.Key, &next.Key
	}
	var selected int
	err = s.pool.QueryRow(ctx, e.sql, before, cursor.At, key, limit).Scan(&selected, &deleted, &next.At, lastKey)
	if errors.Is(err, pgx.ErrNoRows) { // an empty batch has no last row
		return 0, cursor, true, nil
	}
	if err != nil {
		return 0, cursor, false, fmt.Errorf("delete expired %s before %s: %w", item, before.Format(time.RFC3339), err)
	}
	return deleted, next, selected < limit, nil
}

// ExpiredTargetLists returns at most limit target lists stored before before, in key order
// after the key after.
func (s *Store) ExpiredTargetLists(ctx context.Context, before time.Time, after string, limit int) ([]TargetList, error) {
	rows, err := s.pool.Query(ctx, `SELECT key, rollout, created_at FROM target_lists
		WHERE created_at < $1 AND key > $2 ORDER BY key LIMIT $3`, before, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read expired target lists: %w", err)
	}
	lists, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TargetList, error) {
		var l TargetList
		err := r.Scan(&l.Key, &l.Rollout, &l.CreatedAt)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("read expired target lists: %w", err)
	}
	return lists, nil
}

// DeleteTargetListBatch deletes at most limit devices of the target list key, in one short
// transaction, and the list itself once it has none left. It returns how many devices it
// deleted and whether the list is gone.
func (s *Store) DeleteTargetListBatch(ctx context.Context, key string, limit int) (int, bool, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM rollout_targets WHERE rollout = $1 AND device_id IN (
		SELECT device_id FROM rollout_targets WHERE rollout = $1 ORDER BY device_id LIMIT $2)`, key, limit)
	if err != nil {
		return 0, false, fmt.Errorf("delete devices of target list %s: %w", key, err)
	}
	n := int(tag.RowsAffected())
	if n == limit {
		return n, false, nil
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM target_lists WHERE key = $1`, key); err != nil {
		return n, false, fmt.Errorf("delete target list %s: %w", key, err)
	}
	return n, true, nil
}
