package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/otaflow/otaflow/internal/ota"
)

// TargetListSeparator separates the rollout name from the random part of a target list's key.
// Rollout names cannot contain it.
const TargetListSeparator = "/"

// errNoneRegistered rolls back a target list none of whose devices is registered.
var errNoneRegistered = errors.New("none of the devices is registered")

// CreateTargetList stores an explicit device list for the rollout name under a new key of its
// own, "<name>/<random>", and returns the key (for ota.DeviceFilter.List). A list is never
// replaced nor merged: two starts of one rollout name store two lists, and the one that does
// not start its rollout deletes its own (DeleteTargetList). It returns the IDs that are not
// registered devices; they are not stored. When none is registered, nothing is stored and the
// key is "".
func (s *Store) CreateTargetList(ctx context.Context, name string, ids []string) (key string, unknown []string, err error) {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", nil, fmt.Errorf("make a target list key: %w", err)
	}
	key = name + TargetListSeparator + hex.EncodeToString(r[:])
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO target_lists (key, rollout) VALUES ($1, $2)`, key, name); err != nil {
			return fmt.Errorf("store target list of rollout %s: %w", name, err)
		}
		rows, err := tx.Query(ctx, `INSERT INTO rollout_targets (rollout, device_id)
			SELECT $1, d.id FROM devices d WHERE d.id = ANY($2) ON CONFLICT DO NOTHING RETURNING device_id`, key, ids)
		if err != nil {
			return fmt.Errorf("store target list of rollout %s: %w", name, err)
		}
		stored, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("store target list of rollout %s: %w", name, err)
		}
		known := make(map[string]bool, len(stored))
		for _, id := range stored {
			known[id] = true
		}
		for _, id := range ids {
			if !known[id] {
				unknown = append(unknown, id)
			}
		}
		if len(stored) == 0 {
			return errNoneRegistered
		}
		return nil
	})
	if errors.Is(err, errNoneRegistered) {
		return "", unknown, nil
	}
	if err != nil {
		return "", nil, err
	}
	return key, unknown, nil
}

// TargetList is one stored explicit target list.
type TargetList struct {
	Key       string    `json:"key"`
	Rollout   string    `json:"rollout"`
	CreatedAt time.Time `json:"created_at"`
}

// TargetLists returns the target lists of a rollout name, oldest first: those of
// CreateTargetList, and one stored under the name itself by an earlier version.
func (s *Store) TargetLists(ctx context.Context, name string) ([]TargetList, error) {
	rows, err := s.pool.Query(ctx, `SELECT key, rollout, created_at FROM target_lists WHERE rollout = $1
		ORDER BY created_at, key`, name)
	if err != nil {
		return nil, fmt.Errorf("read target lists of rollout %s: %w", name, err)
	}
	lists, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TargetList, error) {
		var l TargetList
		err := r.Scan(&l.Key, &l.Rollout, &l.CreatedAt)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("read target lists of rollout %s: %w", name, err)
	}
	return lists, nil
}

// PruneTargetLists deletes the target lists of a rollout name stored more than olderThan ago
// (by the database's clock), except those whose key is in keep, and returns the deleted keys.
// The caller knows which lists are still in use; the age spares the lists of starts under way.
func (s *Store) PruneTargetLists(ctx context.Context, name string, keep []string, olderThan time.Duration) ([]string, error) {
	if keep == nil {
		keep = []string{}
	}
	rows, err := s.pool.Query(ctx, `DELETE FROM target_lists
		WHERE rollout = $1 AND key <> ALL($2) AND created_at < now() - make_interval(secs => $3)
		RETURNING key`, name, keep, olderThan.Seconds())
	if err != nil {
		return nil, fmt.Errorf("prune target lists of rollout %s: %w", name, err)
	}
	deleted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("prune target lists of rollout %s: %w", name, err)
	}
	return deleted, nil
}

// SnapshotTargets stores, as the target list key of the rollout name, the registered and
// enabled devices that match f (After and Limit are ignored), and returns how many the list
// holds. It is idempotent: a second call with the same key adds what matches now to the list
// and returns its size, so an activity retried after a lost reply counts right.
func (s *Store) SnapshotTargets(ctx context.Context, rollout, key string, f ota.DeviceFilter) (int, error) {
	if key == "" {
		return 0, errors.New("snapshot targets: empty list name")
	}
	q := matching(f)
	q.where("NOT d.disabled")
	insert := `INSERT INTO rollout_targets (rollout, device_id) SELECT ` + q.arg(key) + `, d.id` + q.sql + ` ON CONFLICT DO NOTHING`
	var n int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO target_lists (key, rollout) VALUES ($1, $2) ON CONFLICT DO NOTHING`, key, rollout); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, insert, q.args...); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT count(*) FROM rollout_targets WHERE rollout = $1`, key).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("snapshot targets of rollout %s as %s: %w", rollout, key, err)
	}
	return n, nil
}

// DeleteTargetLists deletes the target lists with these keys; missing lists are no error.
func (s *Store) DeleteTargetLists(ctx context.Context, keys []string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM target_lists WHERE key = ANY($1)`, keys); err != nil {
		return fmt.Errorf("delete target lists %v: %w", keys, err)
	}
	return nil
}
