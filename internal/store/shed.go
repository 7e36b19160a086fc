package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ShedCount is how many reports of a device the bridge's flood limit did not store, for one
// reason, in the interval that starts at PeriodStart: one row, however many reports.
type ShedCount struct {
	DeviceID    string    `json:"device_id"`
	Reason      string    `json:"reason"`
	PeriodStart time.Time `json:"period_start"`
	Count       int64     `json:"count"`
	// FirstAt and LastAt are when the first and the last of them were received.
	FirstAt time.Time `json:"first_at"`
	LastAt  time.Time `json:"last_at"`
}

// RecordShed adds counts to the stored ones, in one statement: a count for a device, reason
// and interval already stored (by an earlier flush, or another bridge) is added to it.
func (s *Store) RecordShed(ctx context.Context, counts []ShedCount) error {
	if len(counts) == 0 {
		return nil
	}
	var device, reason []string
	var period, first, last []time.Time
	var n []int64
	for _, c := range counts {
		device, reason, period = append(device, c.DeviceID), append(reason, c.Reason), append(period, c.PeriodStart)
		n, first, last = append(n, c.Count), append(first, c.FirstAt), append(last, c.LastAt)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO shed_reports AS s (device_id, reason, period_start, count, first_at, last_at)
		SELECT device_id, reason, period_start, sum(count), min(first_at), max(last_at)
		FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::timestamptz[], $6::timestamptz[])
			AS c(device_id, reason, period_start, count, first_at, last_at)
		GROUP BY device_id, reason, period_start
		ORDER BY device_id, reason, period_start -- rows locked in one order: bridges flush at once
		ON CONFLICT (device_id, period_start, reason) DO UPDATE SET count = s.count + EXCLUDED.count,
			first_at = least(s.first_at, EXCLUDED.first_at), last_at = greatest(s.last_at, EXCLUDED.last_at)`,
		device, reason, period, n, first, last)
	if err != nil {
		return fmt.Errorf("record %d shed report counts: %w", len(counts), err)
	}
	return nil
}

// ShedReports returns the stored shed counts of a device ("" for every device) since since,
// newest interval first, at most limit.
func (s *Store) ShedReports(ctx context.Context, deviceID string, since time.Time, limit int) ([]ShedCount, error) {
	query := `SELECT device_id, reason, period_start, count, first_at, last_at FROM shed_reports
		WHERE period_start >= $1 ORDER BY period_start DESC, device_id, reason LIMIT $2`
	args := []any{since, limit}
	if deviceID != "" {
		query = `SELECT device_id, reason, period_start, count, first_at, last_at FROM shed_reports
			WHERE device_id = $3 AND period_start >= $1 ORDER BY period_start DESC, reason LIMIT $2`
		args = append(args, deviceID)
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read shed report counts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ShedCount, error) {
		var c ShedCount
		err := r.Scan(&c.DeviceID, &c.Reason, &c.PeriodStart, &c.Count, &c.FirstAt, &c.LastAt)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read shed report counts: %w", err)
	}
	return out, nil
}
