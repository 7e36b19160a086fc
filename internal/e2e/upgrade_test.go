package e2e

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// maxHistoryEvents is the most history events a successful device upgrade may take.
const maxHistoryEvents = 25

func TestUpgradeHappyPath(t *testing.T) {
	e := newEnv(t, system.Config{Devices: 1, Prefix: "happy"})
	id := simID("happy", 1)
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, e.request(id))
	if err != nil {
		t.Fatal(err)
	}
	st, err := ota.UpgradeResult(e.ctx, run)
	if err != nil || st.State != ota.StateSucceeded || st.Attempt != 1 || st.Reported != "1.1" {
		t.Fatalf("result %+v, err %v; want succeeded on attempt 1", st, err)
	}
	dev, err := e.store.GetDevice(e.ctx, id)
	if err != nil || dev.Reported["firmware_ver"] != "1.1" {
		t.Fatalf("device record %+v, err %v", dev, err)
	}
	up, err := e.store.LatestUpgrade(e.ctx, id)
	if err != nil || up.State != ota.StateSucceeded || up.Progress != 100 || up.RunID != run.GetRunID() || up.FinishedAt == nil {
		t.Fatalf("upgrade record %+v, err %v", up, err)
	}
	events, err := e.store.UpgradeEvents(e.ctx, up.RunID)
	if err != nil {
		t.Fatal(err)
	}
	if got := states(events); got != "sent,downloading,downloaded,succeeded" {
		t.Errorf("recorded states %s", got)
	}
	progress, err := e.store.ProgressEvents(e.ctx, id, 1000)
	if err != nil || len(progress) < 2 || progress[0].Progress != 100 {
		t.Errorf("progress events %+v, err %v: want every report, the last at 100", progress, err)
	}
	n := e.historyLength(run.GetID(), run.GetRunID())
	t.Logf("history events of a successful device upgrade: %d (limit %d); progress reports stored: %d", n, maxHistoryEvents, len(progress))
	if n > maxHistoryEvents {
		t.Errorf("history has %d events, more than %d", n, maxHistoryEvents)
	}
}

func TestUpgradeErrorCodesRetriedThenFailed(t *testing.T) {
	tests := []struct {
		name   string
		faults simulator.Faults
		code   int
	}{
		{"download failed", simulator.Faults{DownloadFail: simulator.Fault{Rate: 1}}, protocol.CodeDownloadFailed},
		{"md5 mismatch", simulator.Faults{Corrupt: simulator.Fault{Rate: 1}}, protocol.CodeMD5Mismatch},
		{"install failed", simulator.Faults{InstallFail: simulator.Fault{Rate: 1}}, protocol.CodeInstallFailed},
		{"back on the old version", simulator.Faults{OldVersion: simulator.Fault{Rate: 1}}, protocol.CodeInstallFailed},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := "code" + string(rune('a'+i))
			e := newEnv(t, system.Config{Devices: 1, Prefix: prefix, Faults: tt.faults})
			id := simID(prefix, 1)
			req := e.request(id)
			req.MaxAttempts = 3
			st, err := e.upgrade(req)
			if err == nil || st.State != ota.StateFailed || st.ErrorCode != tt.code || st.Attempt != 3 {
				t.Fatalf("result %+v, err %v; want failed with code %d after 3 attempts", st, err, tt.code)
			}
			dev, _ := e.sys.Fleet.Device(id)
			if dev.Attempts != 3 || len(dev.Received) != 3 {
				t.Errorf("device worked on %d commands, received %d; want 3 each", dev.Attempts, len(dev.Received))
			}
			up, err := e.store.LatestUpgrade(e.ctx, id)
			if err != nil || up.State != ota.StateFailed || up.ErrorCode != tt.code || up.Attempt != 3 {
				t.Errorf("upgrade record %+v, err %v", up, err)
			}
		})
	}
}

// TestUpgradeDeviceDropsOffMidDownload: a device that loses its network halfway through the
// download, for less than the silence timeout, comes back and finishes on the same attempt.
func TestUpgradeDeviceDropsOffMidDownload(t *testing.T) {
	timing := fastTiming
	timing.OfflineFor = 2 * time.Second
	e := newEnv(t, system.Config{Devices: 1, Prefix: "dropoff", Timing: timing,
		Faults: simulator.Faults{DropOff: simulator.Fault{Rate: 1}}})
	id := simID("dropoff", 1)
	req := e.request(id)
	req.SilenceTimeout = ota.Duration(8 * time.Second)
	st, err := e.upgrade(req)
	if err != nil || st.State != ota.StateSucceeded || st.Attempt != 1 {
		t.Fatalf("result %+v, err %v; want succeeded on attempt 1", st, err)
	}
	dev, _ := e.sys.Fleet.Device(id)
	if dev.Drops != 1 || dev.Attempts != 1 || dev.Upgrades != 1 {
		t.Errorf("device %+v; want one drop during its only attempt", dev)
	}
	progress, err := e.store.ProgressEvents(e.ctx, id, 1000)
	if err != nil || len(progress) < 2 || progress[0].Progress != 100 || progress[len(progress)-1].Progress >= 50 {
		t.Errorf("progress events %+v, err %v; want reports from before the drop and the 100 after it", progress, err)
	}
}

func TestUpgradeOtherErrorCode(t *testing.T) {
	e := newEnv(t, system.Config{})
	d := e.scriptedDevice("other-1", protocol.Status{"firmware_ver": "1.0"})
	req := e.request(d.id)
	req.MaxAttempts = 2
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		cmd := d.command()
		d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: protocol.CodeOther, Desc: "disk full"})
	}
	st, err := ota.UpgradeResult(e.ctx, run)
	if err == nil || st.State != ota.StateFailed || st.ErrorCode != protocol.CodeOther || st.Desc != "disk full" {
		t.Fatalf("result %+v, err %v; want failed with -4 and the device's desc", st, err)
	}
}

func TestUpgradeNeverReportsNewVersion(t *testing.T) {
	e := newEnv(t, system.Config{Devices: 1, Prefix: "noreport", Faults: simulator.Faults{NoReport: simulator.Fault{Rate: 1}}})
	id := simID("noreport", 1)
	req := e.request(id)
	req.MaxAttempts = 2
	req.InstallTimeout = ota.Duration(2 * time.Second)
	st, err := e.upgrade(req)
	var sawSuccess bool
	events, _ := e.store.LatestUpgrade(e.ctx, id)
	sawSuccess = events.State == ota.StateSucceeded
	if err == nil || st.State != ota.StateTimedOut || st.Attempt != 2 || st.Progress != 100 || sawSuccess {
		t.Fatalf("result %+v, err %v; want timed out after 2 attempts that each reached 100%%", st, err)
	}
}

func TestUpgradeAlreadyOnTargetSkipped(t *testing.T) {
	e := newEnv(t, system.Config{Devices: 1, Prefix: "skip", Initial: protocol.Status{"firmware_ver": "1.1"}})
	id := simID("skip", 1)
	st, err := e.upgrade(e.request(id))
	if err != nil || st.State != ota.StateSkipped {
		t.Fatalf("result %+v, err %v; want skipped", st, err)
	}
	if dev, _ := e.sys.Fleet.Device(id); len(dev.Received) != 0 {
		t.Errorf("a device already on target got %d commands", len(dev.Received))
	}
}

func TestUpgradeStaleProgressIgnored(t *testing.T) {
	e := newEnv(t, system.Config{})
	d := e.scriptedDevice("stale-1", protocol.Status{"firmware_ver": "1.0"})
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, e.request(d.id))
	if err != nil {
		t.Fatal(err)
	}
	cmd := d.command()
	// An old attempt's error, another version's error and another type's error: all stale.
	d.progress(protocol.Progress{ID: "an-older-attempt", Type: cmd.Type, Version: cmd.Version, Progress: protocol.CodeDownloadFailed})
	d.progress(protocol.Progress{Type: cmd.Type, Version: "0.9", Progress: protocol.CodeMD5Mismatch})
	d.progress(protocol.Progress{Type: "app", Version: cmd.Version, Progress: protocol.CodeInstallFailed})
	// A report without an ID counts when type and version match (the seed's format).
	d.progress(protocol.Progress{Type: cmd.Type, Version: cmd.Version, Progress: 40, Desc: "downloading"})
	require.Eventually(t, func() bool {
		v, err := e.c.QueryWorkflow(e.ctx, run.GetID(), run.GetRunID(), ota.QueryState)
		var st ota.UpgradeStatus
		return err == nil && v.Get(&st) == nil && st.Progress == 40 && st.State == ota.StateDownloading
	}, 10*time.Second, 50*time.Millisecond, "the query to show 40%")
	d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
	d.status(protocol.Status{"firmware_ver": "1.1"})
	st, err := ota.UpgradeResult(e.ctx, run)
	if err != nil || st.State != ota.StateSucceeded || st.Attempt != 1 || st.ErrorCode != 0 {
		t.Fatalf("result %+v, err %v; want success on the first attempt, stale errors ignored", st, err)
	}
}

func TestSecondConcurrentUpgradeRefused(t *testing.T) {
	e := newEnv(t, system.Config{})
	d := e.scriptedDevice("busy-1", protocol.Status{"firmware_ver": "1.0"})
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, e.request(d.id))
	if err != nil {
		t.Fatal(err)
	}
	d.command()
	second := e.request(d.id)
	second.Version = "1.2"
	_, err = ota.StartDeviceUpgrade(e.ctx, e.c, second)
	var running *ota.AlreadyRunningError
	if !errors.As(err, &running) || running.RunID != run.GetRunID() || !strings.Contains(err.Error(), ota.DeviceWorkflowID(d.id)) {
		t.Fatalf("second start: %v; want AlreadyRunningError naming run %s", err, run.GetRunID())
	}
	if err := e.c.CancelWorkflow(e.ctx, run.GetID(), ""); err != nil {
		t.Fatal(err)
	}
	st, _ := ota.UpgradeResult(e.ctx, run)
	if st.State != ota.StateCanceled {
		t.Fatalf("after cancel: %+v", st)
	}
	up, err := e.store.LatestUpgrade(e.ctx, d.id)
	if err != nil || up.State != ota.StateCanceled || up.Version != "1.1" {
		t.Fatalf("upgrade record %+v, err %v: want the first upgrade, canceled", up, err)
	}
}

func TestWorkerRestartMidUpgrade(t *testing.T) {
	timing := fastTiming
	timing.InstallDelay = 2 * time.Second
	e := newEnv(t, system.Config{Devices: 1, Prefix: "restart", Timing: timing})
	id := simID("restart", 1)
	req := e.request(id)
	req.InstallTimeout = ota.Duration(time.Minute)
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
	if err != nil {
		t.Fatal(err)
	}
	require.Eventually(t, func() bool {
		up, err := e.store.LatestUpgrade(e.ctx, id)
		return err == nil && up.State == ota.StateDownloaded
	}, 20*time.Second, 50*time.Millisecond, "the download to finish")
	e.sys.StopWorker()
	// The device installs, reboots and reports 1.1 while no worker runs.
	require.Eventually(t, func() bool {
		dev, _ := e.sys.Fleet.Device(id)
		return dev.Upgrades == 1
	}, 20*time.Second, 50*time.Millisecond, "the device to reboot on 1.1")
	if err := e.sys.StartWorker(e.ctx); err != nil {
		t.Fatal(err)
	}
	st, err := ota.UpgradeResult(e.ctx, run)
	if err != nil || st.State != ota.StateSucceeded || st.Attempt != 1 {
		t.Fatalf("result %+v, err %v; want success across the worker restart", st, err)
	}
}

func TestMalformedMessagesRejectedValidOnesFlow(t *testing.T) {
	e := newEnv(t, system.Config{})
	d := e.scriptedDevice("hostile-1", protocol.Status{"firmware_ver": "1.0"})
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, e.request(d.id))
	if err != nil {
		t.Fatal(err)
	}
	cmd := d.command()
	bad := []struct {
		topic, payload, reason string
	}{
		{protocol.ProgressTopic(d.id), `{"type":"firmware","version":"1.1","progress":`, "malformed"},
		{protocol.ProgressTopic(d.id), `{"type":"firmware","version":"1.1","progress":"70"}`, "integer"},
		{protocol.ProgressTopic(d.id), `{"type":"firmware","version":"1.1","progress":101}`, "progress"},
		{protocol.StatusTopic(d.id), `{"firmware_ver":1.1}`, "string"},
		{protocol.StatusTopic(d.id), `{"firmware_ver":"` + strings.Repeat("1", 5000) + `"}`, "bytes"},
		{protocol.StatusTopic(d.id), "\xff\xfe{}", "UTF-8"},
	}
	for _, b := range bad {
		d.publish(b.topic, []byte(b.payload))
	}
	// Valid reports flow on: the upgrade succeeds.
	d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
	d.status(protocol.Status{"firmware_ver": "1.1"})
	st, err := ota.UpgradeResult(e.ctx, run)
	if err != nil || st.State != ota.StateSucceeded {
		t.Fatalf("result %+v, err %v", st, err)
	}
	defer func() {
		r, _ := e.store.RejectedMessages(e.ctx, "", 100)
		for _, x := range r {
			t.Logf("rejected %s %s: %.60q", x.DeviceID, x.Topic, x.Reason)
		}
	}()
	require.Eventually(t, func() bool {
		r, err := e.store.RejectedMessages(e.ctx, d.id, 100)
		return err == nil && len(r) == len(bad)
	}, 10*time.Second, 50*time.Millisecond, "every bad message recorded")
	rejected, _ := e.store.RejectedMessages(e.ctx, d.id, 100)
	for i, b := range bad {
		r := rejected[len(bad)-1-i] // newest first
		if r.Topic != b.topic || !strings.Contains(r.Reason, b.reason) {
			t.Errorf("rejected %d: topic %s reason %q; want %s and a reason about %q", i, r.Topic, r.Reason, b.topic, b.reason)
		}
		if !bytes.HasPrefix([]byte(b.payload), r.Payload[:min(len(r.Payload), 100)]) && len(b.payload) < 4096 {
			t.Errorf("rejected %d: payload %q not kept", i, r.Payload)
		}
	}
	dev, err := e.store.GetDevice(e.ctx, d.id)
	if err != nil || len(dev.Reported) != 1 || dev.Reported["firmware_ver"] != "1.1" {
		t.Errorf("reported status %v, err %v: a rejected status changed it", dev.Reported, err)
	}
}
