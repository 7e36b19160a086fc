package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/otaflow/otaflow/internal/ota"
)

// Upgrade is the record of one device upgrade run.
type Upgrade struct {
	RunID      string     `json:"run_id"`
	WorkflowID string     `json:"workflow_id"`
	DeviceID   string     `json:"device_id"`
	Rollout    string     `json:"rollout,omitempty"`
	RolloutRun string     `json:"rollout_run,omitempty"`
	Type       string     `json:"type"`
	Version    string     `json:"version"`
	URL        string     `json:"url"`
	MD5        string     `json:"md5"`
	Size       int64      `json:"size"`
	State      ota.State  `json:"state"`
	Attempt    int        `json:"attempt"`
	CommandID  string     `json:"command_id,omitempty"`
	Progress   int        `json:"progress"`
	ErrorCode  int        `json:"error_code,omitempty"`
	ErrorDesc  string     `json:"error_desc,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// UpgradeEvent is one recorded state change of an upgrade.
type UpgradeEvent struct {
	State     ota.State `json:"state"`
	Attempt   int       `json:"attempt"`
	ErrorCode int       `json:"error_code,omitempty"`
	Detail    string    `json:"detail,omitempty"`
	At        time.Time `json:"at"`
}

// RecordUpgrade records the state of an upgrade run at time at: it creates or updates the run's
// row and appends a state change event. Recording the same state and attempt again (an
// activity retried) changes nothing, and a finished run is never reopened nor changed, but
// for one thing: a success may turn out reverted (the device went back within the upgrade's
// soak time). The run's workflow is the only writer of its record: state, attempt and
// progress are what the workflow says, so the two cannot drift apart.
func (s *Store) RecordUpgrade(ctx context.Context, u Upgrade, at time.Time, detail string) error {
	return s.RecordUpgradeEvent(ctx, u, at, detail, nil, false)
}

// RecordUpgradeEvent is RecordUpgrade, and when it records the run's final state, stores ev
// for delivery in the same transaction (see AddEvent). Should the event alone fail to be
// stored, the upgrade is recorded all the same and an *EventError says so.
func (s *Store) RecordUpgradeEvent(ctx context.Context, u Upgrade, at time.Time, detail string, ev *ota.Event, deployment bool) error {
	var evErr error
	err := s.recordUpgrade(ctx, u, at, detail, ev, deployment, &evErr)
	if err == nil && evErr != nil {
		return &EventError{Err: evErr}
	}
	return err
}

func (s *Store) recordUpgrade(ctx context.Context, u Upgrade, at time.Time, detail string, ev *ota.Event, deployment bool, evErr *error) error {
	var finished *time.Time
	if u.State.Final() {
		finished = &at
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var prevState string
		var prevAttempt int
		err := tx.QueryRow(ctx, `SELECT state, attempt FROM upgrades WHERE run_id = $1 FOR UPDATE`, u.RunID).Scan(&prevState, &prevAttempt)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, `INSERT INTO upgrades (run_id, workflow_id, device_id, rollout, rollout_run, type, version, url, md5, size,
				state, attempt, command_id, progress, error_code, error_desc, created_at, updated_at, finished_at)
				VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$17,$18)`,
				u.RunID, u.WorkflowID, u.DeviceID, u.Rollout, u.RolloutRun, u.Type, u.Version, u.URL, u.MD5, u.Size,
				string(u.State), u.Attempt, u.CommandID, u.Progress, u.ErrorCode, u.ErrorDesc, at, finished); err != nil {
				return fmt.Errorf("insert upgrade %s: %w", u.RunID, err)
			}
		case err != nil:
			return fmt.Errorf("read upgrade %s: %w", u.RunID, err)
		case prevState == string(u.State) && prevAttempt == u.Attempt:
			return nil
		case ota.State(prevState).Final() && !(prevState == string(ota.StateSucceeded) && u.State == ota.StateReverted):
			return nil
		default:
			// Within one attempt the progress never goes down: the bridge may have recorded
			// reports the workflow never heard of (it forwards few).
			if _, err := tx.Exec(ctx, `UPDATE upgrades SET state = $2, attempt = $3, command_id = $4,
				progress = CASE WHEN attempt = $3 AND command_id = $4 THEN GREATEST(progress, $5) ELSE $5 END, error_code = $6, error_desc = $7, updated_at = $8, finished_at = $9
				WHERE run_id = $1`, u.RunID, string(u.State), u.Attempt, u.CommandID, u.Progress, u.ErrorCode, u.ErrorDesc, at, finished); err != nil {
				return fmt.Errorf("update upgrade %s: %w", u.RunID, err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO upgrade_events (run_id, state, attempt, error_code, detail, at)
			VALUES ($1, $2, $3, $4, $5, $6)`, u.RunID, string(u.State), u.Attempt, u.ErrorCode, detail, at); err != nil {
			return fmt.Errorf("record event of upgrade %s: %w", u.RunID, err)
		}
		if ev != nil && u.State.Final() {
			// In a savepoint: an event that cannot be stored does not undo the record.
			*evErr = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return addEvent(ctx, sp, *ev, deployment) })
		}
		return nil
	})
}

const upgradeColumns = `run_id, workflow_id, device_id, rollout, rollout_run, type, version, url, md5, size, state, attempt,
	command_id, progress, error_code, error_desc, created_at, updated_at, finished_at`

func scanUpgrade(row pgx.Row) (Upgrade, error) {
	var u Upgrade
	var state string
	err := row.Scan(&u.RunID, &u.WorkflowID, &u.DeviceID, &u.Rollout, &u.RolloutRun, &u.Type, &u.Version, &u.URL, &u.MD5, &u.Size,
		&state, &u.Attempt, &u.CommandID, &u.Progress, &u.ErrorCode, &u.ErrorDesc, &u.CreatedAt, &u.UpdatedAt, &u.FinishedAt)
	u.State = ota.State(state)
	return u, err
}

// LatestUpgrade returns the device's most recent upgrade run, or ErrNotFound.
func (s *Store) LatestUpgrade(ctx context.Context, deviceID string) (Upgrade, error) {
	u, err := scanUpgrade(s.pool.QueryRow(ctx, `SELECT `+upgradeColumns+` FROM upgrades
		WHERE device_id = $1 ORDER BY created_at DESC LIMIT 1`, deviceID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Upgrade{}, fmt.Errorf("upgrade of device %s: %w", deviceID, ErrNotFound)
	}
	if err != nil {
		return Upgrade{}, fmt.Errorf("read upgrade of device %s: %w", deviceID, err)
	}
	return u, nil
}

// GetUpgrade returns one upgrade run by its run ID, or ErrNotFound.
func (s *Store) GetUpgrade(ctx context.Context, runID string) (Upgrade, error) {
	u, err := scanUpgrade(s.pool.QueryRow(ctx, `SELECT `+upgradeColumns+` FROM upgrades WHERE run_id = $1`, runID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Upgrade{}, fmt.Errorf("upgrade run %s: %w", runID, ErrNotFound)
	}
	if err != nil {
		return Upgrade{}, fmt.Errorf("read upgrade run %s: %w", runID, err)
	}
	return u, nil
}

// UpgradeEvents returns the recorded state changes of a run, oldest first.
func (s *Store) UpgradeEvents(ctx context.Context, runID string) ([]UpgradeEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT state, attempt, error_code, detail, at FROM upgrade_events
		WHERE run_id = $1 ORDER BY id`, runID)
	if err != nil {
		return nil, fmt.Errorf("read events of upgrade %s: %w", runID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (UpgradeEvent, error) {
		var e UpgradeEvent
		var state string
		err := r.Scan(&state, &e.Attempt, &e.ErrorCode, &e.Detail, &e.At)
		e.State = ota.State(state)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read events of upgrade %s: %w", runID, err)
	}
	return out, nil
}

// CountByState counts a rollout's upgrade runs by state: those recorded with the rollout's
// first run ID run (ota.RolloutProgress.FirstRunID), or, when run is "" (a rollout started
// before upgrades recorded it), every upgrade of a rollout of that name.
func (s *Store) CountByState(ctx context.Context, rollout, run string) (map[ota.State]int, error) {
	// rollout <> '' lets every plan, a prepared statement's generic one too, read the
	// partial index upgrades_rollout_state rather than every upgrade.
	query, args := `SELECT state, count(*) FROM upgrades WHERE rollout = $1 AND rollout <> '' GROUP BY state`, []any{rollout}
	if run != "" {
		query, args = `SELECT state, count(*) FROM upgrades WHERE rollout = $1 AND rollout <> '' AND rollout_run = $2 GROUP BY state`, []any{rollout, run}
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("count upgrades of rollout %s: %w", rollout, err)
	}
	defer rows.Close()
	out := map[ota.State]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, fmt.Errorf("count upgrades of rollout %s: %w", rollout, err)
		}
		out[ota.State(state)] = n
	}
	return out, rows.Err()
}
