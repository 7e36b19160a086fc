package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// Device is one registered device with what it last reported.
type Device struct {
	ID         string            `json:"id"`
	Disabled   bool              `json:"disabled"`
	Labels     map[string]string `json:"labels"`
	Reported   protocol.Status   `json:"reported"`
	ReportedAt *time.Time        `json:"reported_at,omitempty"`
	LastSeen   *time.Time        `json:"last_seen,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
}

// Then is work done inside a registry change before it is committed, such as creating the
// device's broker account: the change is committed only when Then returns nil, and rolled back
// otherwise. Its error is returned as is. The change's rows stay locked while it runs.
type Then func(ctx context.Context) error

// AddDevice registers a new device with the hash of its secret. It returns ErrExists when the
// device is already registered.
func (s *Store) AddDevice(ctx context.Context, id, secretHash string, labels map[string]string) error {
	return s.AddDeviceThen(ctx, id, secretHash, labels, nil)
}

// AddDeviceThen is AddDevice with then run before the device is committed (nil: nothing).
func (s *Store) AddDeviceThen(ctx context.Context, id, secretHash string, labels map[string]string, then Then) error {
	if err := protocol.ValidateDeviceID(id); err != nil {
		return err
	}
	if labels == nil {
		labels = map[string]string{}
	}
	return s.inTx(ctx, then, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO devices (id, secret_hash, labels) VALUES ($1, $2, $3)`, id, secretHash, labels)
		if isUniqueViolation(err) {
			return fmt.Errorf("device %s: %w", id, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("add device %s: %w", id, err)
		}
		return nil
	})
}

// inTx runs change in a transaction, then then (unless nil), and commits when both succeed.
func (s *Store) inTx(ctx context.Context, then Then, change func(pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin a registry change: %w", err)
	}
	// A no-op after Commit; otherwise the change is undone (its error adds nothing).
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := change(tx); err != nil {
		return err
	}
	if then != nil {
		if err := then(ctx); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit a registry change: %w", err)
	}
	return nil
}

// NewDevice is a device to register with AddDevices.
type NewDevice struct {
	ID         string
	SecretHash string
	Labels     map[string]string
}

// AddDevices registers devices in one transaction: all of them, or, on any error, none. It
// returns ErrExists, naming a device, when one of them is already registered (or is given
// twice).
func (s *Store) AddDevices(ctx context.Context, devices []NewDevice) error {
	return s.AddDevicesThen(ctx, devices, nil)
}

// AddDevicesThen is AddDevices with then run before the devices are committed (nil: nothing).
func (s *Store) AddDevicesThen(ctx context.Context, devices []NewDevice, then Then) error {
	rows := make([][]any, len(devices))
	for i, d := range devices {
		if err := protocol.ValidateDeviceID(d.ID); err != nil {
			return err
		}
		labels := d.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		rows[i] = []any{d.ID, d.SecretHash, labels}
	}
	return s.inTx(ctx, then, func(tx pgx.Tx) error {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"devices"}, []string{"id", "secret_hash", "labels"}, pgx.CopyFromRows(rows))
		var pgErr *pgconn.PgError
		if isUniqueViolation(err) && errors.As(err, &pgErr) {
			// The detail names the device: Key (id)=(dev-1) already exists.
			return fmt.Errorf("add %d devices: %s: %w", len(devices), pgErr.Detail, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("add %d devices: %w", len(devices), err)
		}
		return nil
	})
}

// RegisteredDevices returns those of ids that are registered devices, in ID order.
func (s *Store) RegisteredDevices(ctx context.Context, ids []string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM devices WHERE id = ANY($1) ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("look up %d devices: %w", len(ids), err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look up %d devices: %w", len(ids), err)
	}
	return found, nil
}

// SetSecretHash replaces a device's secret hash, registering the device if it is missing.
func (s *Store) SetSecretHash(ctx context.Context, id, secretHash string) error {
	if err := protocol.ValidateDeviceID(id); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO devices (id, secret_hash) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash`, id, secretHash)
	if err != nil {
		return fmt.Errorf("set secret of device %s: %w", id, err)
	}
	return nil
}

// ReplaceSecretHashThen replaces a registered device's secret hash, running then before the
// change is committed (nil: nothing). It returns ErrNotFound for an unregistered device.
func (s *Store) ReplaceSecretHashThen(ctx context.Context, id, secretHash string, then Then) error {
	return s.inTx(ctx, then, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE devices SET secret_hash = $2 WHERE id = $1`, id, secretHash)
		if err != nil {
			return fmt.Errorf("set secret of device %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("device %s: %w", id, ErrNotFound)
		}
		return nil
	})
}

// SetDisabled disables or enables a device. A disabled device cannot connect (the brokers
// close its connection: the embedded one polls DisabledAmong, Mosquitto's account is
// disabled) and no command is sent to it.
func (s *Store) SetDisabled(ctx context.Context, id string, disabled bool) error {
	return s.SetDisabledThen(ctx, id, disabled, nil)
}

// SetDisabledThen is SetDisabled with then run before the change is committed (nil: nothing).
// It returns ErrNotFound for an unregistered device.
func (s *Store) SetDisabledThen(ctx context.Context, id string, disabled bool, then Then) error {
	return s.inTx(ctx, then, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE devices SET disabled = $2 WHERE id = $1`, id, disabled)
		if err != nil {
			return fmt.Errorf("disable device %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("device %s: %w", id, ErrNotFound)
		}
		return nil
	})
}

// DisabledAmong returns those of ids that are registered devices and disabled, in ID order.
// A broker asks it about its connected devices, to close the connections of devices disabled
// after they connected.
func (s *Store) DisabledAmong(ctx context.Context, ids []string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM devices WHERE id = ANY($1) AND disabled ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("look up disabled devices among %d: %w", len(ids), err)
	}
	disabled, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("look up disabled devices among %d: %w", len(ids), err)
	}
	return disabled, nil
}

// DeviceCredentials returns the secret hash of a device and whether it is disabled.
func (s *Store) DeviceCredentials(ctx context.Context, id string) (secretHash string, disabled bool, err error) {
	err = s.pool.QueryRow(ctx, `SELECT secret_hash, disabled FROM devices WHERE id = $1`, id).Scan(&secretHash, &disabled)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return "", false, fmt.Errorf("read credentials of device %s: %w", id, err)
	}
	return secretHash, disabled, nil
}

const deviceColumns = `id, disabled, labels, reported, reported_at, last_seen, created_at`

func scanDevice(row pgx.Row) (Device, error) {
	var d Device
	var labels, reported []byte
	if err := row.Scan(&d.ID, &d.Disabled, &labels, &reported, &d.ReportedAt, &d.LastSeen, &d.CreatedAt); err != nil {
		return Device{}, err
	}
	if err := json.Unmarshal(labels, &d.Labels); err != nil {
		return Device{}, fmt.Errorf("decode labels of %s: %w", d.ID, err)
	}
	if err := json.Unmarshal(reported, &d.Reported); err != nil {
		return Device{}, fmt.Errorf("decode reported status of %s: %w", d.ID, err)
	}
	return d, nil
}

// GetDevice returns one device, or ErrNotFound.
func (s *Store) GetDevice(ctx context.Context, id string) (Device, error) {
	d, err := scanDevice(s.pool.QueryRow(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Device{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("read device %s: %w", id, err)
	}
	return d, nil
}

// ListDevices returns one page of the devices that match f: with f.List, the devices of that
// target list in ID order (the database's collation), read from the list; otherwise the
// registered devices in byte order of their IDs (a prefix is then an index range).
func (s *Store) ListDevices(ctx context.Context, f ota.DeviceFilter) ([]Device, error) {
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	q := matching(f)
	if f.List != "" {
		q.where("t.device_id > %s", f.After)
		q.sql += " ORDER BY t.device_id"
	} else {
		q.where(`(d.id COLLATE "C") > %s`, f.After)
		q.sql += ` ORDER BY (d.id COLLATE "C")`
	}
	q.sql += " LIMIT " + q.arg(f.Limit)
	rows, err := s.pool.Query(ctx, `SELECT `+qualifiedDeviceColumns+q.sql, q.args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// deviceFilter is the condition of f (and, when ids is not nil, of being one of ids) over
// devices d, with args, to which it appends its own parameters. It holds only the conditions
// f sets: the planner takes a condition that is always true, such as a label filter of no
// labels, for a very selective one and plans as if few devices matched.
func deviceFilter(f ota.DeviceFilter, ids []string, args []any) (string, []any) {
	var conds []string
	param := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if f.List != "" {
		conds = append(conds, `EXISTS (SELECT 1 FROM rollout_targets t WHERE t.rollout = `+param(f.List)+` AND t.device_id = d.id)`)
	}
	if f.Prefix != "" {
		conds = append(conds, `starts_with(d.id, `+param(f.Prefix)+`)`)
	}
	if len(f.Labels) > 0 {
		conds = append(conds, `(d.labels || d.reported) @> `+param(f.Labels)+`::jsonb`)
	}
	if f.NotReportingKey != "" {
		conds = append(conds, `d.reported->>`+param(f.NotReportingKey)+` IS DISTINCT FROM `+param(f.NotReportingValue))
	}
	if ids != nil {
		conds = append(conds, `d.id = ANY(`+param(ids)+`)`)
	}
	if len(conds) == 0 {
		return "true", args
	}
	return strings.Join(conds, " AND "), args
}

// qualifiedDeviceColumns are deviceColumns of devices d.
const qualifiedDeviceColumns = `d.id, d.disabled, d.labels, d.reported, d.reported_at, d.last_seen, d.created_at`

// deviceQuery is the FROM and WHERE clauses of a query over the devices a filter selects, as
// "devices d" (and "rollout_targets t" for a list), and its arguments.
type deviceQuery struct {
	sql   string
	args  []any
	conds int
}

// arg adds an argument and returns its placeholder.
func (q *deviceQuery) arg(v any) string {
	q.args = append(q.args, v)
	return "$" + strconv.Itoa(len(q.args))
}

// where adds a condition; its %s verbs are the placeholders of args, in order.
func (q *deviceQuery) where(cond string, args ...any) {
	if q.conds == 0 {
		q.sql += " WHERE "
	} else {
		q.sql += " AND "
	}
	q.conds++
	placeholders := make([]any, len(args))
	for i, v := range args {
		placeholders[i] = q.arg(v)
	}
	q.sql += fmt.Sprintf(cond, placeholders...)
}

// matching returns the query of the devices f selects (After and Limit are ignored). It holds
// only the conditions f sets, each as it is, so that a prepared statement's generic plan uses
// the same indexes as a plan for the values: a list is read from rollout_targets by its key,
// in order, each device looked up by its ID (not every device tested for membership), and a
// prefix is a range of devices_id_bytes.
func matching(f ota.DeviceFilter) *deviceQuery {
	q := &deviceQuery{sql: " FROM devices d"}
	if f.List != "" {
		// Each list entry looks its device up (OFFSET 0 keeps the planner from turning this
		// into a merge join, which would walk the devices from the first one to the page).
		q.sql = " FROM rollout_targets t CROSS JOIN LATERAL (SELECT * FROM devices d WHERE d.id = t.device_id OFFSET 0) d"
		q.where("t.rollout = %s", f.List)
	}
	if f.Prefix != "" {
		lo, hi := prefixRange(f.Prefix)
		q.where(`(d.id COLLATE "C") >= %s`, lo)
		if hi != "" {
			q.where(`(d.id COLLATE "C") < %s`, hi)
		}
	}
	if len(f.Labels) > 0 {
		match := map[string]string{}
		for k, v := range f.Labels {
			match[k] = v
		}
		q.where("(d.labels || d.reported) @> %s::jsonb", match)
	}
	if f.NotReportingKey != "" {
		q.where("d.reported->>%s IS DISTINCT FROM %s", f.NotReportingKey, f.NotReportingValue)
	}
	return q
}

// prefixRange returns the range [lo, hi) of the strings that start with prefix, compared byte
// by byte; hi is "" when the range has no upper end.
func prefixRange(prefix string) (lo, hi string) {
	b := []byte(prefix)
	for len(b) > 0 {
		if last := len(b) - 1; b[last] < 0xff {
			b[last]++
			return prefix, string(b)
		}
		b = b[:len(b)-1]
	}
	return prefix, ""
}

// CountDevices counts the devices that match f (After and Limit are ignored).
func (s *Store) CountDevices(ctx context.Context, f ota.DeviceFilter) (int, error) {
	q := matching(f)
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*)`+q.sql, q.args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count devices: %w", err)
	}
	return n, nil
}

// RecordStatus stores a device's reported versions and marks it seen. It returns ErrNotFound
// for an unregistered device.
func (s *Store) RecordStatus(ctx context.Context, id string, st protocol.Status, at time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE devices SET reported = $2, reported_at = $3, last_seen = GREATEST(last_seen, $3)
		WHERE id = $1`, id, st, at)
	if err != nil {
		return fmt.Errorf("record status of %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	return nil
}

// RecordProgress stores a progress report, marks the device seen and moves the device's
// upgrade record on as RecordBatch does. It returns ErrNotFound for an unregistered device.
func (s *Store) RecordProgress(ctx context.Context, id string, p protocol.Progress, at time.Time) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE devices SET last_seen = GREATEST(last_seen, $2) WHERE id = $1`, id, at)
		if err != nil {
			return fmt.Errorf("record progress of %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("device %s: %w", id, ErrNotFound)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO progress_events (device_id, command_id, type, version, progress, description, received_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, id, p.ID, p.Type, p.Version, p.Progress, p.Desc, at); err != nil {
			return fmt.Errorf("record progress of %s: %w", id, err)
		}
		if _, err := tx.Exec(ctx, advanceUpgradesBatch, []string{id}, []string{p.ID}, []string{p.Type}, []string{p.Version},
			[]int32{int32(p.Progress)}, []string{p.Desc}, []time.Time{at}); err != nil {
			return fmt.Errorf("record progress of %s: %w", id, err)
		}
		return nil
	})
}

// ProgressEvent is one stored progress report.
type ProgressEvent struct {
	DeviceID   string    `json:"device_id"`
	CommandID  string    `json:"command_id"`
	Type       string    `json:"type"`
	Version    string    `json:"version"`
	Progress   int       `json:"progress"`
	Desc       string    `json:"desc"`
	ReceivedAt time.Time `json:"received_at"`
}

// ProgressEvents returns a device's latest progress reports, newest first.
func (s *Store) ProgressEvents(ctx context.Context, id string, limit int) ([]ProgressEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT device_id, command_id, type, version, progress, description, received_at
		FROM progress_events WHERE device_id = $1 ORDER BY id DESC LIMIT $2`, id, limit)
	if err != nil {
		return nil, fmt.Errorf("read progress of %s: %w", id, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ProgressEvent, error) {
		var e ProgressEvent
		err := r.Scan(&e.DeviceID, &e.CommandID, &e.Type, &e.Version, &e.Progress, &e.Desc, &e.ReceivedAt)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read progress of %s: %w", id, err)
	}
	return out, nil
}

// Rejected is one message the bridge refused, with why.
type Rejected struct {
	Topic      string    `json:"topic"`
	DeviceID   string    `json:"device_id"`
	Reason     string    `json:"reason"`
	Payload    []byte    `json:"payload"`
	ReceivedAt time.Time `json:"received_at"`
}

// RecordRejected stores a refused message and the reason.
func (s *Store) RecordRejected(ctx context.Context, r Rejected) error {
	if r.Payload == nil {
		r.Payload = []byte{} // an empty message; the column is NOT NULL
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO rejected_messages (topic, device_id, reason, payload, received_at)
		VALUES ($1, $2, $3, $4, $5)`, r.Topic, r.DeviceID, r.Reason, r.Payload, r.ReceivedAt); err != nil {
		return fmt.Errorf("record rejected message on %q: %w", r.Topic, err)
	}
	return nil
}

// RejectedMessages returns the latest rejected messages, newest first; deviceID "" means all.
func (s *Store) RejectedMessages(ctx context.Context, deviceID string, limit int) ([]Rejected, error) {
	// Two statements, so that each has its index: the table's newest, or the device's.
	query := `SELECT topic, device_id, reason, payload, received_at FROM rejected_messages ORDER BY id DESC LIMIT $1`
	args := []any{limit}
	if deviceID != "" {
		query = `SELECT topic, device_id, reason, payload, received_at FROM rejected_messages
			WHERE device_id = $2 ORDER BY id DESC LIMIT $1`
		args = append(args, deviceID)
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read rejected messages: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Rejected, error) {
		var m Rejected
		err := r.Scan(&m.Topic, &m.DeviceID, &m.Reason, &m.Payload, &m.ReceivedAt)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("read rejected messages: %w", err)
	}
	return out, nil
}
