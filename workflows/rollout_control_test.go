package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// slowResolve makes every ResolveTargets call take d of virtual time.
func (h *fleetHarness) slowResolve(d time.Duration) {
	var a *activities.Activities
	h.env.OnActivity(a.ResolveTargets, mock.Anything, mock.Anything).After(d).Return(
		func(ctx context.Context, f ota.DeviceFilter) ([]string, error) {
			devices, err := h.dev.ListDevices(ctx, f)
			ids := make([]string, len(devices))
			for i, d := range devices {
				ids[i] = d.ID
			}
			return ids, err
		})
}

// query returns the rollout's progress now.
func (h *fleetHarness) query(t *testing.T) ota.RolloutProgress {
	t.Helper()
	var p ota.RolloutProgress
	v, err := h.env.QueryWorkflow(ota.QueryProgress)
	if err != nil {
		t.Errorf("query: %v", err)
		return p
	}
	if err := v.Get(&p); err != nil {
		t.Errorf("decode query: %v", err)
	}
	return p
}

// TestRolloutControlDuringTargetResolution: a pause, cancel, threshold trip, window close or
// Temporal cancel that comes while ResolveTargets runs stops the page it returns from
// starting (issue 15, defects 2 and 3). Pages of 5, up to 10 in flight, each resolution
// takes 30 s: the first page starts at 30 s, the second is resolved from 30 s to 60 s, and
// the event comes at 45 s.
func TestRolloutControlDuringTargetResolution(t *testing.T) {
	const at = 45 * time.Second
	tests := []struct {
		name  string
		took  time.Duration // how long each device upgrade takes
		setup func(h *fleetHarness, req *ota.RolloutRequest)
		event func(h *fleetHarness) func() error
		// check looks at the rollout at 10 minutes, when it may still wait (then the test
		// cancels it).
		check     func(t *testing.T, p ota.RolloutProgress)
		wantState ota.RolloutState
		wantErr   bool // the workflow fails or is canceled
		wantCanc  int  // upgrades counted canceled
	}{
		{
			name:  "pause",
			event: func(h *fleetHarness) func() error { return h.update(ota.UpdatePause, "test") },
			check: func(t *testing.T, p ota.RolloutProgress) {
				if p.State != ota.RolloutPaused || p.Counts.Started != 5 {
					t.Errorf("at 10 min: %s with %d started; want paused with 5", p.State, p.Counts.Started)
				}
			},
			wantState: ota.RolloutCanceled,
		},
		{
			name:      "cancel",
			event:     func(h *fleetHarness) func() error { return h.update(ota.UpdateCancel, ota.CancelRequest{}) },
			wantState: ota.RolloutCanceled,
		},
		{
			name: "cancel running",
			event: func(h *fleetHarness) func() error {
				return h.update(ota.UpdateCancel, ota.CancelRequest{CancelRunning: true})
			},
			wantState: ota.RolloutCanceled, wantCanc: 5,
		},
		{
			name: "threshold trip",
			took: 20 * time.Second, // the first page fails at 50 s, during the second resolution
			setup: func(h *fleetHarness, req *ota.RolloutRequest) {
				for i := 1; i <= 5; i++ {
					h.fail[fmt.Sprintf("dev-%03d", i)] = ota.StateFailed
				}
				req.FailurePercent, req.FailureMinCount = 50, 3
			},
			check: func(t *testing.T, p ota.RolloutProgress) {
				if p.State != ota.RolloutPaused || p.Counts.Started != 5 || !strings.Contains(p.Reason, "failure threshold") {
					t.Errorf("at 10 min: %s (%q) with %d started; want paused by the threshold with 5", p.State, p.Reason, p.Counts.Started)
				}
			},
			wantState: ota.RolloutCanceled,
		},
		{
			name: "window closes",
			setup: func(h *fleetHarness, req *ota.RolloutRequest) {
				// The window closes 45 s after the start.
				h.env.SetStartTime(time.Date(2026, 11, 27, 0, 59, 15, 0, time.UTC))
				req.Window = &ota.Window{Start: "00:00", End: "01:00", TimeZone: "UTC"}
			},
			check: func(t *testing.T, p ota.RolloutProgress) {
				want := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
				if p.State != ota.RolloutWaitingWindow || p.Counts.Started != 5 || p.NextWindowAt == nil || !p.NextWindowAt.Equal(want) ||
					!strings.Contains(p.Reason, "2026-11-28 00:00 UTC") {
					t.Errorf("at 10 min: %s (%q, next %v) with %d started; want waiting for the window of %s with 5",
						p.State, p.Reason, p.NextWindowAt, p.Counts.Started, want)
				}
			},
			wantState: ota.RolloutCanceled,
		},
		{
			name:      "Temporal cancel",
			event:     func(h *fleetHarness) func() error { h.env.CancelWorkflow(); return func() error { return nil } },
			wantState: ota.RolloutCanceled, wantErr: true, wantCanc: 5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFleetHarness(t, 20)
			if tt.took > 0 {
				h.took = tt.took
			}
			h.slowResolve(30 * time.Second)
			req := rolloutRequest()
			req.PageSize, req.MaxInFlight = 5, 10
			if tt.setup != nil {
				tt.setup(h, &req)
			}
			var eventDone func() error
			if tt.event != nil {
				h.env.RegisterDelayedCallback(func() { eventDone = tt.event(h) }, at)
			}
			var mid ota.RolloutProgress
			var cancelDone func() error
			h.env.RegisterDelayedCallback(func() {
				mid = h.query(t)
				if !mid.State.Final() && mid.State != ota.RolloutCanceling {
					cancelDone = h.update(ota.UpdateCancel, ota.CancelRequest{Reason: "end of test"})
				}
			}, 10*time.Minute)
			p, err := h.run(t, ota.RolloutInput{Request: req})
			if (err != nil) != tt.wantErr {
				t.Fatalf("rollout error %v, want error %v", err, tt.wantErr)
			}
			if eventDone != nil {
				if err := eventDone(); err != nil {
					t.Fatalf("event: %v", err)
				}
			}
			if cancelDone != nil {
				if err := cancelDone(); err != nil {
					t.Fatalf("cancel at the end: %v", err)
				}
			}
			if tt.check != nil {
				tt.check(t, mid)
			}
			if p.State != tt.wantState || p.Counts.Started != 5 || p.Counts.Canceled != tt.wantCanc {
				t.Fatalf("ended %s with counts %+v; want %s with 5 started, %d canceled", p.State, p.Counts, tt.wantState, tt.wantCanc)
			}
			if got := len(h.order); got != 5 {
				t.Errorf("%d devices started, want the first page of 5: %v", got, h.order)
			}
		})
	}
}

// TestRolloutPauseWhileWaitingForApproval: a rollout paused while a wave waits for approval
// goes on once resumed and approved, in either order (issue 15, defect 1).
func TestRolloutPauseWhileWaitingForApproval(t *testing.T) {
	for _, order := range [][]string{{ota.UpdatePause, ota.UpdateResume, ota.UpdateApprove}, {ota.UpdatePause, ota.UpdateApprove, ota.UpdateResume}} {
		t.Run(strings.Join(order, " "), func(t *testing.T) {
			h := newFleetHarness(t, 10)
			req := rolloutRequest(ota.Wave{Count: 2}, ota.Wave{Percent: 100, Approve: true})
			results := make([]func() error, len(order))
			states := make([]ota.RolloutProgress, len(order))
			for i, name := range order {
				h.env.RegisterDelayedCallback(func() {
					switch name {
					case ota.UpdatePause:
						results[i] = h.update(name, "test")
					case ota.UpdateApprove:
						results[i] = h.update(name, 0)
					default:
						results[i] = h.update(name)
					}
				}, 3*time.Hour+time.Duration(i)*time.Hour)
				h.env.RegisterDelayedCallback(func() { states[i] = h.query(t) }, 3*time.Hour+time.Duration(i)*time.Hour+time.Minute)
			}
			p, err := h.run(t, ota.RolloutInput{Request: req})
			if err != nil {
				t.Fatal(err)
			}
			for i, name := range order {
				if err := results[i](); err != nil {
					t.Errorf("%s: %v", name, err)
				}
			}
			if states[0].State != ota.RolloutPaused || !strings.Contains(states[0].Reason, "paused by operator") {
				t.Errorf("after pause: %s (%q), want paused", states[0].State, states[0].Reason)
			}
			if order[1] == ota.UpdateResume && (states[1].State != ota.RolloutWaitingApproval || !strings.Contains(states[1].Reason, "approval")) {
				t.Errorf("after resume: %s (%q), want waiting_approval again", states[1].State, states[1].Reason)
			}
			if p.State != ota.RolloutCompleted || p.Counts.Succeeded != 10 {
				t.Fatalf("ended %s with %+v; want completed with 10", p.State, p.Counts)
			}
			if got := h.started["dev-003"].Sub(h.started["dev-001"]); got < 5*time.Hour {
				t.Errorf("wave 2 started %s after wave 1, before it was resumed and approved", got)
			}
		})
	}
}

// TestRolloutCancelDuringPreflight: a Temporal cancel during the package check ends the
// rollout canceled at once, not failed after the check.
func TestRolloutCancelDuringPreflight(t *testing.T) {
	h := newFleetHarness(t, 5)
	var a *activities.Activities
	h.env.OnActivity(a.CheckPackage, mock.Anything, mock.Anything).After(time.Hour).Return(nil)
	req := rolloutRequest()
	req.SkipPreflight = false
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 10*time.Second)
	start := h.env.Now()
	p, err := h.run(t, ota.RolloutInput{Request: req})
	var canceled *temporal.CanceledError
	if !errors.As(err, &canceled) || p.State != ota.RolloutCanceled {
		t.Fatalf("ended %s, err %v; want canceled", p.State, err)
	}
	if took := h.env.Now().Sub(start); took > time.Minute {
		t.Errorf("the cancel took %s, waiting for the package check", took)
	}
	if len(h.order) != 0 {
		t.Errorf("devices started: %v", h.order)
	}
}

// TestRolloutCancelThenCancelRunning: a plain cancel can be followed by one that cancels the
// running upgrades too; the state shows canceling meanwhile.
func TestRolloutCancelThenCancelRunning(t *testing.T) {
	h := newFleetHarness(t, 10)
	h.took = 10 * time.Minute
	req := rolloutRequest()
	req.MaxInFlight = 4
	var first, second, third func() error
	var between ota.RolloutProgress
	h.env.RegisterDelayedCallback(func() { first = h.update(ota.UpdateCancel, ota.CancelRequest{Reason: "stop"}) }, time.Minute)
	h.env.RegisterDelayedCallback(func() {
		between = h.query(t)
		second = h.update(ota.UpdateCancel, ota.CancelRequest{CancelRunning: true})
		third = h.update(ota.UpdateCancel, ota.CancelRequest{CancelRunning: true})
	}, 2*time.Minute)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if err := first(); err != nil {
		t.Fatal(err)
	}
	if err := second(); err != nil {
		t.Fatalf("cancel --cancel-running after cancel: %v", err)
	}
	if third() == nil {
		t.Error("a third cancel was accepted")
	}
	if between.State != ota.RolloutCanceling || !strings.Contains(between.Reason, "stop") {
		t.Errorf("after the cancel: %s (%q), want canceling", between.State, between.Reason)
	}
	if p.State != ota.RolloutCanceled || p.Counts.Started != 4 || p.Counts.Canceled != 4 {
		t.Fatalf("ended %s with %+v; want canceled with the 4 running canceled", p.State, p.Counts)
	}
	if d := h.env.Now().Sub(h.started["dev-001"]); d > 3*time.Minute {
		t.Errorf("ended %s after the start; the running upgrades were not canceled", d)
	}
}

// TestRolloutResumeDuringBake: a pause and resume during a bake shows baking again, with its
// reason, and the bake keeps its length.
func TestRolloutResumeDuringBake(t *testing.T) {
	h := newFleetHarness(t, 4)
	req := rolloutRequest(ota.Wave{Count: 2, Bake: ota.Duration(time.Hour)}, ota.Wave{Percent: 100})
	var paused, resumed func() error
	var after ota.RolloutProgress
	h.env.RegisterDelayedCallback(func() { paused = h.update(ota.UpdatePause, "look") }, 10*time.Minute)
	h.env.RegisterDelayedCallback(func() { resumed = h.update(ota.UpdateResume) }, 20*time.Minute)
	h.env.RegisterDelayedCallback(func() { after = h.query(t) }, 21*time.Minute)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if err := paused(); err != nil {
		t.Fatal(err)
	}
	if err := resumed(); err != nil {
		t.Fatal(err)
	}
	if after.State != ota.RolloutBaking || !strings.Contains(after.Reason, "baking wave 1") {
		t.Errorf("after the resume: %s (%q), want baking", after.State, after.Reason)
	}
	if p.State != ota.RolloutCompleted || p.Counts.Succeeded != 4 {
		t.Fatalf("ended %s with %+v", p.State, p.Counts)
	}
	if got := h.started["dev-003"].Sub(h.started["dev-001"]); got < time.Hour+h.took {
		t.Errorf("wave 2 started %s after wave 1, before the bake ended", got)
	}
}

// TestNextWindowOpenOnDaylightSavingDays: a window opens at its wall-clock time on the days
// the clocks change, in both directions and in two zones (issue 15, defect 6).
func TestNextWindowOpenOnDaylightSavingDays(t *testing.T) {
	tests := []struct {
		name       string
		window     ota.Window
		now        time.Time // UTC
		wantOpenAt time.Time // UTC
	}{
		{"Berlin, clocks back (03:00 CET)", ota.Window{Start: "03:00", End: "05:00", TimeZone: "Europe/Berlin"},
			time.Date(2026, 10, 24, 22, 0, 0, 0, time.UTC), time.Date(2026, 10, 25, 2, 0, 0, 0, time.UTC)},
		{"Berlin, clocks forward (03:00 CEST)", ota.Window{Start: "03:00", End: "05:00", TimeZone: "Europe/Berlin"},
			time.Date(2027, 3, 27, 22, 0, 0, 0, time.UTC), time.Date(2027, 3, 28, 1, 0, 0, 0, time.UTC)},
		{"Berlin, the day after clocks back (03:00 CET)", ota.Window{Start: "03:00", End: "05:00", TimeZone: "Europe/Berlin"},
			time.Date(2026, 10, 25, 4, 0, 0, 0, time.UTC), time.Date(2026, 10, 26, 2, 0, 0, 0, time.UTC)},
		{"New York, clocks back (01:30 EST, after the first 01:30)", ota.Window{Start: "03:00", End: "04:00", TimeZone: "America/New_York"},
			time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC), time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)},
		{"New York, clocks forward (03:00 EDT)", ota.Window{Start: "03:00", End: "04:00", TimeZone: "America/New_York"},
			time.Date(2027, 3, 14, 4, 0, 0, 0, time.UTC), time.Date(2027, 3, 14, 7, 0, 0, 0, time.UTC)},
		{"New York, a start the clocks skip opens at the change", ota.Window{Start: "02:30", End: "04:00", TimeZone: "America/New_York"},
			time.Date(2027, 3, 14, 4, 0, 0, 0, time.UTC), time.Date(2027, 3, 14, 7, 0, 0, 0, time.UTC)},
		{"overnight window", ota.Window{Start: "22:00", End: "02:00", TimeZone: "Europe/Berlin"},
			time.Date(2026, 10, 25, 12, 0, 0, 0, time.UTC), time.Date(2026, 10, 25, 21, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &rollout{req: ota.RolloutRequest{Window: &tt.window}}
			got := r.nextWindowOpen(tt.now)
			if !got.Equal(tt.wantOpenAt) {
				loc, _ := ota.LoadZone(tt.window.TimeZone)
				t.Fatalf("opens %s (%s), want %s (%s)", got, got.In(loc), tt.wantOpenAt, tt.wantOpenAt.In(loc))
			}
			if !r.inWindow(got) || r.inWindow(got.Add(-time.Minute)) {
				t.Errorf("inWindow disagrees: at the opening %v, a minute before %v", r.inWindow(got), r.inWindow(got.Add(-time.Minute)))
			}
		})
	}
}

// TestRolloutWindowOnDaylightSavingDay: a rollout waiting for a 03:00 Berlin window on the
// day the clocks go back starts its devices at 03:00 CET.
func TestRolloutWindowOnDaylightSavingDay(t *testing.T) {
	h := newFleetHarness(t, 2)
	h.env.SetStartTime(time.Date(2026, 10, 24, 22, 0, 0, 0, time.UTC)) // 00:00 CEST
	req := rolloutRequest()
	req.Window = &ota.Window{Start: "03:00", End: "05:00", TimeZone: "Europe/Berlin"}
	if _, err := h.run(t, ota.RolloutInput{Request: req}); err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 10, 25, 2, 0, 0, 0, time.UTC)
	for id, at := range h.started {
		if at.Before(want) || at.After(want.Add(time.Second)) {
			t.Errorf("%s started at %s, want at %s (03:00 CET)", id, at.UTC(), want)
		}
	}
}

// TestRolloutTargetsFixedAtPreflight: the targets are the devices that matched at the
// pre-flight; a device that comes to match later is left out (issue 15: --where evaluated per
// page), disabled devices are left out, and the snapshot is removed at the end.
func TestRolloutTargetsFixedAtPreflight(t *testing.T) {
	h := newFleetHarness(t, 6)
	h.dev.devices["dev-002"] = store.Device{ID: "dev-002", Disabled: true, Reported: protocol.Status{"firmware_ver": "1.0"}}
	h.slowResolve(time.Second)
	req := rolloutRequest()
	req.MaxInFlight, req.PageSize = 1, 1
	h.env.RegisterDelayedCallback(func() {
		h.dev.mu.Lock()
		h.dev.devices["dev-007"] = store.Device{ID: "dev-007", Reported: protocol.Status{"firmware_ver": "1.0"}}
		h.dev.mu.Unlock()
	}, 90*time.Second)
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 5 || p.Counts.Started != 5 || p.Counts.Succeeded != 5 {
		t.Fatalf("total %d, counts %+v; want the 5 enabled devices of the pre-flight", p.Total, p.Counts)
	}
	if _, ok := h.started["dev-007"]; ok {
		t.Error("a device registered after the pre-flight was upgraded")
	}
	if _, ok := h.started["dev-002"]; ok {
		t.Error("a disabled device was upgraded")
	}
	if len(h.dev.lists) != 0 {
		t.Errorf("target lists left after the end: %v", h.dev.lists)
	}
}
