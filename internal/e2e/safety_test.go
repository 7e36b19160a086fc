package e2e

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/stretchr/testify/require"
)

// liveState asks a running upgrade for its state; ok is false when it cannot answer (yet).
func (e *env) liveState(run client.WorkflowRun) (ota.UpgradeStatus, bool) {
	var st ota.UpgradeStatus
	v, err := e.c.QueryWorkflow(e.ctx, run.GetID(), run.GetRunID(), ota.QueryState)
	return st, err == nil && v.Get(&st) == nil
}

// TestIncompatibleDevicesNeverCommanded: a device that does not fit the package (a label, or
// its current version outside the range) gets no command, and the upgrade says why; one
// that fits is upgraded.
func TestIncompatibleDevicesNeverCommanded(t *testing.T) {
	e := newEnv(t, system.Config{})
	compat := &ota.Compatibility{Labels: map[string]string{"model": "pump-v2"}, Versions: ">=1.0,<2.0"}
	tests := []struct {
		id       string
		labels   map[string]string
		version  string
		wantDesc string
	}{
		{"pump-a", map[string]string{"model": "pump-v1"}, "1.0", `device pump-a does not fit the package: label model is "pump-v1", the package needs "pump-v2"`},
		{"pump-b", nil, "1.0", `device pump-b does not fit the package: label model is "", the package needs "pump-v2"`},
		{"pump-c", map[string]string{"model": "pump-v2"}, "2.5", "device pump-c does not fit the package: version 2.5 is outside >=1.0,<2.0"},
		{"pump-d", map[string]string{"model": "pump-v2", "site": "north"}, "1.0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			d := e.labeledDevice(tt.id, tt.labels, protocol.Status{"firmware_ver": tt.version})
			req := e.request(tt.id)
			req.Compat = compat
			run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantDesc == "" {
				cmd := d.command()
				d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
				d.status(protocol.Status{"firmware_ver": "1.1"})
			}
			st, err := ota.UpgradeResult(e.ctx, run)
			if tt.wantDesc == "" {
				if err != nil || st.State != ota.StateSucceeded {
					t.Fatalf("fitting device: %s (%q), err %v", st.State, st.Desc, err)
				}
				return
			}
			if st.State != ota.StateFailed || st.Desc != tt.wantDesc || err == nil {
				t.Fatalf("result %s (%q), err %v; want failed with %q", st.State, st.Desc, err, tt.wantDesc)
			}
			if len(d.commands) != 0 {
				t.Errorf("the device got a command")
			}
			up, err := e.store.LatestUpgrade(e.ctx, tt.id)
			if err != nil || up.State != ota.StateFailed || up.CommandID != "" || up.ErrorDesc != tt.wantDesc {
				t.Errorf("upgrade record %+v, err %v; want failed without a command", up, err)
			}
		})
	}
}

// TestSoak: a device that goes back to its old version within the soak ends reverted, a
// failure, recorded so; one that keeps the new version stays succeeded once the soak is over.
func TestSoak(t *testing.T) {
	e := newEnv(t, system.Config{Devices: 1, Prefix: "soak"})

	t.Run("reverted", func(t *testing.T) {
		d := e.scriptedDevice("soak-back", protocol.Status{"firmware_ver": "1.0"})
		req := e.request(d.id)
		req.Soak = ota.Duration(time.Hour)
		run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
		if err != nil {
			t.Fatal(err)
		}
		cmd := d.command()
		d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
		d.status(protocol.Status{"firmware_ver": "1.1"})
		require.Eventually(t, func() bool {
			st, ok := e.liveState(run)
			return ok && st.State == ota.StateSucceeded && st.SoakUntil != nil
		}, 30*time.Second, 50*time.Millisecond, "the upgrade to soak")
		if up, err := e.store.LatestUpgrade(e.ctx, d.id); err != nil || up.State != ota.StateSucceeded {
			t.Fatalf("record during the soak: %+v, %v; want succeeded", up, err)
		}
		// A reboot onto the old version.
		d.status(protocol.Status{"firmware_ver": "1.0", "app_ver": "3.2"})
		st, err := ota.UpgradeResult(e.ctx, run)
		var appErr *temporal.ApplicationError
		if st.State != ota.StateReverted || !errors.As(err, &appErr) || appErr.Type() != ota.ErrTypeUpgradeReverted ||
			!strings.HasPrefix(st.Desc, `device went back to firmware_ver="1.0" within the 1h0m0s soak`) {
			t.Fatalf("result %s (%q), err %v; want reverted", st.State, st.Desc, err)
		}
		up, err := e.store.LatestUpgrade(e.ctx, d.id)
		if err != nil || up.State != ota.StateReverted || up.ErrorDesc != st.Desc || up.FinishedAt == nil {
			t.Errorf("upgrade record %+v, err %v; want reverted", up, err)
		}
		events, err := e.store.UpgradeEvents(e.ctx, up.RunID)
		if got := states(events); err != nil || got != "sent,downloaded,succeeded,reverted" {
			t.Errorf("recorded states %s, err %v", got, err)
		}
	})

	t.Run("held", func(t *testing.T) {
		id := simID("soak", 1)
		req := e.request(id)
		req.Soak = ota.Duration(2 * time.Second)
		run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
		if err != nil {
			t.Fatal(err)
		}
		st, err := ota.UpgradeResult(e.ctx, run)
		if err != nil || st.State != ota.StateSucceeded || st.FinishedAt == nil {
			t.Fatalf("result %s (%q), err %v; want succeeded", st.State, st.Desc, err)
		}
		d, err := e.c.DescribeWorkflow(e.ctx, run.GetID(), run.GetRunID())
		if err != nil || d.WorkflowCloseTime == nil {
			t.Fatalf("describe %+v: %v", d, err)
		}
		if open := d.WorkflowCloseTime.Sub(*st.FinishedAt); open < req.Soak.Std() {
			t.Errorf("the upgrade closed %s after its success, before its %s soak was over", open, req.Soak)
		}
		t.Logf("history events of an upgrade with a soak: %d", d.HistoryLength)
		if up, err := e.store.LatestUpgrade(e.ctx, id); err != nil || up.State != ota.StateSucceeded {
			t.Errorf("upgrade record %+v, err %v; want succeeded", up, err)
		}
	})
}

// slowFleet is a fleet whose downloads take long enough to be canceled: 64 KiB at 4 KiB/s.
func slowFleet(t *testing.T, prefix string, devices int) *env {
	timing := fastTiming
	timing.SlowRate = 4 << 10
	return newEnv(t, system.Config{Devices: devices, Prefix: prefix, Timing: timing,
		Faults: simulator.Faults{Slow: simulator.Fault{Rate: 1}}})
}

// checkCanceledOnDevice waits until the device confirmed the cancel of its command (-4
// "canceled", stored in PostgreSQL) and checks it installed nothing.
func (e *env) checkCanceledOnDevice(id string) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		dev, _ := e.sys.Fleet.Device(id)
		return dev.Canceled == 1 && dev.Working == ""
	}, 30*time.Second, 50*time.Millisecond, id+" to confirm the cancel")
	dev, _ := e.sys.Fleet.Device(id)
	if dev.Installs != 0 || dev.Upgrades != 0 || dev.Status["firmware_ver"] != "1.0" || dev.LastDesc != protocol.DescCanceled {
		e.t.Errorf("device %s: %d installs, reports %v, last desc %q; want nothing installed after the cancel", id, dev.Installs, dev.Status, dev.LastDesc)
	}
	up, err := e.store.LatestUpgrade(e.ctx, id)
	if err != nil || up.State != ota.StateCanceled {
		e.t.Fatalf("upgrade record %+v, err %v; want canceled", up, err)
	}
	// The confirmation is the attempt's last report, as `starter status` shows it.
	require.Eventually(e.t, func() bool {
		r, err := e.store.LastReport(e.ctx, id, ota.AttemptKey{CommandID: up.CommandID, Type: up.Type, Version: up.Version})
		return err == nil && r.Progress == protocol.CodeOther && r.Desc == protocol.DescCanceled
	}, 30*time.Second, 50*time.Millisecond, id+"'s confirmation in PostgreSQL")
}

// TestDeviceSideCancel: canceling an upgrade mid-download publishes the cancel message; the
// device abandons the download, installs nothing and confirms with -4 "canceled", which is
// recorded although the upgrade has ended.
func TestDeviceSideCancel(t *testing.T) {
	e := slowFleet(t, "dcancel", 1)
	id := simID("dcancel", 1)
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, e.request(id))
	if err != nil {
		t.Fatal(err)
	}
	require.Eventually(t, func() bool {
		st, ok := e.liveState(run)
		return ok && st.State == ota.StateDownloading
	}, 30*time.Second, 50*time.Millisecond, "the download to start")
	if err := e.c.CancelWorkflow(e.ctx, run.GetID(), run.GetRunID()); err != nil {
		t.Fatal(err)
	}
	st, err := ota.UpgradeResult(e.ctx, run)
	var canceled *temporal.CanceledError
	if st.State != ota.StateCanceled || !errors.As(err, &canceled) {
		t.Fatalf("result %s, err %v; want canceled", st.State, err)
	}
	e.checkCanceledOnDevice(id)
}

// TestRolloutCancelRunningStopsDownloads: a rollout canceled with its running upgrades has
// their devices stop their downloads; nothing is installed.
func TestRolloutCancelRunningStopsDownloads(t *testing.T) {
	e := slowFleet(t, "rcancel", 2)
	run := e.startRollout(e.rollout("rcancel-rollout", "rcancel"))
	require.Eventually(t, func() bool {
		return e.sys.Fleet.Stats().Upgrading == 2
	}, 30*time.Second, 50*time.Millisecond, "both downloads to start")
	if err := e.update(run, ota.UpdateCancel, ota.CancelRequest{CancelRunning: true, Reason: "wrong package"}); err != nil {
		t.Fatal(err)
	}
	p, _ := e.finish(run)
	if p.State != ota.RolloutCanceled || p.Counts.Canceled != 2 {
		t.Fatalf("rollout %s, counts %+v; want canceled with 2 canceled upgrades", p.State, p.Counts)
	}
	for i := 1; i <= 2; i++ {
		e.checkCanceledOnDevice(simID("rcancel", i))
	}
}
