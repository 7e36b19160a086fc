package activities

import (
	"context"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
)

// CountTargets counts the devices a rollout selects.
func (a *Activities) CountTargets(ctx context.Context, f ota.DeviceFilter) (int, error) {
	return a.Store.CountDevices(ctx, f)
}

// SnapshotTargets fixes a rollout's targets at pre-flight: the registered, enabled devices
// that match are stored as the list in.Key, which the rollout then reads page by page. It
// returns how many there are.
func (a *Activities) SnapshotTargets(ctx context.Context, in ota.SnapshotInput) (int, error) {
	return a.Store.SnapshotTargets(ctx, in.Rollout, in.Key, in.Filter)
}

// DeleteTargetLists removes stored target lists (a finished rollout's snapshot).
func (a *Activities) DeleteTargetLists(ctx context.Context, keys []string) error {
	return a.Store.DeleteTargetLists(ctx, keys)
}

// ResolveTargets returns the next page of device IDs a rollout selects, after f.After.
func (a *Activities) ResolveTargets(ctx context.Context, f ota.DeviceFilter) ([]string, error) {
	devices, err := a.Store.ListDevices(ctx, f)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(devices))
	for i, d := range devices {
		ids[i] = d.ID
	}
	return ids, nil
}

// SelectTargets fixes a rollout's targets at pre-flight: it judges every device the
// selector's filter matches (disabled, never seen, up to date, incompatible, quarantined or a
// target), stores the targets as the list in.Key, which the rollout then reads page by page,
// and returns the counts. Retried, it selects again and replaces the list. It heartbeats
// every page, so that a lost worker is noticed however large the fleet.
func (a *Activities) SelectTargets(ctx context.Context, in ota.SelectTargetsInput) (ota.TargetSelection, error) {
	return a.Store.SelectTargets(ctx, in.Selector, store.Selection{Rollout: in.Rollout, Key: in.Key, KeepLeftOut: in.KeepLeftOut,
		Page: func(judged int) {
			if activity.IsActivity(ctx) {
				activity.RecordHeartbeat(ctx, judged)
			}
		}})
}

// DefaultLatePoll is how often FindLateTargets looks for changes while it waits.
const DefaultLatePoll = 2 * time.Second

// lateScanLimit bounds the devices one look of FindLateTargets judges: a fleet whose devices
// all changed at once is judged in steps, each in a short transaction.
const lateScanLimit = 20 * 1000

// FindLateTargets waits for devices that came to be targets of a continuous rollout after its
// pre-flight (registered, seen again, changed) and returns them, up to in.Limit, with where
// to look next and how many devices the rollout leaves out now. It looks every LatePoll,
// heartbeating, and returns without targets after in.MaxWait, so that the rollout records
// its progress. A retry starts from in.Cursor again: judging a device twice changes nothing.
func (a *Activities) FindLateTargets(ctx context.Context, in ota.FindLateInput) (ota.LateTargets, error) {
	poll := a.LatePoll
	if poll <= 0 {
		poll = DefaultLatePoll
	}
	q := store.LateSearch{Rollout: in.Rollout, Since: in.Since, LeftOutKey: in.LeftOutKey, Selector: in.Selector,
		Cursor: in.Cursor, Limit: max(in.Limit, 1), ScanLimit: lateScanLimit}
	deadline := time.Now().Add(in.MaxWait.Std())
	for {
		found, err := a.Store.FindLate(ctx, q)
		if err != nil {
			return ota.LateTargets{}, err
		}
		q.Cursor = found.Cursor
		if len(found.IDs) > 0 || !time.Now().Before(deadline) {
			return found, nil
		}
		if activity.IsActivity(ctx) {
			activity.RecordHeartbeat(ctx, found.Cursor)
		}
		if found.Cursor.ID != "" {
			continue // stopped at the scan limit, with more changes to judge
		}
		t := time.NewTimer(min(poll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			// The rollout stopped waiting (closed, canceled, paused to continue as new) or the
			// worker stops: expected, so not logged as an error.
			return ota.LateTargets{}, temporal.NewApplicationErrorWithOptions("the search for late devices stopped: "+ctx.Err().Error(),
				"SearchStopped", temporal.ApplicationErrorOptions{Category: temporal.ApplicationErrorCategoryBenign, Cause: ctx.Err()})
		case <-t.C:
		}
	}
}
