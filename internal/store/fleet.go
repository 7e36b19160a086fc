package store

import (
	"context"
	"fmt"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
)

// FleetCounts is how the fleet stands, for the metrics.
type FleetCounts struct {
	// Devices counts the registered devices, Disabled those disabled.
	Devices, Disabled int
	// Silent counts, for each of the durations asked, the enabled devices not heard from
	// (no message at all) for longer, or never.
	Silent map[time.Duration]int
	// InFlight counts the upgrades not finished, by upgrade type.
	InFlight map[string]int
	// Rollouts counts the upgrades of each rollout asked about by state: those created
	// since the rollout's target snapshot, when it has one (a rollout name may be reused).
	Rollouts map[string]map[ota.State]int
	// NotifyPending counts the event notifications not delivered yet, NotifyFailed those
	// given up after their retry budget.
	NotifyPending, NotifyFailed int
}

// FleetCounts counts devices, upgrades in flight, the upgrades of the rollouts named, and
// notifications. Every count is one indexed query or one scan of the devices.
func (s *Store) FleetCounts(ctx context.Context, rollouts []string, silent []time.Duration) (FleetCounts, error) {
	fc := FleetCounts{Silent: map[time.Duration]int{}, InFlight: map[string]int{}, Rollouts: map[string]map[ota.State]int{}}
	if err := s.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE disabled) FROM devices`).Scan(&fc.Devices, &fc.Disabled); err != nil {
		return fc, fmt.Errorf("count devices: %w", err)
	}
	for _, d := range silent {
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM devices WHERE NOT disabled
			AND (last_seen IS NULL OR last_seen < now() - $1::interval)`, d.String()).Scan(&n); err != nil {
			return fc, fmt.Errorf("count silent devices: %w", err)
		}
		fc.Silent[d] = n
	}
	rows, err := s.pool.Query(ctx, `SELECT type, count(*) FROM upgrades WHERE finished_at IS NULL GROUP BY type`)
	if err != nil {
		return fc, fmt.Errorf("count upgrades in flight: %w", err)
	}
	for rows.Next() {
		var typ string
		var n int
		if err := rows.Scan(&typ, &n); err != nil {
			rows.Close()
			return fc, fmt.Errorf("count upgrades in flight: %w", err)
		}
		fc.InFlight[typ] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fc, fmt.Errorf("count upgrades in flight: %w", err)
	}
	if len(rollouts) > 0 {
		rows, err := s.pool.Query(ctx, `WITH since AS (
				SELECT rollout, max(created_at) AS at FROM target_lists WHERE rollout = ANY($1) GROUP BY rollout)
			SELECT u.rollout, u.state, count(*) FROM upgrades u LEFT JOIN since ON since.rollout = u.rollout
			WHERE u.rollout = ANY($1) AND (since.at IS NULL OR u.created_at >= since.at)
			GROUP BY u.rollout, u.state`, rollouts)
		if err != nil {
			return fc, fmt.Errorf("count rollout upgrades: %w", err)
		}
		for rows.Next() {
			var rollout, state string
			var n int
			if err := rows.Scan(&rollout, &state, &n); err != nil {
				rows.Close()
				return fc, fmt.Errorf("count rollout upgrades: %w", err)
			}
			if fc.Rollouts[rollout] == nil {
				fc.Rollouts[rollout] = map[ota.State]int{}
			}
			fc.Rollouts[rollout][ota.State(state)] = n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fc, fmt.Errorf("count rollout upgrades: %w", err)
		}
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE failed_at IS NULL), count(*) FILTER (WHERE failed_at IS NOT NULL)
		FROM notify_outbox WHERE delivered_at IS NULL`).Scan(&fc.NotifyPending, &fc.NotifyFailed); err != nil {
		return fc, fmt.Errorf("count notifications: %w", err)
	}
	return fc, nil
}
