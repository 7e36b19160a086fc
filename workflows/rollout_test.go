package workflows

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/stretchr/testify/mock"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// fleetHarness runs RolloutWorkflow over a fake inventory, with device upgrades replaced by a
// child workflow whose outcome the test decides per device.
type fleetHarness struct {
	testsuite.WorkflowTestSuite
	env *testsuite.TestWorkflowEnvironment
	dev *fakeDevices

	mu      sync.Mutex
	started map[string]time.Time // device -> virtual start time of its upgrade
	order   []string
	fail    map[string]ota.State     // devices whose upgrade ends in this state
	took    time.Duration            // how long each device upgrade takes
	tookBy  map[string]time.Duration // how long some device upgrades take, if not took
	// followed lists the workflow IDs of the upgrades AwaitWorkflows followed.
	followed []string
	// requests are the requests the device upgrades got.
	requests []ota.UpgradeRequest
	// rolloutRuns are the RolloutRun of each device's upgrade request.
	rolloutRuns map[string]string
}

func newFleetHarness(t *testing.T, n int) *fleetHarness {
	h := &fleetHarness{dev: &fakeDevices{devices: map[string]store.Device{}}, started: map[string]time.Time{},
		fail: map[string]ota.State{}, took: time.Minute, rolloutRuns: map[string]string{}}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("dev-%03d", i)
		h.dev.devices[id] = store.Device{ID: id, Reported: protocol.Status{"firmware_ver": "1.0"}}
	}
	h.env = h.NewTestWorkflowEnvironment()
	h.env.RegisterActivity(&activities.Activities{Publisher: h.dev, Store: h.dev})
	h.env.RegisterWorkflowWithOptions(RolloutWorkflow, workflow.RegisterOptions{Name: ota.RolloutWorkflowName})
	h.env.RegisterWorkflowWithOptions(
		func(ctx workflow.Context, req ota.UpgradeRequest) (ota.UpgradeStatus, error) {
			h.mu.Lock()
			h.started[req.DeviceID] = workflow.Now(ctx)
			h.order = append(h.order, req.DeviceID)
			h.requests = append(h.requests, req)
			h.dev.mu.Lock()
			if h.dev.taken == nil {
				h.dev.taken = map[string]bool{}
			}
			h.dev.taken[req.DeviceID] = true
			h.dev.mu.Unlock()
			h.rolloutRuns[req.DeviceID] = req.RolloutRun
			state, failing := h.fail[req.DeviceID]
			took := h.took
			if d, ok := h.tookBy[req.DeviceID]; ok {
				took = d
			}
			h.mu.Unlock()
			if err := workflow.Sleep(ctx, took); err != nil {
				return ota.UpgradeStatus{DeviceID: req.DeviceID, State: ota.StateCanceled}, temporal.NewCanceledError()
			}
			st := ota.UpgradeStatus{DeviceID: req.DeviceID, State: ota.StateSucceeded}
			if failing {
				st.State = state
				errType := ota.ErrTypeUpgradeFailed
				switch state {
				case ota.StateTimedOut:
					errType = ota.ErrTypeUpgradeTimedOut
				case ota.StateReverted:
					errType = ota.ErrTypeUpgradeReverted
				}
				return st, temporal.NewNonRetryableApplicationError("injected", errType, nil, st)
			}
			return st, nil
		}, workflow.RegisterOptions{Name: ota.DeviceUpgradeWorkflowName})
	// AwaitWorkflows, which follows upgrades handed over by an earlier run, reports them
	// succeeded after took.
	var a *activities.Activities
	h.env.OnActivity(a.AwaitWorkflows, mock.Anything, mock.Anything).After(h.took).Return(
		func(_ context.Context, in ota.AwaitWorkflowsInput) ([]ota.Outcome, error) {
			var out []ota.Outcome
			for _, e := range in.Executions {
				out = append(out, ota.Outcome{WorkflowID: e.WorkflowID, Result: &ota.UpgradeStatus{State: ota.StateSucceeded}})
				h.mu.Lock()
				h.followed = append(h.followed, e.WorkflowID)
				h.mu.Unlock()
			}
			return out, nil
		})
	return h
}

func rolloutRequest(waves ...ota.Wave) ota.RolloutRequest {
	up := testRequest()
	up.DeviceID = ""
	return ota.RolloutRequest{Name: "r1", Upgrade: up, Targets: ota.Targets{Prefix: "dev-"}, Waves: waves, SkipPreflight: true}
}

func (h *fleetHarness) run(t *testing.T, in ota.RolloutInput) (ota.RolloutProgress, error) {
	t.Helper()
	h.env.ExecuteWorkflow(ota.RolloutWorkflowName, in)
	if !h.env.IsWorkflowCompleted() {
		t.Fatal("rollout did not complete")
	}
	var p ota.RolloutProgress
	err := h.env.GetWorkflowResult(&p)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.HasDetails() {
		_ = appErr.Details(&p)
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) && canceled.HasDetails() {
		_ = canceled.Details(&p)
	}
	return p, err
}

func (h *fleetHarness) update(name string, args ...any) func() error {
	var result error
	done := false
	h.env.UpdateWorkflow(name, "", &testsuite.TestUpdateCallback{
		OnReject:   func(err error) { result, done = err, true },
		OnAccept:   func() {},
		OnComplete: func(_ any, err error) { result, done = err, true },
	}, args...)
	return func() error {
		if !done {
			return errors.New("update did not finish")
		}
		return result
	}
}

func TestRolloutWaves(t *testing.T) {
	h := newFleetHarness(t, 20)
	p, err := h.run(t, ota.RolloutInput{Request: rolloutRequest(ota.Wave{Count: 1}, ota.Wave{Percent: 50, Bake: ota.Duration(10 * time.Minute)}, ota.Wave{Percent: 100})})
	if err != nil {
		t.Fatal(err)
	}
	if p.State != ota.RolloutCompleted || p.Total != 20 || p.Counts.Succeeded != 20 || p.Counts.Started != 20 || p.CurrentWave != 3 {
		t.Fatalf("progress = %+v; want completed in wave 3 of 3", p)
	}
	for i, want := range []int{1, 9, 10} {
		if got := p.Waves[i].Counts.Succeeded; got != want || p.Waves[i].Target != want {
			t.Errorf("wave %d: %d succeeded of target %d, want %d", i+1, got, p.Waves[i].Target, want)
		}
	}
	// Waves are sequential: wave 2 starts after wave 1 ended, wave 3 after wave 2 and its bake.
	first := h.started["dev-001"]
	if w2 := h.started["dev-002"]; w2.Sub(first) < h.took {
		t.Errorf("wave 2 started %s after wave 1, before it ended", w2.Sub(first))
	}
	if w3 := h.started["dev-011"]; w3.Sub(h.started["dev-010"]) < h.took+10*time.Minute {
		t.Errorf("wave 3 started %s after wave 2, before it ended and baked", w3.Sub(h.started["dev-010"]))
	}
}

func TestRolloutUpToDateDevicesLeftOut(t *testing.T) {
	h := newFleetHarness(t, 10)
	h.dev.devices["dev-003"] = store.Device{ID: "dev-003", Reported: protocol.Status{"firmware_ver": "1.1"}}
	p, err := h.run(t, ota.RolloutInput{Request: rolloutRequest()})
	if err != nil || p.Total != 9 || p.Counts.Succeeded != 9 {
		t.Fatalf("progress = %+v, err %v", p, err)
	}
	if _, ok := h.started["dev-003"]; ok {
		t.Error("an up-to-date device was upgraded")
	}
}

func TestRolloutInFlightLimit(t *testing.T) {
	h := newFleetHarness(t, 12)
	req := rolloutRequest()
	req.MaxInFlight = 4
	if _, err := h.run(t, ota.RolloutInput{Request: req}); err != nil {
		t.Fatal(err)
	}
	// With 4 in flight and 1 minute each, devices start in 3 groups a minute apart.
	t0 := h.started["dev-001"]
	for i, id := range h.order {
		want := time.Duration(i/4) * h.took
		if got := h.started[id].Sub(t0); got < want || got > want+time.Second {
			t.Errorf("%s started at +%s, want +%s", id, got, want)
		}
	}
}

// TestRolloutRefillsInBatches: freed slots are refilled a tenth of MaxInFlight at a time
// (versionRefill), so that the children's events reach the rollout in bunches.
func TestRolloutRefillsInBatches(t *testing.T) {
	h := newFleetHarness(t, 30)
	h.tookBy = map[string]time.Duration{}
	for i := 1; i <= 20; i++ {
		h.tookBy[fmt.Sprintf("dev-%03d", i)] = time.Duration(i) * time.Second // one ends a second
	}
	req := rolloutRequest()
	req.MaxInFlight = 20 // refilled 2 at a time
	if _, err := h.run(t, ota.RolloutInput{Request: req}); err != nil {
		t.Fatal(err)
	}
	t0 := h.started["dev-001"]
	for i := 21; i <= 30; i++ {
		id := fmt.Sprintf("dev-%03d", i)
		// dev-021 and dev-022 start when the second upgrade ended (2 s), the next two at 4 s...
		want := time.Duration((i-21)/2*2+2) * time.Second
		if got := h.started[id].Sub(t0); got < want || got > want+100*time.Millisecond {
			t.Errorf("%s started at +%s, want +%s", id, got, want)
		}
	}
}

func TestRolloutRateLimit(t *testing.T) {
	h := newFleetHarness(t, 20)
	req := rolloutRequest()
	req.MaxPerMinute = 60
	if _, err := h.run(t, ota.RolloutInput{Request: req}); err != nil {
		t.Fatal(err)
	}
	// 60/min with a 5 s burst: 6 at once, then one a second.
	t0 := h.started[h.order[0]]
	last := h.started[h.order[len(h.order)-1]].Sub(t0)
	if last < 13*time.Second || last > 16*time.Second {
		t.Errorf("last of 20 devices started at +%s, want about 14 s at 60/min", last)
	}
	for i := 0; i+10 < len(h.order); i++ {
		if span := h.started[h.order[i+10]].Sub(h.started[h.order[i]]); span < 4*time.Second {
			t.Errorf("11 starts within %s: rate limit broken", span)
		}
	}
}

func TestRolloutRamp(t *testing.T) {
	h := newFleetHarness(t, 30)
	req := rolloutRequest()
	req.Ramp = &ota.Ramp{StartPerMinute: 6, Factor: 2, Step: ota.Duration(time.Minute)}
	req.MaxPerMinute = 48
	if _, err := h.run(t, ota.RolloutInput{Request: req}); err != nil {
		t.Fatal(err)
	}
	t0 := h.started[h.order[0]]
	inFirstMinute := 0
	for _, id := range h.order {
		if h.started[id].Sub(t0) < time.Minute {
			inFirstMinute++
		}
	}
	// 6/min with a 5 s burst allows at most 7 in the first minute.
	if inFirstMinute > 7 || inFirstMinute < 5 {
		t.Errorf("%d started in the first minute at 6/min", inFirstMinute)
	}
}

func TestRolloutFailureThresholdPausesThenResumes(t *testing.T) {
	h := newFleetHarness(t, 20)
	for _, id := range []string{"dev-002", "dev-003", "dev-004", "dev-005"} {
		h.fail[id] = ota.StateFailed
	}
	req := rolloutRequest()
	req.MaxInFlight = 5
	req.FailurePercent = 30
	req.FailureMinCount = 3
	var paused ota.RolloutProgress
	var resumed func() error
	h.env.RegisterDelayedCallback(func() {
		v, err := h.env.QueryWorkflow(ota.QueryProgress)
		if err == nil {
			_ = v.Get(&paused)
		}
		resumed = h.update(ota.UpdateResume)
	}, 10*time.Minute)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if paused.State != ota.RolloutPaused || paused.Counts.Started >= 20 || paused.Reason == "" {
		t.Fatalf("at 10 min: state %s, started %d, reason %q; want paused", paused.State, paused.Counts.Started, paused.Reason)
	}
	// Nothing starts while paused: every device started either as the first failures came
	// in (at +1 min) or after the resume (at +10 min).
	t0 := h.started["dev-001"]
	for id, at := range h.started {
		if d := at.Sub(t0); d > time.Minute+time.Second && d < 10*time.Minute {
			t.Errorf("%s started at +%s, during the pause", id, d)
		}
	}
	if err := resumed(); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if p.State != ota.RolloutCompleted || p.Counts.Succeeded != 16 || p.Counts.Failed != 4 {
		t.Fatalf("final %+v", p.Counts)
	}
}

func TestRolloutFailureThresholdAborts(t *testing.T) {
	h := newFleetHarness(t, 20)
	for _, id := range []string{"dev-001", "dev-002", "dev-003"} {
		h.fail[id] = ota.StateTimedOut
	}
	req := rolloutRequest()
	req.MaxInFlight = 5
	req.FailurePercent = 50
	req.FailureMinCount = 3
	req.FailureAction = ota.ActionAbort
	p, err := h.run(t, ota.RolloutInput{Request: req})
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || p.State != ota.RolloutAborted {
		t.Fatalf("state %s err %v, want aborted", p.State, err)
	}
	// The first batch of 5 ends together; the abort comes with the third timeout, so at most
	// a few devices start in between, and none after.
	if p.Counts.Started >= 10 || p.Counts.TimedOut != 3 || p.Counts.Succeeded != p.Counts.Started-3 {
		t.Fatalf("counts %+v: want the rollout stopped within the second batch", p.Counts)
	}
	for id, at := range h.started {
		if d := at.Sub(h.started["dev-001"]); d > time.Minute+time.Second {
			t.Errorf("%s started at +%s, after the abort", id, d)
		}
	}
}

func TestRolloutWaveSuccessThreshold(t *testing.T) {
	h := newFleetHarness(t, 10)
	h.fail["dev-002"] = ota.StateFailed
	req := rolloutRequest(ota.Wave{Count: 2, SuccessThreshold: 100}, ota.Wave{Percent: 100})
	var mid ota.RolloutProgress
	var resumed func() error
	h.env.RegisterDelayedCallback(func() {
		if v, err := h.env.QueryWorkflow(ota.QueryProgress); err == nil {
			_ = v.Get(&mid)
		}
		resumed = h.update(ota.UpdateResume)
	}, time.Hour)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if mid.State != ota.RolloutPaused || mid.CurrentWave != 1 || mid.Counts.Started != 2 {
		t.Fatalf("at 1 h: %s in wave %d with %d started; want paused after wave 1", mid.State, mid.CurrentWave, mid.Counts.Started)
	}
	if err := resumed(); err != nil {
		t.Fatal(err)
	}
	if p.State != ota.RolloutCompleted || p.Counts.Succeeded != 9 {
		t.Fatalf("final %+v", p)
	}
}

func TestRolloutApproval(t *testing.T) {
	h := newFleetHarness(t, 10)
	req := rolloutRequest(ota.Wave{Count: 2}, ota.Wave{Percent: 100, Approve: true})
	var early, approved func() error
	var waiting ota.RolloutProgress
	h.env.RegisterDelayedCallback(func() {
		early = h.update(ota.UpdateApprove, 3) // wrong wave: rejected
		if v, err := h.env.QueryWorkflow(ota.QueryProgress); err == nil {
			_ = v.Get(&waiting)
		}
		approved = h.update(ota.UpdateApprove, 2)
	}, 3*time.Hour)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if waiting.State != ota.RolloutWaitingApproval || waiting.CurrentWave != 2 {
		t.Fatalf("at 3 h: %s wave %d, want waiting_approval for wave 2", waiting.State, waiting.CurrentWave)
	}
	if early() == nil {
		t.Error("approving the wrong wave was accepted")
	}
	if err := approved(); err != nil {
		t.Fatalf("approve: %v", err)
	}
	if got := h.started["dev-003"].Sub(h.started["dev-001"]); got < 3*time.Hour {
		t.Errorf("wave 2 started %s after wave 1, before approval", got)
	}
	if p.Counts.Succeeded != 10 {
		t.Fatalf("final %+v", p.Counts)
	}
}

func TestRolloutMaintenanceWindow(t *testing.T) {
	h := newFleetHarness(t, 3)
	h.env.SetStartTime(time.Date(2026, 11, 26, 23, 30, 0, 0, time.UTC)) // 00:30 in Berlin
	req := rolloutRequest()
	req.Window = &ota.Window{Start: "01:00", End: "05:00", TimeZone: "Europe/Berlin"}
	if _, err := h.run(t, ota.RolloutInput{Request: req}); err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC) // 01:00 in Berlin
	for id, at := range h.started {
		if at.Before(want) || at.After(want.Add(time.Second)) {
			t.Errorf("%s started at %s, want at the window's opening %s", id, at.UTC(), want)
		}
	}
}

func TestRolloutCancel(t *testing.T) {
	for _, cancelRunning := range []bool{false, true} {
		t.Run(fmt.Sprintf("cancel running %v", cancelRunning), func(t *testing.T) {
			h := newFleetHarness(t, 10)
			req := rolloutRequest()
			req.MaxInFlight = 3
			var canceled func() error
			h.env.RegisterDelayedCallback(func() {
				canceled = h.update(ota.UpdateCancel, ota.CancelRequest{CancelRunning: cancelRunning})
			}, 30*time.Second)
			p, err := h.run(t, ota.RolloutInput{Request: req})
			if err != nil {
				t.Fatal(err)
			}
			if err := canceled(); err != nil {
				t.Fatal(err)
			}
			if p.State != ota.RolloutCanceled || p.Counts.Started != 3 {
				t.Fatalf("state %s started %d, want canceled with 3 started", p.State, p.Counts.Started)
			}
			wantCanceled := 0
			if cancelRunning {
				wantCanceled = 3
			}
			if p.Counts.Canceled != wantCanceled || p.Counts.Succeeded != 3-wantCanceled {
				t.Fatalf("counts %+v, want %d canceled", p.Counts, wantCanceled)
			}
		})
	}
}

func TestRolloutContinuesAsNew(t *testing.T) {
	req := rolloutRequest(ota.Wave{Count: 3}, ota.Wave{Percent: 100})
	req.ContinueAfter = 4
	req.MaxInFlight = 2
	in := ota.RolloutInput{Request: req}
	var runs int
	seen := map[string]bool{}
	handed := map[string]bool{} // workflow IDs handed over by the last run
	for runs = 1; runs < 10; runs++ {
		h := newFleetHarness(t, 11)
		for id := range seen { // the fake inventory reports upgraded devices as on target
			h.dev.devices[id] = store.Device{ID: id, Reported: protocol.Status{"firmware_ver": "1.1"}}
		}
		p, err := h.run(t, in)
		for _, id := range h.order {
			if seen[id] {
				t.Fatalf("run %d upgraded %s again", runs, id)
			}
			seen[id] = true
		}
		// Devices handed over by the previous run are followed to their end, not started again.
		for _, wid := range h.followed {
			if !handed[wid] {
				t.Fatalf("run %d followed %s, which was not handed over", runs, wid)
			}
			delete(handed, wid)
		}
		if len(handed) > 0 {
			t.Fatalf("run %d did not follow %v", runs, handed)
		}
		var can *workflow.ContinueAsNewError
		if errors.As(err, &can) {
			if len(h.order) > req.ContinueAfter+req.MaxInFlight {
				t.Fatalf("run %d started %d devices, more than continue-after %d", runs, len(h.order), req.ContinueAfter)
			}
			in = ota.RolloutInput{}
			if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &in); err != nil {
				t.Fatal(err)
			}
			// The run continued as new without waiting for its running upgrades.
			if len(in.Carry.Handed) == 0 {
				t.Fatalf("run %d continued as new with no upgrade running; want the running ones handed over", runs)
			}
			for _, hu := range in.Carry.Handed {
				if !seen[hu.Device] || hu.RunID == "" {
					t.Fatalf("run %d handed over %+v, which it did not start", runs, hu)
				}
				handed[ota.DeviceWorkflowID(hu.Device)] = true
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.State != ota.RolloutCompleted || p.Counts.Succeeded != 11 || p.Runs != runs || p.Waves[0].Counts.Succeeded != 3 {
			t.Fatalf("final after %d runs: %+v", runs, p)
		}
		break
	}
	if runs < 3 || len(seen) != 11 {
		t.Fatalf("%d runs upgraded %d devices; want several runs and all 11", runs, len(seen))
	}
}

func TestRolloutInvalidRequest(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*ota.RolloutRequest)
	}{
		{"no targets", func(r *ota.RolloutRequest) { r.Targets = ota.Targets{} }},
		{"bad name", func(r *ota.RolloutRequest) { r.Name = "a b" }},
		{"decreasing waves", func(r *ota.RolloutRequest) { r.Waves = []ota.Wave{{Percent: 50}, {Percent: 10}} }},
		{"too many in flight", func(r *ota.RolloutRequest) { r.MaxInFlight = 5000 }},
		{"bad action", func(r *ota.RolloutRequest) { r.FailureAction = "explode" }},
		{"bad window", func(r *ota.RolloutRequest) { r.Window = &ota.Window{Start: "25:00", End: "01:00"} }},
		{"bad zone", func(r *ota.RolloutRequest) {
			r.Window = &ota.Window{Start: "01:00", End: "02:00", TimeZone: "Mars/Base"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := rolloutRequest()
			tt.mod(&req)
			if err := req.WithDefaults().Validate(); err == nil {
				t.Fatal("invalid request accepted")
			}
		})
	}
}

func TestParseWaves(t *testing.T) {
	tests := []struct {
		in      string
		want    []ota.Wave
		wantErr bool
	}{
		{in: "1%,10%,50%,100%", want: []ota.Wave{{Percent: 1}, {Percent: 10}, {Percent: 50}, {Percent: 100}}},
		{in: "5,50%:95,100%", want: []ota.Wave{{Count: 5}, {Percent: 50, SuccessThreshold: 95}, {Percent: 100}}},
		{in: "0%", wantErr: true},
		{in: "150%", wantErr: true},
		{in: "ten", wantErr: true},
		{in: "10%:101", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ota.ParseWaves(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && fmt.Sprint(got) != fmt.Sprint(tt.want)) {
			t.Errorf("ParseWaves(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestRolloutPreflightReasonIsPlain: a rollout whose pre-flight fails says why in the
// activity's words, in its reason and its failure, without the SDK's wrapping
// ("activity error (type: CheckPackage, scheduledEventID: ...)").
func TestRolloutPreflightReasonIsPlain(t *testing.T) {
	const mismatch = "package http://files.local/fw-1.1.bin is 10 bytes with md5 0123, but the rollout says 1024 bytes with md5 9e10"
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"mismatch", temporal.NewNonRetryableApplicationError(mismatch, ota.ErrTypePackageMismatch, errors.New("package mismatch")),
			"pre-flight check failed, no device was touched: " + mismatch},
		{"unreachable after retries", errors.New("fetch package http://files.local/fw-1.1.bin: connection refused"),
			"pre-flight check failed, no device was touched: fetch package http://files.local/fw-1.1.bin: connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFleetHarness(t, 3)
			var a *activities.Activities
			h.env.OnActivity(a.CheckPackage, mock.Anything, mock.Anything).Return(tt.err)
			req := rolloutRequest()
			req.SkipPreflight = false
			p, err := h.run(t, ota.RolloutInput{Request: req})
			var appErr *temporal.ApplicationError
			if p.State != ota.RolloutFailed || !errors.As(err, &appErr) {
				t.Fatalf("rollout ended %s (%v), want failed", p.State, err)
			}
			if p.Reason != tt.want {
				t.Errorf("reason = %q\nwant     %q", p.Reason, tt.want)
			}
			if appErr.Message() != tt.want {
				t.Errorf("failure message = %q\nwant              %q", appErr.Message(), tt.want)
			}
			if len(h.order) != 0 {
				t.Errorf("devices were upgraded after a failed pre-flight: %v", h.order)
			}
		})
	}
}

// TestRolloutUpgradesRecordItsFirstRun: every device upgrade a rollout starts records the
// rollout's first run ID, in every run of it, so that its records are told from those of
// other rollouts of the name; a run continued from one that started before that change
// (no FirstRunID carried) goes on recording none.
func TestRolloutUpgradesRecordItsFirstRun(t *testing.T) {
	req := rolloutRequest()
	req.ContinueAfter = 2
	req.MaxInFlight = 1
	h := newFleetHarness(t, 4)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	var can *workflow.ContinueAsNewError
	if !errors.As(err, &can) {
		t.Fatalf("first run ended %s (%v), want it continued as new", p.State, err)
	}
	var in ota.RolloutInput
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &in); err != nil {
		t.Fatal(err)
	}
	first := in.Carry.Progress.FirstRunID
	if first == "" || len(h.order) != 2 {
		t.Fatalf("the first run started %v and carries first run ID %q; want 2 devices and an ID", h.order, first)
	}
	for _, d := range h.order {
		if h.rolloutRuns[d] != first {
			t.Errorf("first run: %s's upgrade records rollout run %q, want %q", d, h.rolloutRuns[d], first)
		}
	}

	for _, tc := range []struct {
		name, carried string
	}{
		{"continued", "the-first-run"},
		{"continued from a rollout before the change", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFleetHarness(t, 4)
			for _, d := range []string{"dev-001", "dev-002"} { // upgraded by the first run
				h.dev.devices[d] = store.Device{ID: d, Reported: protocol.Status{"firmware_ver": "1.1"}}
			}
			next := in
			next.Request.ContinueAfter = 10 // this run ends the rollout
			carry := *in.Carry
			carry.Progress.FirstRunID = tc.carried
			next.Carry = &carry
			p, err := h.run(t, next)
			if err != nil || p.State != ota.RolloutCompleted || p.FirstRunID != tc.carried {
				t.Fatalf("second run ended %s (%v) with first run ID %q, want completed with %q", p.State, err, p.FirstRunID, tc.carried)
			}
			if len(h.order) != 2 {
				t.Fatalf("second run started %v, want the other 2 devices", h.order)
			}
			for _, d := range h.order {
				if h.rolloutRuns[d] != tc.carried {
					t.Errorf("%s's upgrade records rollout run %q, want %q", d, h.rolloutRuns[d], tc.carried)
				}
			}
		})
	}
}

// TestRolloutMatchingNoDevice: a rollout whose targets match no device completes, and its
// reason says that it matched none.
func TestRolloutMatchingNoDevice(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upToDate bool
		want     string
	}{
		{"default", false, "matched no device: no registered, enabled device matches the targets and does not already report firmware_ver=1.1"},
		{"include up to date", true, "matched no device: no registered, enabled device matches the targets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFleetHarness(t, 3)
			req := rolloutRequest(ota.Wave{Count: 1}, ota.Wave{Percent: 100})
			req.Targets = ota.Targets{Prefix: "nobody-", IncludeUpToDate: tc.upToDate}
			p, err := h.run(t, ota.RolloutInput{Request: req})
			if err != nil || p.State != ota.RolloutCompleted || p.Total != 0 || p.Reason != tc.want {
				t.Fatalf("rollout ended %s (%v), %d targets, reason %q; want completed, 0, %q", p.State, err, p.Total, p.Reason, tc.want)
			}
			if p.FirstRunID != "" {
				t.Errorf("a rollout that started no device settled its records' run ID %q (a marker for nothing)", p.FirstRunID)
			}
		})
	}
}
