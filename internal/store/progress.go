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
	var e ProgressEvent
	err := s.pool.QueryRow(ctx, `SELECT device_id, command_id, type, version, progress, description, received_at
		FROM progress_events WHERE device_id = $1 AND progress > 0
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
