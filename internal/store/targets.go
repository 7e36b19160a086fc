package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// SnapshotTargets stores, as the target list named key, the registered and enabled devices
// that match f (After and Limit are ignored), and returns how many the list holds. It is
// idempotent: a second call with the same key adds what matches now to the list and returns
// its size, so an activity retried after a lost reply counts right.
func (s *Store) SnapshotTargets(ctx context.Context, key string, f DeviceFilter) (int, error) {
	if key == "" {
		return 0, errors.New("snapshot targets: empty list name")
	}
	match := map[string]string{}
	for k, v := range f.Labels {
		match[k] = v
	}
	var n int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO rollout_targets (rollout, device_id)
			SELECT $1, d.id FROM devices d WHERE NOT d.disabled AND `+deviceWhere+`
			ON CONFLICT DO NOTHING`, key, f.Prefix, match, f.NotReportingKey, f.NotReportingValue, f.List); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT count(*) FROM rollout_targets WHERE rollout = $1`, key).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("snapshot targets as %s: %w", key, err)
	}
	return n, nil
}

// DeleteTargetLists removes the named target lists; names without a list are ignored.
func (s *Store) DeleteTargetLists(ctx context.Context, keys []string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM rollout_targets WHERE rollout = ANY($1)`, keys); err != nil {
		return fmt.Errorf("delete target lists %v: %w", keys, err)
	}
	return nil
}
