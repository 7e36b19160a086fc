package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/ota"
)

// SelectPageSize is how many devices SelectTargets and FindLate judge at a time: their
// memory is bounded by it, whatever the size of the fleet.
const SelectPageSize = 1000

// candidateColumns are what ota.Selector.Judge needs of a device d: whether it is disabled,
// has reported its status and is in quarantine, its labels and reported versions.
const candidateColumns = `d.id, d.disabled, d.reported_at IS NOT NULL, d.labels, d.reported,
	EXISTS (SELECT 1 FROM device_quarantine q WHERE q.device_id = d.id AND q.quarantined_at IS NOT NULL)`

// scanned is a device of a page of the registry: what Judge needs, and whether the
// selector's filter matches it.
type scanned struct {
	c       ota.Candidate
	matches bool
	xid     string // its last change, for FindLate
}

func scanCandidate(row pgx.Row, extra ...any) (ota.Candidate, error) {
	var c ota.Candidate
	var labels, reported []byte
	if err := row.Scan(append([]any{&c.ID, &c.Disabled, &c.Seen, &labels, &reported, &c.Quarantined}, extra...)...); err != nil {
		return c, err
	}
	if err := json.Unmarshal(labels, &c.Labels); err != nil {
		return c, fmt.Errorf("decode labels of %s: %w", c.ID, err)
	}
	if err := json.Unmarshal(reported, &c.Reported); err != nil {
		return c, fmt.Errorf("decode reported status of %s: %w", c.ID, err)
	}
	return c, nil
}

// Selection says what SelectTargets does besides counting.
type Selection struct {
	// Rollout and Key: store the targets as the target list Key of the rollout (none when
	// Key is ""). A list of that key is replaced, so that a retried selection stores what
	// it counts.
	Rollout, Key string
	// IDs, when not nil, keeps only these devices (an explicit list not stored, as
	// `rollout plan` has).
	IDs []string
	// KeepLeftOut stores the devices left out as incompatible or quarantined with the list.
	KeepLeftOut bool
	// Page, when set, is called after each page with the number of devices judged so far.
	Page func(judged int)
}

// SelectTargets judges every device the selector's filter matches, page by page in one
// consistent snapshot of the registry, counts the targets and those left out by reason, and
// stores what sel asks for. It also returns where the registry's changes after the snapshot
// begin, for a continuous rollout.
func (s *Store) SelectTargets(ctx context.Context, sel ota.Selector, how Selection) (ota.TargetSelection, error) {
	var out ota.TargetSelection
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		out = ota.TargetSelection{}
		// First, so that it is the snapshot's: every change below it is in the snapshot.
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&out.Changes.XID); err != nil {
			return err
		}
		if how.Key != "" {
			if _, err := tx.Exec(ctx, `INSERT INTO target_lists (key, rollout) VALUES ($1, $2) ON CONFLICT DO NOTHING`, how.Key, how.Rollout); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM rollout_targets WHERE rollout = $1`, how.Key); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM rollout_left_out WHERE list = $1`, how.Key); err != nil {
				return err
			}
		}
		after, judged := "", 0
		for {
			// A page of the registry in ID order, read through the primary key, then
			// filtered: asked for the first page of devices that match, the planner, which
			// takes a label filter for a very selective one, scans the whole table for each.
			where, args := deviceFilter(sel.Filter, how.IDs, []any{after, SelectPageSize})
			rows, err := tx.Query(ctx, `WITH page AS MATERIALIZED (SELECT id FROM devices WHERE id > $1 ORDER BY id LIMIT $2)
				SELECT `+candidateColumns+`, `+where+` FROM page JOIN devices d ON d.id = page.id ORDER BY d.id`, args...)
			if err != nil {
				return err
			}
			page, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (scanned, error) {
				var s scanned
				var err error
				s.c, err = scanCandidate(r, &s.matches)
				return s, err
			})
			if err != nil {
				return err
			}
			var targets []string
			var left leftOutRows
			for _, s := range page {
				if !s.matches {
					continue
				}
				c := s.c
				judged++
				reason := sel.Judge(c)
				out.LeftOut.Add(reason)
				if reason == "" {
					out.Targets++
					targets = append(targets, c.ID)
				} else {
					left.add(c.ID, reason)
				}
			}
			if how.Key != "" && len(targets) > 0 {
				if _, err := tx.Exec(ctx, `INSERT INTO rollout_targets (rollout, device_id) SELECT $1, unnest($2::text[])`,
					how.Key, targets); err != nil {
					return err
				}
			}
			if how.Key != "" && how.KeepLeftOut {
				left.dropped = nil // the list's rows were all removed first
				if err := left.store(ctx, tx, how.Key); err != nil {
					return err
				}
			}
			if how.Page != nil {
				how.Page(judged)
			}
			if len(page) < SelectPageSize {
				return nil
			}
			after = page[len(page)-1].c.ID
		}
	})
	if err != nil {
		return ota.TargetSelection{}, fmt.Errorf("select the targets of rollout %s: %w", how.Rollout, err)
	}
	if how.Key != "" && out.Targets >= SelectPageSize {
		// The rollout reads its list page by page at once: the planner must know that the
		// list is large, or it sorts the whole list for every page. Best effort: autovacuum
		// would tell it within a minute or so.
		_, _ = s.pool.Exec(ctx, `ANALYZE rollout_targets`)
	}
	return out, nil
}

// leftOutRows are the devices of a page left out, as rollout_left_out keeps them: those
// left out as incompatible or quarantined are stored, the others (and targets) removed.
type leftOutRows struct {
	kept, keptReasons, dropped []string
}

func (l *leftOutRows) add(id string, reason ota.LeftOutReason) {
	if reason == ota.LeftIncompatible || reason == ota.LeftQuarantined {
		l.kept = append(l.kept, id)
		l.keptReasons = append(l.keptReasons, string(reason))
		return
	}
	l.dropped = append(l.dropped, id)
}

func (l *leftOutRows) store(ctx context.Context, tx pgx.Tx, list string) error {
	if list == "" {
		return nil
	}
	if len(l.kept) > 0 {
		if _, err := tx.Exec(ctx, `INSERT INTO rollout_left_out (list, device_id, reason)
			SELECT $1, id, reason FROM unnest($2::text[], $3::text[]) AS r(id, reason)
			ON CONFLICT (list, device_id) DO UPDATE SET reason = EXCLUDED.reason`, list, l.kept, l.keptReasons); err != nil {
			return fmt.Errorf("keep the devices left out: %w", err)
		}
	}
	if len(l.dropped) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM rollout_left_out WHERE list = $1 AND device_id = ANY($2)`, list, l.dropped); err != nil {
			return fmt.Errorf("drop the devices no longer left out: %w", err)
		}
	}
	return nil
}

// LateSearch is one step of a continuous rollout's search for late targets.
type LateSearch struct {
	// Rollout is the rollout's name and Since its start: a device with an upgrade of the
	// rollout started since, other than one that timed out, is not taken on again.
	Rollout string
	Since   time.Time
	// LeftOutKey is the rollout's target list, with which the devices left out as
	// incompatible or quarantined are kept.
	LeftOutKey string
	Selector   ota.Selector
	Cursor     ota.ChangeCursor
	// Limit bounds the targets returned; ScanLimit the changed devices looked at in one step.
	Limit, ScanLimit int
}

// errBadCursor is the error of a change cursor that is not one the store made.
var errBadCursor = errors.New("not a change cursor of this store")

// FindLate judges the devices that changed after the search's cursor (registered, reported
// their status, had labels changed, were enabled or disabled), in the order of their
// changes, and returns the targets among them that the rollout has not taken on yet, where
// to go on from, and the rollout's devices left out now as incompatible or quarantined. It
// returns once it has Limit targets, judged ScanLimit devices, or seen every committed
// change.
func (s *Store) FindLate(ctx context.Context, q LateSearch) (ota.LateTargets, error) {
	out := ota.LateTargets{Cursor: q.Cursor}
	if out.Cursor.XID == "" {
		out.Cursor.XID = "0"
	}
	if _, err := strconv.ParseUint(out.Cursor.XID, 10, 64); err != nil {
		return ota.LateTargets{}, fmt.Errorf("find late targets of rollout %s: cursor %+v: %w", q.Rollout, q.Cursor, errBadCursor)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var bound string
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&bound); err != nil {
			return err
		}
		judged := 0
		for len(out.IDs) < q.Limit && judged < q.ScanLimit {
			page := min(SelectPageSize, q.ScanLimit-judged)
			// The changes in order through their index, then filtered (see SelectTargets).
			where, args := deviceFilter(q.Selector.Filter, nil, []any{out.Cursor.XID, out.Cursor.ID, bound, page})
			rows, err := tx.Query(ctx, `WITH page AS MATERIALIZED (
					SELECT id, changed_xid FROM devices WHERE (changed_xid, id) > ($1::xid8, $2) AND changed_xid < $3::xid8
					ORDER BY changed_xid, id LIMIT $4)
				SELECT `+candidateColumns+`, `+where+`, page.changed_xid::text
				FROM page JOIN devices d ON d.id = page.id ORDER BY page.changed_xid, page.id`, args...)
			if err != nil {
				return err
			}
			cands, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (scanned, error) {
				var s scanned
				var err error
				s.c, err = scanCandidate(r, &s.matches, &s.xid)
				return s, err
			})
			if err != nil {
				return err
			}
			var targets []scanned
			var left leftOutRows
			for _, ch := range cands {
				if !ch.matches {
					continue
				}
				if reason := q.Selector.Judge(ch.c); reason != "" {
					left.add(ch.c.ID, reason)
				} else {
					left.dropped = append(left.dropped, ch.c.ID)
					targets = append(targets, ch)
				}
			}
			if err := left.store(ctx, tx, q.LeftOutKey); err != nil {
				return err
			}
			ids := make([]string, len(targets))
			for i, t := range targets {
				ids[i] = t.c.ID
			}
			taken := map[string]bool{}
			rows, err = tx.Query(ctx, `SELECT DISTINCT device_id FROM upgrades
				WHERE device_id = ANY($1) AND rollout = $2 AND created_at >= $3 AND state <> 'timed_out'`, ids, q.Rollout, q.Since)
			if err != nil {
				return err
			}
			takenIDs, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			for _, id := range takenIDs {
				taken[id] = true
			}
			judged += len(cands)
			full := false
			for _, t := range targets {
				if taken[t.c.ID] {
					continue
				}
				out.IDs = append(out.IDs, t.c.ID)
				if len(out.IDs) == q.Limit {
					out.Cursor = ota.ChangeCursor{XID: t.xid, ID: t.c.ID}
					full = true
					break
				}
			}
			if full {
				break
			}
			if len(cands) < page {
				// Every change below the bound has been judged.
				out.Cursor = ota.ChangeCursor{XID: bound}
				break
			}
			last := cands[len(cands)-1]
			out.Cursor = ota.ChangeCursor{XID: last.xid, ID: last.c.ID}
		}
		rows, err := tx.Query(ctx, `SELECT reason, count(*) FROM rollout_left_out WHERE list = $1 GROUP BY reason`, q.LeftOutKey)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var reason string
			var n int
			if err := rows.Scan(&reason, &n); err != nil {
				return err
			}
			switch ota.LeftOutReason(reason) {
			case ota.LeftIncompatible:
				out.LeftOut.Incompatible = n
			case ota.LeftQuarantined:
				out.LeftOut.Quarantined = n
			}
		}
		return rows.Err()
	})
	if err != nil {
		return ota.LateTargets{}, fmt.Errorf("find late targets of rollout %s: %w", q.Rollout, err)
	}
	return out, nil
}
