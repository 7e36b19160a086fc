package activities

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
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

// CheckPackage downloads a package once, streaming, and checks its md5 and size. A package
// that does not match, or a URL that answers 4xx, is a permanent failure
// (ota.ErrTypePackageMismatch), as is a URL that cannot be requested (ota.ErrTypeBadPackageURL);
// network errors and 5xx are retried.
func (a *Activities) CheckPackage(ctx context.Context, p ota.PackageCheck) error {
	client := a.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return temporal.NewNonRetryableApplicationError("bad package URL: "+err.Error(), ota.ErrTypeBadPackageURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch package %s: %w", p.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		return temporal.NewNonRetryableApplicationError(fmt.Sprintf("package %s: HTTP %s", p.URL, resp.Status), ota.ErrTypePackageMismatch, nil)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch package %s: HTTP %s", p.URL, resp.Status)
	}
	h := md5.New()
	n, err := io.Copy(h, &heartbeatReader{ctx: ctx, r: resp.Body})
	if err != nil {
		return fmt.Errorf("read package %s: %w", p.URL, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if n != p.Size || got != p.MD5 {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("package %s is %d bytes with md5 %s, but the rollout says %d bytes with md5 %s", p.URL, n, got, p.Size, p.MD5),
			ota.ErrTypePackageMismatch, errors.New("package mismatch"))
	}
	return nil
}

// heartbeatReader heartbeats the running activity as a download goes on.
type heartbeatReader struct {
	ctx  context.Context
	r    io.Reader
	n    int64
	last time.Time
}

func (h *heartbeatReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.n += int64(n)
	if now := time.Now(); activity.IsActivity(h.ctx) && now.Sub(h.last) > 5*time.Second {
		h.last = now
		activity.RecordHeartbeat(h.ctx, h.n)
	}
	return n, err
}
