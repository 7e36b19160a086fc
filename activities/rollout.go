package activities

import (
	"context"

	"github.com/otaflow/otaflow/internal/ota"
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
