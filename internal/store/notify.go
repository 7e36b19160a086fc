package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/otaflow/otaflow/internal/ota"
)

// DeploymentEndpoint is the endpoint number of the deployment's own webhook receiver, which
// the workers are configured with; other numbers are rows of notify_endpoints.
const DeploymentEndpoint = 0

// Endpoint is a rollout's own webhook receiver.
type Endpoint struct {
	ID      int64
	Rollout string
	URL     string
	Secret  string
}

// AddEndpoint stores a webhook receiver of a rollout name and returns its ID.
func (s *Store) AddEndpoint(ctx context.Context, rollout, url, secret string) (int64, error) {
	var id int64
	if err := s.pool.QueryRow(ctx, `INSERT INTO notify_endpoints (rollout, url, secret) VALUES ($1, $2, $3) RETURNING id`,
		rollout, url, secret).Scan(&id); err != nil {
		return 0, fmt.Errorf("store webhook receiver of rollout %s: %w", rollout, err)
	}
	return id, nil
}

// DeleteEndpoints removes the webhook receivers of a rollout name, but keep. Their events
// not delivered yet are delivered all the same.
func (s *Store) DeleteEndpoints(ctx context.Context, rollout string, keep int64) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM notify_endpoints WHERE rollout = $1 AND id <> $2`, rollout, keep); err != nil {
		return fmt.Errorf("remove webhook receivers of rollout %s: %w", rollout, err)
	}
	return nil
}

// GetEndpoint returns a rollout's webhook receiver, or ErrNotFound.
func (s *Store) GetEndpoint(ctx context.Context, id int64) (Endpoint, error) {
	e := Endpoint{ID: id}
	err := s.pool.QueryRow(ctx, `SELECT rollout, url, secret FROM notify_endpoints WHERE id = $1`, id).Scan(&e.Rollout, &e.URL, &e.Secret)
	if errors.Is(err, pgx.ErrNoRows) {
		return e, fmt.Errorf("webhook receiver %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return e, fmt.Errorf("read webhook receiver %d: %w", id, err)
	}
	return e, nil
}

// execer runs a statement: the pool, or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// AddEvent stores an event for delivery: to the deployment's receiver when deployment is
// set, and to every receiver of the event's rollout. Storing the same event again changes
// nothing.
func (s *Store) AddEvent(ctx context.Context, ev ota.Event, deployment bool) error {
	return addEvent(ctx, s.pool, ev, deployment)
}

func addEvent(ctx context.Context, q execer, ev ota.Event, deployment bool) error {
	payload, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", ev.ID, err)
	}
	if _, err := q.Exec(ctx, `INSERT INTO notify_outbox (endpoint, stream, event_id, event_type, payload, created_at, next_attempt_at)
		SELECT e.id, $1::text, $2::text, $3::text, $4::jsonb, now(), now() FROM notify_endpoints e WHERE $5::text <> '' AND e.rollout = $5::text
		UNION ALL SELECT 0, $1::text, $2::text, $3::text, $4::jsonb, now(), now() WHERE $6::boolean
		ON CONFLICT (event_id, endpoint) DO NOTHING`,
		ev.Stream(), ev.ID, ev.Type, string(payload), ev.RolloutName(), deployment); err != nil {
		return fmt.Errorf("store event %s: %w", ev.ID, err)
	}
	return nil
}

// EventError is returned by RecordUpgradeEvent when it recorded the upgrade but could not
// store its event: the upgrade's record never waits for its notification.
type EventError struct{ Err error }

func (e *EventError) Error() string {
	return "upgrade recorded, its event not stored: " + e.Err.Error()
}
func (e *EventError) Unwrap() error { return e.Err }

// Notification is an event waiting for delivery to one receiver.
type Notification struct {
	ID        int64
	Endpoint  int64
	EventID   string
	EventType string
	Payload   []byte
	Attempts  int
	CreatedAt time.Time
}

// DueNotifications returns, for each receiver and stream, its oldest undelivered event
// when its next attempt is due, at most limit of them: an event waits for those of its
// stream before it.
func (s *Store) DueNotifications(ctx context.Context, limit int) ([]Notification, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, endpoint, event_id, event_type, payload::text, attempts, created_at FROM (
			SELECT DISTINCT ON (endpoint, stream) * FROM notify_outbox
			WHERE delivered_at IS NULL AND failed_at IS NULL ORDER BY endpoint, stream, id) head
		WHERE next_attempt_at <= now() ORDER BY id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("read due notifications: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Notification, error) {
		var n Notification
		var payload string
		err := r.Scan(&n.ID, &n.Endpoint, &n.EventID, &n.EventType, &payload, &n.Attempts, &n.CreatedAt)
		n.Payload = []byte(payload)
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("read due notifications: %w", err)
	}
	return out, nil
}

// NotificationDelivered records a delivery.
func (s *Store) NotificationDelivered(ctx context.Context, id int64) error {
	if _, err := s.pool.Exec(ctx, `UPDATE notify_outbox SET delivered_at = now(), attempts = attempts + 1, last_error = ''
		WHERE id = $1`, id); err != nil {
		return fmt.Errorf("record delivery of notification %d: %w", id, err)
	}
	return nil
}

// NotificationFailed records a failed delivery attempt: the next is due after retryIn, or,
// with giveUp, none is (the event is undeliverable, and the events behind it go on).
func (s *Store) NotificationFailed(ctx context.Context, id int64, reason string, retryIn time.Duration, giveUp bool) error {
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	if _, err := s.pool.Exec(ctx, `UPDATE notify_outbox SET attempts = attempts + 1, last_error = $2,
		next_attempt_at = now() + $3::interval, failed_at = CASE WHEN $4 THEN now() END WHERE id = $1`,
		id, reason, retryIn.String(), giveUp); err != nil {
		return fmt.Errorf("record failed delivery of notification %d: %w", id, err)
	}
	return nil
}

// DeleteEndpoint removes one webhook receiver.
func (s *Store) DeleteEndpoint(ctx context.Context, id int64) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM notify_endpoints WHERE id = $1`, id); err != nil {
		return fmt.Errorf("remove webhook receiver %d: %w", id, err)
	}
	return nil
}
