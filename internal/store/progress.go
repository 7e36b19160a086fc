package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/otaflow/otaflow/internal/ota"
)

// LastProgress returns the device's latest stored progress report (1..100) of an attempt, or
// ErrNotFound. The bridge stores every report, also those it does not forward to the
// workflow, so this tells whether a device is still reporting.
func (s *Store) LastProgress(ctx context.Context, device string, attempt ota.AttemptKey) (ProgressEvent, error) {
	return s.lastReport(ctx, device, attempt, "AND progress > 0")
}

// LastReport returns the device's latest stored report of an attempt, error codes included
// (such as the -4 "canceled" with which a device confirms a cancel, which comes after its
// upgrade has ended), or ErrNotFound.
func (s *Store) LastReport(ctx context.Context, device string, attempt ota.AttemptKey) (ProgressEvent, error) {
	return s.lastReport(ctx, device, attempt, "")
}

// lastReport is the latest stored report of an attempt that meets the condition (an SQL
// fragment, a constant).
func (s *Store) lastReport(ctx context.Context, device string, attempt ota.AttemptKey, condition string) (ProgressEvent, error) {
	var e ProgressEvent
	err := s.pool.QueryRow(ctx, `SELECT device_id, command_id, type, version, progress, description, received_at
		FROM progress_events WHERE device_id = $1 `+condition+`
		  AND (command_id = $2 OR (command_id = '' AND type = $3 AND version = $4))
		ORDER BY id DESC LIMIT 1`, device, attempt.CommandID, attempt.Type, attempt.Version).
		Scan(&e.DeviceID, &e.CommandID, &e.Type, &e.Version, &e.Progress, &e.Desc, &e.ReceivedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return ProgressEvent{}, fmt.Errorf("progress of %s for command %s: %w", device, attempt.CommandID, ErrNotFound)
	}
	if err != nil {
		return ProgressEvent{}, fmt.Errorf("read progress of %s for command %s: %w", device, attempt.CommandID, err)
	}
	return e, nil
}
