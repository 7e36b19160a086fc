package activities

import (
	"context"
	"errors"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// EventStore records event notifications for delivery, with what they tell. *store.Store
// satisfies it.
type EventStore interface {
	// RecordUpgradeEvent records an upgrade's state as RecordUpgrade does and, when it
	// records the final state, stores ev in the same transaction.
	RecordUpgradeEvent(ctx context.Context, u store.Upgrade, at time.Time, detail string, ev *ota.Event, deployment bool) error
	// AddEvent stores an event.
	AddEvent(ctx context.Context, ev ota.Event, deployment bool) error
}

// Notifications are the event notifications of a worker: where events are stored and how
// they are delivered. A worker without them stores and delivers none.
type Notifications struct {
	Events EventStore
	// Deployment is set when the deployment has a receiver of its own (worker
	// --notify-url): every event is then stored for it, besides the receivers of single
	// rollouts.
	Deployment bool
	// Deliverer delivers them (DeliverNotifications).
	Deliverer *notify.Deliverer
}

// ErrTypeNoNotifications is the failure of DeliverNotifications on a worker without
// notifications.
const ErrTypeNoNotifications = "NoNotifications"

// recordUpgrade records an upgrade's state; its final state comes with its upgrade.finished
// event when the worker has notifications.
func (a *Activities) recordUpgrade(ctx context.Context, u ota.UpgradeRecord, at time.Time, detail string) error {
	if n := a.Notify; n != nil && n.Events != nil && u.State.Final() {
		ev := ota.UpgradeFinishedEvent(u, at)
		err := n.Events.RecordUpgradeEvent(ctx, store.Upgrade(u), at, detail, &ev, n.Deployment)
		var evErr *store.EventError
		if errors.As(err, &evErr) {
			// The upgrade is recorded; its notification is lost, and said so.
			activity.GetLogger(ctx).Error("Event notification not stored", "Event", ev.ID, "Error", evErr.Err)
			if n.Deliverer != nil {
				n.Deliverer.EventLost()
			}
			return nil
		}
		return err
	}
	return a.Store.RecordUpgrade(ctx, store.Upgrade(u), at, detail)
}

// RecordRolloutEvent stores a rollout's event for its receivers (nothing without
// notifications). Storing the same event again changes nothing.
func (a *Activities) RecordRolloutEvent(ctx context.Context, ev ota.Event) error {
	if a.Notify == nil || a.Notify.Events == nil {
		return nil
	}
	return a.Notify.Events.AddEvent(ctx, ev, a.Notify.Deployment)
}

// DeliverNotifications delivers the event notifications due for in.Run, heartbeating, and
// returns what it did.
func (a *Activities) DeliverNotifications(ctx context.Context, in ota.DeliverInput) (ota.DeliverResult, error) {
	if a.Notify == nil || a.Notify.Deliverer == nil {
		return ota.DeliverResult{}, temporal.NewApplicationError("this worker has no event notifications configured", ErrTypeNoNotifications)
	}
	res, err := a.Notify.Deliverer.Run(ctx, in.Run, func(r ota.DeliverResult) { activity.RecordHeartbeat(ctx, r) })
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return res, nil // the worker stops: the next round goes on
	}
	return res, err
}
