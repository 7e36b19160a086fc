package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Quarantine: a device whose recent upgrades failed too often is kept out of rollouts until
// an operator releases it. The policy lives in PostgreSQL (quarantine_policy), and the
// database judges a device whenever one of its upgrades ends, whoever records the end
// (migration 005's trigger on upgrades): the failed, timed-out and reverted upgrades among
// its last judged ones (succeeded, failed, timed out, reverted; skipped and canceled
// upgrades say nothing about the device) since its last release.

// MaxQuarantineWindow bounds QuarantinePolicy.Of.
const MaxQuarantineWindow = 100

// QuarantinePolicy quarantines a device when Failures of its last Of judged upgrades
// failed, timed out or reverted.
type QuarantinePolicy struct {
	Failures  int       `json:"failures"`
	Of        int       `json:"of"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Validate checks 1 <= Failures <= Of <= MaxQuarantineWindow.
func (p QuarantinePolicy) Validate() error {
	if p.Failures < 1 || p.Of < p.Failures || p.Of > MaxQuarantineWindow {
		return fmt.Errorf("a quarantine policy needs 1 <= failures <= of <= %d, not %d of %d", MaxQuarantineWindow, p.Failures, p.Of)
	}
	return nil
}

// QuarantinePolicy returns the policy in force; ok is false when quarantine is off.
func (s *Store) QuarantinePolicy(ctx context.Context) (p QuarantinePolicy, ok bool, err error) {
	err = s.pool.QueryRow(ctx, `SELECT failures, of_last, updated_at FROM quarantine_policy`).Scan(&p.Failures, &p.Of, &p.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return QuarantinePolicy{}, false, nil
	}
	if err != nil {
		return QuarantinePolicy{}, false, fmt.Errorf("read the quarantine policy: %w", err)
	}
	return p, true, nil
}

// SetQuarantinePolicy puts the policy in force and judges every device that has finished
// upgrades by it at once; it returns how many it quarantined. Devices already in quarantine
// stay there (a looser policy releases none).
func (s *Store) SetQuarantinePolicy(ctx context.Context, p QuarantinePolicy) (quarantined int, err error) {
	if err := p.Validate(); err != nil {
		return 0, err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO quarantine_policy (failures, of_last) VALUES ($1, $2)
			ON CONFLICT (id) DO UPDATE SET failures = EXCLUDED.failures, of_last = EXCLUDED.of_last, updated_at = now()`,
			p.Failures, p.Of); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE otaflow_judge_quarantine(device_id))
			FROM (SELECT DISTINCT device_id FROM upgrades WHERE finished_at IS NOT NULL) d`).Scan(&quarantined)
	})
	if err != nil {
		return 0, fmt.Errorf("set the quarantine policy: %w", err)
	}
	return quarantined, nil
}

// DisableQuarantine turns quarantine off: no device is quarantined any more. Devices in
// quarantine stay there until released.
func (s *Store) DisableQuarantine(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM quarantine_policy`); err != nil {
		return fmt.Errorf("turn quarantine off: %w", err)
	}
	return nil
}

// QuarantinedDevice is a device in quarantine.
type QuarantinedDevice struct {
	DeviceID string    `json:"device_id"`
	Since    time.Time `json:"since"`
	Reason   string    `json:"reason"`
}

// QuarantinedDevices returns a page of the devices in quarantine, in ID order, after the ID
// after; limit <= 0 means 1000.
func (s *Store) QuarantinedDevices(ctx context.Context, after string, limit int) ([]QuarantinedDevice, error) {
	if limit <= 0 {
		limit = 1000
	}
	rows, err := s.pool.Query(ctx, `SELECT device_id, quarantined_at, reason FROM device_quarantine
		WHERE quarantined_at IS NOT NULL AND device_id > $1 ORDER BY device_id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list quarantined devices: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (QuarantinedDevice, error) {
		var d QuarantinedDevice
		err := r.Scan(&d.DeviceID, &d.Since, &d.Reason)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list quarantined devices: %w", err)
	}
	return out, nil
}

// ReleaseQuarantine takes a device out of quarantine: rollouts take it on again, and only the
// upgrades that end from now on judge it. It returns ErrNotFound when the device is not in
// quarantine.
func (s *Store) ReleaseQuarantine(ctx context.Context, id string) error {
	// The release is no earlier than the end of the device's last upgrade recorded, whatever
	// the clocks of the workers that recorded it: those upgrades judge it no more.
	tag, err := s.pool.Exec(ctx, `UPDATE device_quarantine SET quarantined_at = NULL, reason = '',
		released_at = GREATEST(now(), (SELECT max(finished_at) FROM upgrades WHERE device_id = $1))
		WHERE device_id = $1 AND quarantined_at IS NOT NULL`, id)
	if err != nil {
		return fmt.Errorf("release device %s from quarantine: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("device %s is not in quarantine: %w", id, ErrNotFound)
	}
	return nil
}
