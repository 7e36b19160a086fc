package e2e

import (
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
)

// rollout is a fast rollout request over the devices of a prefix.
func (e *env) rollout(name, prefix string, waves ...ota.Wave) ota.RolloutRequest {
	up := e.request("")
	return ota.RolloutRequest{Name: name, Upgrade: up, Targets: ota.Targets{Prefix: prefix + "-"}, Waves: waves}
}

func (e *env) startRollout(req ota.RolloutRequest) client.WorkflowRun {
	e.t.Helper()
	run, err := ota.StartRollout(e.ctx, e.c, req)
	if err != nil {
		e.t.Fatal(err)
	}
	return run
}

func (e *env) progress(run client.WorkflowRun) ota.RolloutProgress {
	e.t.Helper()
	p, err := e.queryProgress(run)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// queryProgress queries a rollout's progress; unlike progress, it fails no test (for the
// conditions require.Eventually retries).
func (e *env) queryProgress(run client.WorkflowRun) (ota.RolloutProgress, error) {
	var p ota.RolloutProgress
	v, err := e.c.QueryWorkflow(e.ctx, run.GetID(), "", ota.QueryProgress)
	if err == nil {
		err = v.Get(&p)
	}
	return p, err
}

func (e *env) update(run client.WorkflowRun, name string, args ...any) error {
	h, err := e.c.UpdateWorkflow(e.ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), UpdateName: name,
		Args: args, WaitForStage: client.WorkflowUpdateStageCompleted})
	if err != nil {
		return err
	}
	return h.Get(e.ctx, nil)
}

func (e *env) finish(run client.WorkflowRun) (ota.RolloutProgress, error) {
	e.t.Helper()
	err := run.Get(e.ctx, nil)
	return e.progress(run), err
}

// checkRecords compares a rollout's counts with the PostgreSQL records of its devices.
func (e *env) checkRecords(name string, p ota.RolloutProgress) {
	e.t.Helper()
	got, err := e.store.CountByState(e.ctx, name, p.FirstRunID)
	if err != nil {
		e.t.Fatal(err)
	}
	c := p.Counts
	want := map[ota.State]int{ota.StateSucceeded: c.Succeeded, ota.StateSkipped: c.Skipped,
		ota.StateFailed: c.Failed, ota.StateTimedOut: c.TimedOut, ota.StateCanceled: c.Canceled}
	for s, n := range want {
		if got[s] != n {
			e.t.Errorf("PostgreSQL has %d %s upgrades of %s, the rollout counts %d (records %v, counts %+v)", got[s], s, name, n, got, c)
		}
	}
}

func TestRolloutThreeWaves(t *testing.T) {
	e := newEnv(t, system.Config{Devices: 12, Prefix: "waves"})
	req := e.rollout("waves", "waves", ota.Wave{Count: 2}, ota.Wave{Percent: 50}, ota.Wave{Percent: 100})
	run := e.startRollout(req)
	p, err := e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted || p.Counts.Succeeded != 12 || p.Total != 12 {
		t.Fatalf("rollout %+v, err %v", p, err)
	}
	for i, want := range []int{2, 4, 6} {
		if w := p.Waves[i]; w.Target != want || w.Counts.Succeeded != want {
			t.Errorf("wave %d: target %d, %d succeeded; want %d", i+1, w.Target, w.Counts.Succeeded, want)
		}
	}
	e.checkRecords("waves", p)
	// Waves run in order: no device of wave 2 started before wave 1 ended.
	first, _ := e.store.LatestUpgrade(e.ctx, simID("waves", 2))
	second, _ := e.store.LatestUpgrade(e.ctx, simID("waves", 3))
	if first.FinishedAt == nil || second.CreatedAt.Before(*first.FinishedAt) {
		t.Errorf("wave 2 device started %s, before wave 1 ended %v", second.CreatedAt, first.FinishedAt)
	}
	t.Logf("largest rollout history: %d events for 12 devices", e.historyLength(run.GetID(), ""))
}

// TestRolloutHandsRunningUpgradesOver: a rollout that continues as new every few devices hands
// the upgrades still running to its next run, which follows them to their end (real Temporal
// server, AwaitWorkflows on the worker).
func TestRolloutHandsRunningUpgradesOver(t *testing.T) {
	timing := fastTiming
	timing.InstallDelay = time.Second
	e := newEnv(t, system.Config{Devices: 9, Prefix: "handover", Timing: timing})
	req := e.rollout("handover", "handover")
	req.ContinueAfter = 3
	req.MaxInFlight = 3
	run := e.startRollout(req)
	firstRun := run.GetRunID() // Get follows the runs
	p, err := e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted || p.Counts.Succeeded != 9 {
		t.Fatalf("rollout %+v, err %v", p, err)
	}
	if p.Runs < 3 {
		t.Errorf("rollout took %d runs; want a continue-as-new every 3 devices", p.Runs)
	}
	for _, id := range e.sys.Fleet.IDs() {
		if d, _ := e.sys.Fleet.Device(id); d.Upgrades != 1 {
			t.Errorf("%s installed %d times; want once", id, d.Upgrades)
		}
	}
	e.checkRecords("handover", p)
	// The first run ended while its upgrades were still running: it handed them over.
	first := e.c.GetWorkflowHistory(e.ctx, run.GetID(), firstRun, false, enumspb.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT)
	ev, err := first.Next()
	if err != nil {
		t.Fatal(err)
	}
	attrs := ev.GetWorkflowExecutionContinuedAsNewEventAttributes()
	if attrs == nil {
		t.Fatalf("first run closed with %s; want continued as new", ev.GetEventType())
	}
	var in ota.RolloutInput
	if err := converter.GetDefaultDataConverter().FromPayloads(attrs.GetInput(), &in); err != nil {
		t.Fatal(err)
	}
	if in.Carry == nil || len(in.Carry.Handed) == 0 {
		t.Errorf("first run handed over %+v; want its running upgrades", in.Carry)
	}
}

func TestRolloutFailureThresholdPausesThenResumes(t *testing.T) {
	failing := []string{simID("thresh", 1), simID("thresh", 2), simID("thresh", 3)}
	e := newEnv(t, system.Config{Devices: 10, Prefix: "thresh",
		Faults: simulator.Faults{InstallFail: simulator.Fault{Devices: failing}}})
	req := e.rollout("thresh", "thresh")
	req.Upgrade.MaxAttempts = 1
	req.MaxInFlight = 3
	req.FailurePercent = 50
	req.FailureMinCount = 3
	run := e.startRollout(req)
	require.Eventually(t, func() bool {
		p, err := e.queryProgress(run)
		return err == nil && p.State == ota.RolloutPaused
	}, 30*time.Second, 50*time.Millisecond, "the rollout to pause")
	p := e.progress(run)
	if p.Reason == "" || p.Counts.Failed != 3 || p.Counts.Started >= 10 {
		t.Fatalf("paused at %+v (reason %q); want 3 failures and not every device started", p.Counts, p.Reason)
	}
	paused := p.Counts.Started
	if err := e.update(run, ota.UpdateResume); err != nil {
		t.Fatal(err)
	}
	if err := e.update(run, ota.UpdateResume); err == nil {
		t.Error("resuming a running rollout was accepted")
	}
	p, err := e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted || p.Counts.Succeeded != 7 || p.Counts.Failed != 3 {
		t.Fatalf("final %+v %s, err %v", p.Counts, p.State, err)
	}
	e.checkRecords("thresh", p)
	// The history shows no device started while paused: those it started before the resume
	// are those it had started when the test saw it paused.
	if before, _, accepted := e.childStartsAroundUpdate(run.GetID(), "", ota.UpdateResume); !accepted || before != paused {
		t.Errorf("%d device upgrades started before the resume was accepted (accepted %v), %d when paused", before, accepted, paused)
	}
}

func TestRolloutCancel(t *testing.T) {
	tests := []struct {
		name          string
		cancelRunning bool
		// continueAfter 2 makes the rollout continue as new as soon as its two upgrades have
		// started: the next run cancels upgrades it did not start.
		continueAfter int
	}{
		{"cancelkeep", false, 0},
		{"cancelall", true, 0},
		{"cancelhanded", true, 2},
	}
	for _, tt := range tests {
		name, cancelRunning := tt.name, tt.cancelRunning
		t.Run(name, func(t *testing.T) {
			timing := fastTiming
			timing.InstallDelay = 1500 * time.Millisecond
			e := newEnv(t, system.Config{Devices: 6, Prefix: name, Timing: timing})
			req := e.rollout(name, name)
			req.MaxInFlight = 2
			req.ContinueAfter = tt.continueAfter
			run := e.startRollout(req)
			require.Eventually(t, func() bool {
				p, err := e.queryProgress(run)
				return err == nil && p.Counts.Running() == 2 && (tt.continueAfter == 0 || p.Runs > 1)
			}, 20*time.Second, 50*time.Millisecond, "two upgrades running")
			if err := e.update(run, ota.UpdateCancel, ota.CancelRequest{CancelRunning: cancelRunning, Reason: "test"}); err != nil {
				t.Fatal(err)
			}
			p, err := e.finish(run)
			if err != nil || p.State != ota.RolloutCanceled || p.Counts.Started != 2 {
				t.Fatalf("final %+v %s, err %v; want canceled with the 2 running", p.Counts, p.State, err)
			}
			if cancelRunning && p.Counts.Canceled != 2 {
				t.Errorf("cancel running: %+v, want both canceled", p.Counts)
			}
			if !cancelRunning && p.Counts.Succeeded != 2 {
				t.Errorf("let running finish: %+v, want both succeeded", p.Counts)
			}
			e.checkRecords(name, p)
		})
	}
}

func TestRolloutPreflightStopsBadMD5(t *testing.T) {
	e := newEnv(t, system.Config{Devices: 3, Prefix: "preflight"})
	req := e.rollout("preflight", "preflight")
	req.Upgrade.MD5 = "00000000000000000000000000000000"
	p, err := e.finish(e.startRollout(req))
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || p.State != ota.RolloutFailed || p.Counts.Started != 0 {
		t.Fatalf("rollout %s %+v, err %v; want failed before any device", p.State, p.Counts, err)
	}
	if s := e.sys.Fleet.Stats(); s.Commands != 0 {
		t.Errorf("devices got %d commands", s.Commands)
	}
	t.Logf("pre-flight failure: %s", p.Reason)
}

func TestRolloutRateLimitHolds(t *testing.T) {
	e := newEnv(t, system.Config{Devices: 8, Prefix: "rate"})
	req := e.rollout("rate", "rate")
	req.MaxPerMinute = 40 // one every 1.5 s, with up to 5 s of unused rate saved up (4 starts)
	p, err := e.finish(e.startRollout(req))
	if err != nil || p.Counts.Succeeded != 8 {
		t.Fatalf("rollout %+v, err %v", p.Counts, err)
	}
	var starts []time.Time
	for i := 1; i <= 8; i++ {
		up, err := e.store.LatestUpgrade(e.ctx, simID("rate", i))
		if err != nil {
			t.Fatal(err)
		}
		starts = append(starts, up.CreatedAt)
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	span := starts[7].Sub(starts[0])
	t.Logf("8 starts at 40/min took %s", span.Round(time.Millisecond))
	// A token bucket of 5 s: 4 at once, the 5th when 1 s of rate has added up, then every
	// 1.5 s: the 8th at +5.5 s. Starts are recorded when the command is out, so allow 0.5 s of
	// jitter. Unlimited, all 8 start within a few milliseconds.
	if span < 5*time.Second {
		t.Errorf("8 starts within %s: the 40/min limit did not hold", span)
	}
	for i := 0; i+5 < len(starts); i++ {
		if d := starts[i+5].Sub(starts[i]); d < 2*time.Second {
			t.Errorf("6 starts within %s, want at least 2.5 s", d)
		}
	}
}
