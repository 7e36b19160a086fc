package workflows

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// pumps gives every device of the harness the label model=pump.
func (h *fleetHarness) pumps() {
	for id, d := range h.dev.devices {
		d.Labels = map[string]string{"model": "pump"}
		h.dev.devices[id] = d
	}
}

func pumpRequest(waves ...ota.Wave) ota.RolloutRequest {
	req := rolloutRequest(waves...)
	req.Upgrade.Compat = &ota.Compatibility{Labels: map[string]string{"model": "pump"}, Versions: ">=1.0,<1.1"}
	return req
}

// TestRolloutLeavesOutByJudgement: the devices that are disabled, never seen, up to date,
// incompatible or quarantined are never started, and counted by reason.
func TestRolloutLeavesOutByJudgement(t *testing.T) {
	h := newFleetHarness(t, 10)
	h.pumps()
	h.dev.devices["dev-002"] = store.Device{ID: "dev-002", Labels: map[string]string{"model": "valve"}, Reported: protocol.Status{"firmware_ver": "1.0"}}
	h.dev.devices["dev-003"] = store.Device{ID: "dev-003", Labels: map[string]string{"model": "pump"}, Reported: protocol.Status{"firmware_ver": "0.9"}}
	h.dev.quarantined = map[string]bool{"dev-004": true}
	h.dev.devices["dev-005"] = store.Device{ID: "dev-005", Labels: map[string]string{"model": "pump"}} // never seen
	h.dev.devices["dev-006"] = store.Device{ID: "dev-006", Disabled: true, Reported: protocol.Status{"firmware_ver": "1.0"}}
	h.dev.devices["dev-007"] = store.Device{ID: "dev-007", Labels: map[string]string{"model": "pump"}, Reported: protocol.Status{"firmware_ver": "1.1"}}
	p, err := h.run(t, ota.RolloutInput{Request: pumpRequest(ota.Wave{Count: 1}, ota.Wave{Percent: 100})})
	if err != nil {
		t.Fatal(err)
	}
	wantLeft := ota.LeftOut{UpToDate: 1, Incompatible: 2, Quarantined: 1, Disabled: 1, NeverSeen: 1}
	if p.Total != 4 || p.Counts.Succeeded != 4 || p.LeftOut != wantLeft || p.Counts.Incompatible != 2 || p.Counts.Quarantined != 1 {
		t.Fatalf("total %d, counts %+v, left out %+v; want 4 upgraded, left out %+v", p.Total, p.Counts, p.LeftOut, wantLeft)
	}
	if got, want := p.Waves[1].Target, 3; got != want {
		t.Errorf("wave 2 target %d, want %d", got, want)
	}
	for _, id := range []string{"dev-002", "dev-003", "dev-004", "dev-005", "dev-006", "dev-007"} {
		if _, ok := h.started[id]; ok {
			t.Errorf("%s was left out, but its upgrade started", id)
		}
	}
	// Left-out devices are no failures: a failure threshold does not see them.
	if p.Counts.Failures() != 0 || p.Counts.Finished() != 4 {
		t.Errorf("failures %d, finished %d; left-out devices counted as upgrades", p.Counts.Failures(), p.Counts.Finished())
	}
}

// TestRolloutRevertedIsAFailure: a device that went back to its old version within the soak
// counts reverted, a failure for the failure threshold and for a wave's success threshold.
func TestRolloutRevertedIsAFailure(t *testing.T) {
	tests := []struct {
		name       string
		req        func() ota.RolloutRequest
		wantState  ota.RolloutState
		wantReason string
	}{
		{"failure threshold", func() ota.RolloutRequest {
			req := rolloutRequest()
			req.MaxInFlight, req.FailurePercent, req.FailureMinCount, req.FailureAction = 3, 50, 2, ota.ActionAbort
			return req
			// The third device in flight succeeds at the same time as the two revert: the
			// threshold trips with 2 of 2 or 2 of 3 finished, as the test environment orders them.
		}, ota.RolloutAborted, "failure threshold reached in wave 1: 2 of "},
		{"wave success threshold", func() ota.RolloutRequest {
			req := rolloutRequest(ota.Wave{Count: 3, SuccessThreshold: 100}, ota.Wave{Percent: 100})
			req.FailureAction = ota.ActionAbort
			return req
		}, ota.RolloutAborted, "wave 1: 33.3% succeeded, below its 100.0% threshold"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFleetHarness(t, 10)
			h.fail["dev-001"], h.fail["dev-002"] = ota.StateReverted, ota.StateReverted
			p, err := h.run(t, ota.RolloutInput{Request: tt.req()})
			if err == nil || p.State != tt.wantState || !strings.Contains(p.Reason, tt.wantReason) {
				t.Fatalf("%s (%q), err %v; want %s: %q", p.State, p.Reason, err, tt.wantState, tt.wantReason)
			}
			if p.Counts.Reverted != 2 || p.Counts.Failed != 0 || p.Waves[0].Counts.Reverted != 2 {
				t.Errorf("counts %+v; want 2 reverted", p.Counts)
			}
		})
	}
}

// TestRolloutSoak: the soak time reaches every device upgrade, and while a wave waits for
// its last upgrades, the rollout says they may be soaking.
func TestRolloutSoak(t *testing.T) {
	h := newFleetHarness(t, 4)
	h.took = 20 * time.Minute // install and soak
	req := rolloutRequest(ota.Wave{Count: 2}, ota.Wave{Percent: 100})
	req.Upgrade.Soak = ota.Duration(15 * time.Minute)
	var during ota.RolloutProgress
	h.env.RegisterDelayedCallback(func() {
		v, err := h.env.QueryWorkflow(ota.QueryProgress)
		if err == nil {
			_ = v.Get(&during)
		}
	}, 10*time.Minute)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil || p.Counts.Succeeded != 4 || p.Soak != req.Upgrade.Soak {
		t.Fatalf("progress %+v, err %v", p, err)
	}
	if len(h.requests) != 4 {
		t.Fatalf("%d upgrades started, want 4", len(h.requests))
	}
	for _, r := range h.requests {
		if r.Soak != req.Upgrade.Soak {
			t.Errorf("%s's upgrade has soak %s, want %s", r.DeviceID, r.Soak, req.Upgrade.Soak)
		}
	}
	if want := "2 upgrade(s) still running; a device counts once it has held the version for the 15m0s soak"; !strings.Contains(during.Reason, want) {
		t.Errorf("at 10 min the reason is %q, want it to say %q", during.Reason, want)
	}
	// Wave 2 waited for wave 1's soak: it started after the upgrades ended.
	if w2 := h.started["dev-003"].Sub(h.started["dev-001"]); w2 < h.took {
		t.Errorf("wave 2 started %s after wave 1, before its upgrades (soak included) ended", w2)
	}
}

// mockFind replaces FindLateTargets: the fake store's FindLate, answered after wait (the
// real activity waits for changes; here virtual time passes instead).
func (h *fleetHarness) mockFind(wait time.Duration) {
	var a *activities.Activities
	h.env.OnActivity(a.FindLateTargets, mock.Anything, mock.Anything).After(wait).Return(
		func(ctx context.Context, in ota.FindLateInput) (ota.LateTargets, error) {
			return h.dev.FindLate(ctx, store.LateSearch{Rollout: in.Rollout, Since: in.Since, LeftOutKey: in.LeftOutKey,
				Selector: in.Selector, Cursor: in.Cursor, Limit: in.Limit})
		})
}

func (h *fleetHarness) progress() ota.RolloutProgress {
	var p ota.RolloutProgress
	if v, err := h.env.QueryWorkflow(ota.QueryProgress); err == nil {
		_ = v.Get(&p)
	}
	return p
}

// TestContinuousRollout: after its waves, a continuous rollout upgrades the devices that come
// to match (a new device once it reports, a device seen again after its upgrade timed out),
// once each, leaves out incompatible ones, refuses a second close and completes when closed.
func TestContinuousRollout(t *testing.T) {
	h := newFleetHarness(t, 3)
	h.pumps()
	h.fail["dev-003"] = ota.StateTimedOut
	h.mockFind(time.Minute)
	req := pumpRequest()
	req.Continuous = true
	pump := map[string]string{"model": "pump"}
	on := func(v string) protocol.Status { return protocol.Status{"firmware_ver": v} }
	var watching ota.RolloutProgress
	var closed, closedAgain func() error
	at := func(d time.Duration, f func()) { h.env.RegisterDelayedCallback(f, d) }
	at(5*time.Minute, func() {
		watching = h.progress()
		h.dev.change(store.Device{ID: "dev-100", Labels: pump}) // registered, never seen
	})
	at(8*time.Minute, func() { h.dev.change(store.Device{ID: "dev-100", Labels: pump, Reported: on("1.0")}) })
	at(9*time.Minute, func() {
		h.dev.change(store.Device{ID: "dev-101", Labels: map[string]string{"model": "valve"}, Reported: on("1.0")})
	})
	at(10*time.Minute, func() { h.dev.change(store.Device{ID: "dev-001", Labels: pump, Reported: on("1.0")}) }) // taken already
	at(12*time.Minute, func() {
		// dev-003's upgrade timed out; it is seen again, now healthy.
		h.mu.Lock()
		delete(h.fail, "dev-003")
		h.mu.Unlock()
		h.dev.mu.Lock()
		delete(h.dev.taken, "dev-003")
		h.dev.mu.Unlock()
		h.dev.change(store.Device{ID: "dev-003", Labels: pump, Reported: on("1.0")})
	})
	at(30*time.Minute, func() { closed = h.update(ota.UpdateClose, "test over") })
	at(30*time.Minute, func() { closedAgain = h.update(ota.UpdateClose, "again") })
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if closed == nil || closedAgain == nil {
		t.Fatalf("the rollout ended %s (%q) before it was closed; late %+v", p.State, p.Reason, p.Late)
	}
	if watching.State != ota.RolloutWatching {
		t.Errorf("at 5 min the rollout is %s (%q), want watching", watching.State, watching.Reason)
	}
	if err := closed(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := closedAgain(); err == nil {
		t.Error("a second close was accepted")
	}
	if p.State != ota.RolloutCompleted || !strings.Contains(p.Reason, "closed by operator: test over") {
		t.Errorf("final %s (%q), want completed, closed", p.State, p.Reason)
	}
	if p.Late == nil || p.Late.Started != 2 || p.Late.Succeeded != 2 || p.Counts.Incompatible != 1 {
		t.Fatalf("late %+v, counts %+v; want dev-100 and dev-003 upgraded late, dev-101 incompatible", p.Late, p.Counts)
	}
	n := map[string]int{}
	for _, id := range h.order {
		n[id]++
	}
	if n["dev-100"] != 1 || n["dev-001"] != 1 || n["dev-003"] != 2 || n["dev-101"] != 0 {
		t.Errorf("upgrades started per device %v; want dev-001 once, dev-003 twice (timed out, then seen again), dev-100 once, dev-101 never", n)
	}
	if started := h.started["dev-100"]; started.Sub(h.started["dev-001"]) < 8*time.Minute {
		t.Errorf("dev-100 started %s after the rollout, before it ever reported", started.Sub(h.started["dev-001"]))
	}
}

// TestRolloutCloseOfStaticRolloutRefused: only a continuous rollout can be closed.
func TestRolloutCloseOfStaticRolloutRefused(t *testing.T) {
	h := newFleetHarness(t, 3)
	var closed func() error
	h.env.RegisterDelayedCallback(func() { closed = h.update(ota.UpdateClose, "") }, 30*time.Second)
	p, err := h.run(t, ota.RolloutInput{Request: rolloutRequest()})
	if err != nil || p.State != ota.RolloutCompleted {
		t.Fatalf("%s, err %v", p.State, err)
	}
	if err := closed(); err == nil || !strings.Contains(err.Error(), "not continuous") {
		t.Errorf("close of a static rollout: %v, want refused as not continuous", err)
	}
}

// TestContinuousRolloutCarryStaysBounded: a continuous rollout over many late devices
// continues as new, and what it carries does not grow with the devices it upgraded.
func TestContinuousRolloutCarryStaysBounded(t *testing.T) {
	req := rolloutRequest()
	req.Continuous = true
	req.ContinueAfter = 10
	req.MaxInFlight = 4
	req.PageSize = 5
	in := ota.RolloutInput{Request: req}
	const late = 60
	var sizes []int
	upgraded := map[string]int{}
	for run := 1; ; run++ {
		if run > 20 {
			t.Fatal("too many runs")
		}
		h := newFleetHarness(t, 2)
		h.mockFind(time.Minute)
		// The late devices register after the pre-flight; later runs see the registry as
		// they left it, in the same order of changes.
		register := func() {
			for i := 0; i < late; i++ {
				id := fmt.Sprintf("dev-late-%02d", i)
				d := store.Device{ID: id, Reported: protocol.Status{"firmware_ver": "1.0"}}
				if upgraded[id] > 0 {
					d.Reported = protocol.Status{"firmware_ver": "1.1"}
				}
				h.dev.change(d)
			}
		}
		if run == 1 {
			h.env.RegisterDelayedCallback(register, 5*time.Minute)
		} else {
			register()
		}
		h.dev.taken = map[string]bool{}
		for id := range upgraded {
			h.dev.taken[id] = true
		}
		if len(upgraded) == late+2 {
			h.env.RegisterDelayedCallback(func() { _ = h.update(ota.UpdateClose, "done") }, 10*time.Minute)
		}
		p, err := h.run(t, in)
		for _, id := range h.order {
			upgraded[id]++
		}
		var can *workflow.ContinueAsNewError
		if !errors.As(err, &can) {
			if err != nil || p.State != ota.RolloutCompleted {
				t.Fatalf("run %d ended %s, err %v", run, p.State, err)
			}
			break
		}
		in = ota.RolloutInput{}
		if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &in); err != nil {
			t.Fatal(err)
		}
		t.Logf("run %d: started %v, carry watching %v buffer %v handed %d changes %+v", run, h.order, in.Carry.Watching, in.Carry.Buffer, len(in.Carry.Handed), in.Carry.Changes)
		if !in.Carry.Watching && run > 1 {
			t.Fatalf("run %d continued before watching", run)
		}
		if len(in.Carry.Buffer) > req.PageSize || len(in.Carry.Handed) > req.MaxInFlight {
			t.Fatalf("run %d carries %d found devices and %d running; want at most %d and %d",
				run, len(in.Carry.Buffer), len(in.Carry.Handed), req.PageSize, req.MaxInFlight)
		}
		b, _ := converter.GetDefaultDataConverter().ToPayloads(in)
		sizes = append(sizes, len(b.GetPayloads()[0].GetData()))
	}
	for id, n := range upgraded {
		if n != 1 {
			t.Errorf("%s upgraded %d times", id, n)
		}
	}
	if len(upgraded) != late+2 {
		t.Errorf("%d devices upgraded, want %d", len(upgraded), late+2)
	}
	if len(sizes) < 3 {
		t.Fatalf("%d runs; want the rollout to continue as new several times", len(sizes))
	}
	// The carry's size stays within what a few IDs and counts take, whatever the device count.
	for _, n := range sizes {
		if n > sizes[0]+400 {
			t.Errorf("carry sizes %v grow with the devices upgraded", sizes)
			break
		}
	}
	t.Logf("carry sizes over %d runs: %v bytes", len(sizes), sizes)
}

// TestContinuousRolloutLimitsApplyToLateDevices: late devices start only inside the window,
// at the rate limit, with the soak, and their failures trip the failure threshold.
func TestContinuousRolloutLimitsApplyToLateDevices(t *testing.T) {
	h := newFleetHarness(t, 1)
	start := time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)
	h.env.SetStartTime(start)
	h.mockFind(time.Minute)
	req := rolloutRequest()
	req.Continuous = true
	req.Window = &ota.Window{Start: "01:00", End: "02:00", TimeZone: "UTC"}
	req.MaxPerMinute = 6 // one every 10 s, 5 s saved up
	req.Upgrade.Soak = ota.Duration(10 * time.Minute)
	req.FailurePercent, req.FailureMinCount = 25, 3
	late := func(from, n int) {
		for i := from; i < from+n; i++ {
			h.dev.change(store.Device{ID: fmt.Sprintf("dev-late-%02d", i), Reported: protocol.Status{"firmware_ver": "1.0"}})
		}
	}
	// Ten devices come at 02:30, when the window is closed; they start from 01:00 the next day.
	h.env.RegisterDelayedCallback(func() { late(0, 10) }, 90*time.Minute)
	// Then four that fail, while the window is open: the threshold pauses the rollout.
	for i := 10; i < 14; i++ {
		h.fail[fmt.Sprintf("dev-late-%02d", i)] = ota.StateFailed
	}
	h.env.RegisterDelayedCallback(func() { late(10, 4) }, 24*time.Hour+10*time.Minute)
	var paused ota.RolloutProgress
	h.env.RegisterDelayedCallback(func() {
		paused = h.progress()
		h.env.CancelWorkflow()
	}, 24*time.Hour+30*time.Minute)
	p, _ := h.run(t, ota.RolloutInput{Request: req})
	nextOpen := start.Add(24 * time.Hour)
	var firsts []time.Time
	for i := 0; i < 10; i++ {
		at, ok := h.started[fmt.Sprintf("dev-late-%02d", i)]
		if !ok {
			t.Fatalf("dev-late-%02d never started", i)
		}
		if at.Before(nextOpen) || at.After(nextOpen.Add(time.Hour)) {
			t.Errorf("dev-late-%02d started at %s, outside the window (next open %s)", i, at.UTC(), nextOpen)
		}
		firsts = append(firsts, at)
	}
	slices.SortFunc(firsts, func(a, b time.Time) int { return a.Compare(b) })
	if span := firsts[9].Sub(firsts[0]); span < 40*time.Second {
		t.Errorf("10 late devices started within %s; the 6/min limit allows at most 1 at once plus 5 s saved up", span)
	}
	for _, r := range h.requests {
		if r.Soak != req.Upgrade.Soak {
			t.Errorf("%s's upgrade has soak %s, want %s", r.DeviceID, r.Soak, req.Upgrade.Soak)
		}
	}
	// 4 of the 14 late devices failed: 28.6%, above 25%.
	if paused.State != ota.RolloutPaused || !strings.Contains(paused.Reason, "failure threshold reached among the late devices: 4 of 14") {
		t.Errorf("after the late failures: %s (%q), late %+v; want paused by the failure threshold", paused.State, paused.Reason, paused.Late)
	}
	if p.State != ota.RolloutCanceled {
		t.Errorf("final %s, want canceled", p.State)
	}
}

// TestContinuousRolloutClosedDuringWaves: closed before its waves are done, a continuous
// rollout completes after them, without looking for late devices.
func TestContinuousRolloutClosedDuringWaves(t *testing.T) {
	h := newFleetHarness(t, 3)
	h.mockFind(time.Minute)
	req := rolloutRequest(ota.Wave{Count: 1}, ota.Wave{Percent: 100})
	req.Continuous = true
	var closed func() error
	h.env.RegisterDelayedCallback(func() { closed = h.update(ota.UpdateClose, "") }, 30*time.Second)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil || p.State != ota.RolloutCompleted || p.Counts.Succeeded != 3 || p.Reason != "closed by operator" {
		t.Fatalf("%s (%q), %+v, err %v; want completed after both waves", p.State, p.Reason, p.Counts, err)
	}
	if err := closed(); err != nil {
		t.Errorf("close: %v", err)
	}
	if h.dev.finds != 0 || p.Late != nil {
		t.Errorf("%d searches for late devices, late %+v; want none", h.dev.finds, p.Late)
	}
}
