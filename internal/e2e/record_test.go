package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// envRecordHistories names the directory where TestRecordHistories writes the histories it
// records; the test is skipped without it.
const envRecordHistories = "OTAFLOW_RECORD_HISTORIES"

// TestRecordHistories runs the device upgrade and rollout workflows through situations that
// exercise their branches (retries, timeouts, cancels, pauses, approvals, hand-overs) on the
// real servers and writes each run's history as JSON, for workflows/replay_test.go:
//
//	OTAFLOW_RECORD_HISTORIES=$PWD/workflows/testdata/v1 go test -run TestRecordHistories ./internal/e2e/
//
// A history recorded before a change to a workflow, and replayed after it, shows that runs
// still open when the new worker is deployed carry on (or that the change needs a
// workflow.GetVersion guard).
func TestRecordHistories(t *testing.T) {
	dir := os.Getenv(envRecordHistories)
	if dir == "" {
		t.Skip(envRecordHistories + " is not set")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("upgrades", func(t *testing.T) { recordUpgrades(t, dir) })
	t.Run("rollouts", func(t *testing.T) { recordRollouts(t, dir) })
	t.Run("ends", func(t *testing.T) { recordEnds(t, dir) })
	t.Run("cleanup", func(t *testing.T) { recordCleanup(t, dir) })
}

// recordCleanup runs the retention cleanup over old and young rows, in batches of 100, with
// the upgrades kept forever (the default).
func recordCleanup(t *testing.T, dir string) {
	e := newEnv(t, system.Config{})
	policy, err := e.store.RetentionPolicy(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	policy.BatchSize = 100
	if err := e.store.SetRetentionPolicy(e.ctx, policy); err != nil {
		t.Fatal(err)
	}
	e.seed("recorded", retentionFixture{oldProgress: 250, youngProgress: 50, oldRejected: 120, youngRejected: 10, oldShed: 3, youngShed: 1})
	run, r := e.runCleanup()
	t.Logf("cleanup: %+v", r.Items)
	e.save(dir, "retention-cleanup", run.GetID())
}

// save writes every run of a workflow, oldest first, as name.json, name-2.json, ...
func (e *env) save(dir, name, workflowID string) {
	e.t.Helper()
	runID := ""
	var runs []*historypb.History
	// The latest run first, then the runs it continued from.
	for {
		h := &historypb.History{}
		it := e.c.GetWorkflowHistory(e.ctx, workflowID, runID, false, 0)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				e.t.Fatal(err)
			}
			h.Events = append(h.Events, ev)
		}
		runs = append([]*historypb.History{h}, runs...)
		prev := h.Events[0].GetWorkflowExecutionStartedEventAttributes().GetContinuedExecutionRunId()
		if prev == "" {
			break
		}
		runID = prev
	}
	for i, h := range runs {
		b, err := protojson.Marshal(h)
		if err != nil {
			e.t.Fatal(err)
		}
		file := name + ".json"
		if i > 0 {
			file = fmt.Sprintf("%s-%d.json", name, i+1)
		}
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
			e.t.Fatal(err)
		}
		e.t.Logf("recorded %s: %d events", file, len(h.Events))
	}
}

// recordUpgrades drives scripted devices message by message.
func recordUpgrades(t *testing.T, dir string) {
	e := newEnv(t, system.Config{})
	old := protocol.Status{"firmware_ver": "1.0"}
	progress := func(cmd protocol.UpgradeCommand, n int) protocol.Progress {
		return protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: n}
	}
	type scenario struct {
		name  string
		tweak func(*ota.UpgradeRequest)
		drive func(d *scripted, run client.WorkflowRun)
	}
	succeed := func(d *scripted, _ client.WorkflowRun) {
		cmd := d.command()
		d.progress(progress(cmd, 100))
		d.status(protocol.Status{"firmware_ver": "1.1"})
	}
	scenarios := []scenario{
		{"upgrade-succeeded", nil, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, 10))
			d.progress(progress(cmd, 100))
			d.status(protocol.Status{"firmware_ver": "1.1"})
		}},
		{"upgrade-retried-after-error", nil, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, -1))
			cmd = d.command()
			d.progress(progress(cmd, 100))
			d.status(protocol.Status{"firmware_ver": "1.1"})
		}},
		// A status without the version key after the download (issue 15, defect 7).
		{"upgrade-status-without-key", nil, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, 100))
			d.status(protocol.Status{"app_ver": "9"})
			cmd = d.command()
			d.progress(progress(cmd, 100))
			d.status(protocol.Status{"firmware_ver": "1.1"})
		}},
		// Progress that goes back after 100, and a repeated 100.
		{"upgrade-progress-backwards", nil, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, 100))
			d.progress(progress(cmd, 50))
			d.progress(progress(cmd, 100))
			d.status(protocol.Status{"firmware_ver": "1.1"})
		}},
		{"upgrade-silence-then-retry", nil, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, 10))
			cmd = d.command() // after the silence timeout
			d.progress(progress(cmd, 100))
			d.status(protocol.Status{"firmware_ver": "1.1"})
		}},
		{"upgrade-wrong-version-after-download", nil, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, 100))
			d.status(old)
			cmd = d.command()
			d.progress(progress(cmd, 100))
			d.status(protocol.Status{"firmware_ver": "1.1"})
		}},
		{"upgrade-canceled", nil, func(d *scripted, run client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, 10))
			if err := e.c.CancelWorkflow(e.ctx, run.GetID(), run.GetRunID()); err != nil {
				t.Fatal(err)
			}
		}},
		{"upgrade-timed-out", func(r *ota.UpgradeRequest) { r.MaxAttempts = 2 }, func(d *scripted, _ client.WorkflowRun) {
			d.command()
			d.command()
		}},
		{"upgrade-skipped", nil, nil},
		// Issue 11's paths, as the code before them ran them: a cancel in each phase of an
		// attempt (a cancel message goes out for a command being worked on), a signed package
		// (a pre-flight check), a soak time and a compatibility rule the device does not meet.
		{"upgrade-canceled-before-report", nil, func(d *scripted, run client.WorkflowRun) {
			d.command()
			e.cancelWhen(run, ota.StateSent)
		}},
		{"upgrade-canceled-after-download", nil, func(d *scripted, run client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, 100))
			e.cancelWhen(run, ota.StateDownloaded)
		}},
		{"upgrade-canceled-in-backoff", func(r *ota.UpgradeRequest) { r.RetryBackoff = ota.Duration(time.Minute) }, func(d *scripted, run client.WorkflowRun) {
			cmd := d.command()
			d.progress(progress(cmd, -1))
			e.cancelWhen(run, ota.StatePending)
		}},
		{"upgrade-signed", func(r *ota.UpgradeRequest) { newPublisher(t, "release-1").sign(t, r, e.sys.Package.SHA256) }, succeed},
		{"upgrade-soak", func(r *ota.UpgradeRequest) { r.Soak = ota.Duration(2 * time.Second) }, succeed},
		// The code before compatibility sent the command, and the device succeeded (so the
		// history in testdata/issue11-device was recorded); since, no command is sent and the
		// upgrade fails at once.
		{"upgrade-incompatible", func(r *ota.UpgradeRequest) {
			r.Compat = &ota.Compatibility{Labels: map[string]string{"model": "pump-v2"}, Versions: ">=2.0"}
		}, func(*scripted, client.WorkflowRun) {}},
	}
	for i, sc := range scenarios {
		device := fmt.Sprintf("rec-%02d", i)
		status := old
		if sc.drive == nil {
			status = protocol.Status{"firmware_ver": "1.1"}
		}
		d := e.scriptedDevice(device, status)
		req := e.request(device)
		if sc.tweak != nil {
			sc.tweak(&req)
		}
		run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
		if err != nil {
			t.Fatal(err)
		}
		if sc.drive != nil {
			sc.drive(d, run)
		}
		st, err := ota.UpgradeResult(e.ctx, run)
		t.Logf("%s: %s after %d attempt(s) (%v)", sc.name, st.State, st.Attempt, err)
		e.save(dir, sc.name, run.GetID())
	}
}

// recordRollouts runs rollouts over simulated fleets.
func recordRollouts(t *testing.T, dir string) {
	timing := fastTiming
	timing.InstallDelay = 2 * time.Second
	// rall-00041..43 fail to install: the failure threshold's fleet is rall-00040..49.
	faults := simulator.Faults{InstallFail: simulator.Fault{Devices: []string{simID("rall", 41), simID("rall", 42), simID("rall", 43)}}}
	e := newEnv(t, system.Config{Devices: 49, Prefix: "rall", Timing: timing, Faults: faults})
	wait := func(run client.WorkflowRun, what string, cond func(ota.RolloutProgress) bool) {
		t.Helper()
		require.Eventually(t, func() bool {
			p, err := e.queryProgress(run)
			return err == nil && cond(p)
		}, time.Minute, 50*time.Millisecond, what)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// group n is rall-000n0..rall-000n9 (n = 0: rall-00001..09).
	targets := func(n int) ota.Targets { return ota.Targets{Prefix: fmt.Sprintf("rall-%04d", n)} }

	// Waves with a bake and an approval; rate limited; paused and resumed.
	req := e.rollout("rec-waves", "rall")
	req.Targets = targets(1)
	req.Waves = []ota.Wave{{Count: 2, Bake: ota.Duration(2 * time.Second)}, {Percent: 100, Approve: true}}
	req.MaxPerMinute = 120
	run := e.startRollout(req)
	wait(run, "wave 2 waiting for approval", func(p ota.RolloutProgress) bool { return p.State == ota.RolloutWaitingApproval })
	must(e.update(run, ota.UpdateApprove, 0))
	wait(run, "wave 2 started", func(p ota.RolloutProgress) bool { return p.Counts.Started >= 4 })
	must(e.update(run, ota.UpdatePause, "recording"))
	must(e.update(run, ota.UpdateResume))
	_, err := e.finish(run)
	must(err)
	e.save(dir, "rollout-waves-approval-pause", run.GetID())

	// Pause while waiting for approval, resume, then cancel (issue 15, defect 1: it never
	// goes on by itself).
	req = e.rollout("rec-approval-pause", "rall")
	req.Targets = targets(2)
	req.Waves = []ota.Wave{{Count: 1}, {Percent: 100, Approve: true}}
	run = e.startRollout(req)
	wait(run, "waiting for approval", func(p ota.RolloutProgress) bool { return p.State == ota.RolloutWaitingApproval })
	must(e.update(run, ota.UpdatePause, "recording"))
	must(e.update(run, ota.UpdateResume))
	must(e.update(run, ota.UpdateCancel, ota.CancelRequest{Reason: "recording"}))
	_, err = e.finish(run)
	must(err)
	e.save(dir, "rollout-approval-paused-canceled", run.GetID())

	// Continue-as-new every three devices, with upgrades handed over.
	req = e.rollout("rec-handover", "rall")
	req.Targets = targets(3)
	req.ContinueAfter = 3
	req.MaxInFlight = 2
	run = e.startRollout(req)
	_, err = e.finish(run)
	must(err)
	e.save(dir, "rollout-handover", run.GetID())

	// Canceled with the running upgrades, mid-wave.
	req = e.rollout("rec-cancel-running", "rall")
	req.Targets = targets(0)
	req.MaxInFlight = 3
	req.Upgrade.InstallTimeout = ota.Duration(time.Minute)
	run = e.startRollout(req)
	wait(run, "upgrades running", func(p ota.RolloutProgress) bool { return p.Counts.Started >= 3 })
	must(e.update(run, ota.UpdateCancel, ota.CancelRequest{CancelRunning: true, Reason: "recording"}))
	_, err = e.finish(run)
	must(err)
	e.save(dir, "rollout-cancel-running", run.GetID())

	// The failure threshold pauses; resumed, the rollout completes.
	req = e.rollout("rec-threshold", "rall")
	req.Targets = targets(4)
	req.MaxInFlight = 2
	req.FailurePercent = 50
	req.FailureMinCount = 2
	req.Upgrade.MaxAttempts = 1
	run = e.startRollout(req)
	wait(run, "paused by the threshold", func(p ota.RolloutProgress) bool { return p.State == ota.RolloutPaused })
	must(e.update(run, ota.UpdateResume))
	_, err = e.finish(run)
	must(err)
	e.save(dir, "rollout-threshold-paused-resumed", run.GetID())

	// A wave below its success threshold aborts the rollout (issue 11: reverted devices are
	// judged there too). Group 4's devices still on 1.0 are the three that fail to install.
	req = e.rollout("rec-wave-threshold", "rall")
	req.Targets = targets(4)
	req.Waves = []ota.Wave{{Count: 1, SuccessThreshold: 100}, {Percent: 100}}
	req.FailureAction = ota.ActionAbort
	req.Upgrade.MaxAttempts = 1
	run = e.startRollout(req)
	_, err = e.finish(run)
	t.Logf("rec-wave-threshold: %v", err)
	e.save(dir, "rollout-wave-threshold-aborted", run.GetID())

	// The failure threshold aborts: rall-00041..43, the devices the threshold rollout left
	// on the old version, all fail to install.
	req = e.rollout("rec-threshold-abort", "rall")
	req.Targets = targets(4)
	req.MaxInFlight = 1
	req.FailurePercent = 50
	req.FailureMinCount = 2
	req.FailureAction = ota.ActionAbort
	req.Upgrade.MaxAttempts = 1
	run = e.startRollout(req)
	_, _ = e.finish(run)
	e.save(dir, "rollout-threshold-aborted", run.GetID())

	// A Temporal cancel of the rollout workflow (Web UI, temporal workflow cancel).
	// Upgraded devices are included again (they end skipped) so that the group has targets.
	req = e.rollout("rec-temporal-cancel", "rall")
	req.Targets = targets(0)
	req.Targets.IncludeUpToDate = true
	req.MaxInFlight = 2
	req.Upgrade.Version = "1.2"
	run = e.startRollout(req)
	wait(run, "upgrades running", func(p ota.RolloutProgress) bool { return p.Counts.Started >= 2 })
	must(e.c.CancelWorkflow(e.ctx, run.GetID(), ""))
	_ = run.Get(e.ctx, nil)
	e.save(dir, "rollout-temporal-cancel", run.GetID())
}

// cancelWhen cancels an upgrade once its state is s.
func (e *env) cancelWhen(run client.WorkflowRun, s ota.State) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		v, err := e.c.QueryWorkflow(e.ctx, run.GetID(), run.GetRunID(), ota.QueryState)
		var st ota.UpgradeStatus
		return err == nil && v.Get(&st) == nil && st.State == s
	}, 30*time.Second, 50*time.Millisecond, "upgrade "+string(s))
	if err := e.c.CancelWorkflow(e.ctx, run.GetID(), run.GetRunID()); err != nil {
		e.t.Fatal(err)
	}
}

// recordEnds records how rollouts and upgrades end where issue 10 changes what users read of
// them: a rollout that completes (its children's requests), one continued as new, one whose
// pre-flight fails, one that matches no device, and the upgrade of an unknown device.
//
//	OTAFLOW_RECORD_HISTORIES=$PWD/workflows/testdata/v2 go test -run TestRecordHistories/ends ./internal/e2e/
func recordEnds(t *testing.T, dir string) {
	e := newEnv(t, system.Config{Devices: 4, Prefix: "rend"})
	end := func(name string, run client.WorkflowRun) {
		t.Helper()
		p, err := e.finish(run)
		t.Logf("%s: %s, %d targets, %q (%v)", name, p.State, p.Total, p.Reason, err)
		e.save(dir, name, run.GetID())
	}

	req := e.rollout("rec-completed", "rend", ota.Wave{Count: 2}, ota.Wave{Percent: 100})
	end("rollout-completed", e.startRollout(req))

	req = e.rollout("rec-continued", "rend")
	req.Upgrade.Version = "1.2"
	req.ContinueAfter = 2
	req.MaxInFlight = 1
	end("rollout-continued", e.startRollout(req))

	req = e.rollout("rec-preflight-failed", "rend")
	req.Upgrade.Version = "1.3"
	req.Upgrade.MD5 = "00000000000000000000000000000000"
	end("rollout-preflight-failed", e.startRollout(req))

	req = e.rollout("rec-no-targets", "nobody")
	end("rollout-no-targets", e.startRollout(req))

	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, e.request("rend-unknown"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := ota.UpgradeResult(e.ctx, run)
	t.Logf("upgrade-unknown-device: %s %q (%v)", st.State, st.Desc, err)
	e.save(dir, "upgrade-unknown-device", run.GetID())
}
