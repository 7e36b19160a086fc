package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/plan"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// The rollout's judgement about the fleet (issue 11), on the real servers: compatibility,
// quarantine, reverted devices, continuous rollouts and plans.

// registerLabelled registers devices with labels before the simulated fleet connects (the
// fleet's registrar then only sets their secrets), and others that never connect.
func registerLabelled(labels map[string]map[string]string, neverSeen ...string) func(context.Context, *store.Store) error {
	return func(ctx context.Context, st *store.Store) error {
		for _, id := range slices.Sorted(maps.Keys(labels)) {
			if err := st.AddDevice(ctx, id, "", labels[id]); err != nil {
				return err
			}
		}
		for _, id := range neverSeen {
			if err := st.AddDevice(ctx, id, "", nil); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestRolloutJudgesTheFleet: the devices the targets match that are up to date, incompatible,
// quarantined, disabled or never seen are left out and counted, incompatible ones are never
// sent a command, and `rollout plan` (plan.Make) shows beforehand exactly what the rollout
// then does: its targets per wave and the devices it leaves out.
func TestRolloutJudgesTheFleet(t *testing.T) {
	v2 := map[string]string{"model": "pump-v2"}
	labels := map[string]map[string]string{}
	for i := 1; i <= 8; i++ {
		labels[simID("judge", i)] = v2
	}
	labels[simID("judge", 6)] = map[string]string{"model": "pump-v1"}
	neverSeen := simID("judge", 9)
	e := newEnvPrepared(t, system.Config{Devices: 8, Prefix: "judge",
		Faults: simulator.Faults{InstallFail: simulator.Fault{Devices: []string{simID("judge", 8)}, Attempts: 1}}},
		registerLabelled(labels, neverSeen))
	// judge-5 is up to date; judge-8 fails its one upgrade and is quarantined (1 of 1);
	// judge-7 is disabled.
	if st, err := e.upgrade(e.request(simID("judge", 5))); err != nil || st.State != ota.StateSucceeded {
		t.Fatalf("upgrade of judge-5: %s, %v", st.State, err)
	}
	if _, err := e.store.SetQuarantinePolicy(e.ctx, store.QuarantinePolicy{Failures: 1, Of: 1}); err != nil {
		t.Fatal(err)
	}
	failing := e.request(simID("judge", 8))
	failing.MaxAttempts = 1
	if st, _ := e.upgrade(failing); st.State != ota.StateFailed {
		t.Fatalf("upgrade of judge-8: %s, want failed", st.State)
	}
	if err := e.store.SetDisabled(e.ctx, simID("judge", 7), true); err != nil {
		t.Fatal(err)
	}

	req := e.rollout("judge", "judge", ota.Wave{Count: 1}, ota.Wave{Percent: 50}, ota.Wave{Percent: 100})
	req.Upgrade.Compat = &ota.Compatibility{Labels: v2, Versions: ">=1.0,<1.1"}
	planned, err := plan.Make(e.ctx, e.store, req, nil, plan.Options{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	commandsBefore := map[string]int{}
	for _, id := range e.sys.Fleet.IDs() {
		d, _ := e.sys.Fleet.Device(id)
		commandsBefore[id] = len(d.Received)
	}
	p, err := e.finish(e.startRollout(req))
	if err != nil || p.State != ota.RolloutCompleted {
		t.Fatalf("rollout %s (%q), err %v", p.State, p.Reason, err)
	}
	wantLeft := ota.LeftOut{UpToDate: 1, Incompatible: 1, Quarantined: 1, Disabled: 1, NeverSeen: 1}
	if p.Total != 4 || p.Counts.Succeeded != 4 || p.LeftOut != wantLeft || p.Counts.Incompatible != 1 || p.Counts.Quarantined != 1 {
		t.Errorf("rollout: total %d, counts %+v, left out %+v; want 4 upgraded, left out %+v", p.Total, p.Counts, p.LeftOut, wantLeft)
	}
	// The plan's figures are the rollout's.
	if planned.Targets != p.Total || planned.LeftOut != p.LeftOut || len(planned.Waves) != len(p.Waves) {
		t.Fatalf("plan: %d targets, left out %+v, %d waves; the rollout: %d, %+v, %d", planned.Targets, planned.LeftOut,
			len(planned.Waves), p.Total, p.LeftOut, len(p.Waves))
	}
	for i, w := range planned.Waves {
		if w.Targets != p.Waves[i].Target || p.Waves[i].Counts.Started != w.Targets {
			t.Errorf("wave %d: planned %d, the rollout's target %d and started %d", i+1, w.Targets, p.Waves[i].Target, p.Waves[i].Counts.Started)
		}
	}
	// The devices left out were sent no command by the rollout.
	for _, n := range []int{5, 6, 7, 8} {
		id := simID("judge", n)
		if d, _ := e.sys.Fleet.Device(id); len(d.Received) != commandsBefore[id] {
			t.Errorf("%s, left out, got %d command(s) from the rollout", id, len(d.Received)-commandsBefore[id])
		}
	}
	e.checkRecords("judge", p)
	t.Logf("plan: %d targets in waves %v, left out %+v; rollout: the same, %d succeeded", planned.Targets,
		[]int{planned.Waves[0].Targets, planned.Waves[1].Targets, planned.Waves[2].Targets}, planned.LeftOut, p.Counts.Succeeded)
}

// TestQuarantinedDeviceLeftOutUntilReleased: a device quarantined after a failed upgrade is
// left out of the next rollout (counted quarantined), and upgraded by the one after its
// release.
func TestQuarantinedDeviceLeftOutUntilReleased(t *testing.T) {
	bad := simID("quar", 2)
	e := newEnv(t, system.Config{Devices: 4, Prefix: "quar",
		Faults: simulator.Faults{InstallFail: simulator.Fault{Devices: []string{bad}, Attempts: 1}}})
	if _, err := e.store.SetQuarantinePolicy(e.ctx, store.QuarantinePolicy{Failures: 1, Of: 2}); err != nil {
		t.Fatal(err)
	}
	first := e.rollout("quar-1", "quar")
	first.Upgrade.MaxAttempts = 1
	p, err := e.finish(e.startRollout(first))
	if err != nil || p.Counts.Succeeded != 3 || p.Counts.Failed != 1 {
		t.Fatalf("first rollout: %+v, err %v; want 3 succeeded, %s failed", p.Counts, err, bad)
	}
	qs, err := e.store.QuarantinedDevices(e.ctx, "", 0)
	if err != nil || len(qs) != 1 || qs[0].DeviceID != bad {
		t.Fatalf("quarantined %+v, %v; want %s", qs, err, bad)
	}
	t.Logf("quarantined %s: %s", bad, qs[0].Reason)

	// Version 1.2: every device is a target again, but the quarantined one.
	second := e.rollout("quar-2", "quar")
	second.Upgrade.Version = "1.2"
	p, err = e.finish(e.startRollout(second))
	if err != nil || p.Total != 3 || p.Counts.Succeeded != 3 || p.Counts.Quarantined != 1 || p.LeftOut.Quarantined != 1 {
		t.Fatalf("second rollout: total %d, %+v, err %v; want 3 upgraded, %s left out as quarantined", p.Total, p.Counts, err, bad)
	}
	if d, _ := e.sys.Fleet.Device(bad); len(d.Received) != 1 {
		t.Errorf("%s got %d commands; want only the first rollout's", bad, len(d.Received))
	}

	if err := e.store.ReleaseQuarantine(e.ctx, bad); err != nil {
		t.Fatal(err)
	}
	third := e.rollout("quar-3", "quar")
	third.Upgrade.Version = "1.2"
	p, err = e.finish(e.startRollout(third))
	if err != nil || p.Total != 1 || p.Counts.Succeeded != 1 || p.Counts.Quarantined != 0 || p.LeftOut.UpToDate != 3 {
		t.Fatalf("third rollout: total %d, %+v, left out %+v, err %v; want %s upgraded", p.Total, p.Counts, p.LeftOut, err, bad)
	}
	if d, _ := e.sys.Fleet.Device(bad); d.Status["firmware_ver"] != "1.2" {
		t.Errorf("%s reports %v after its release and the third rollout", bad, d.Status)
	}
}

// TestRolloutRevertedDeviceTripsThreshold: a device that reports its old version within the
// soak counts reverted, a failure the failure threshold sees: the rollout aborts before the
// other devices are commanded.
func TestRolloutRevertedDeviceTripsThreshold(t *testing.T) {
	e := newEnv(t, system.Config{})
	old := protocol.Status{"firmware_ver": "1.0"}
	devices := []*scripted{e.scriptedDevice("soak-1", old), e.scriptedDevice("soak-2", old), e.scriptedDevice("soak-3", old)}
	req := e.rollout("soak", "soak")
	req.Upgrade.Soak = ota.Duration(30 * time.Second)
	req.MaxInFlight = 1
	req.FailurePercent, req.FailureMinCount, req.FailureAction = 50, 1, ota.ActionAbort
	run := e.startRollout(req)
	d := devices[0]
	cmd := d.command()
	d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
	d.status(protocol.Status{"firmware_ver": "1.1"})
	require.Eventually(t, func() bool { return e.progress(run).Counts.Running() == 1 }, 10*time.Second, 50*time.Millisecond, "soak-1 soaking")
	d.status(old) // rebooted back onto the old version, within the soak
	p, err := e.finish(run)
	if err == nil || p.State != ota.RolloutAborted || p.Counts.Reverted != 1 || p.Counts.Started != 1 {
		t.Fatalf("rollout %s (%q) %+v, err %v; want aborted with soak-1 reverted", p.State, p.Reason, p.Counts, err)
	}
	for _, other := range devices[1:] {
		if n := len(other.commands); n != 0 {
			t.Errorf("%s got %d commands after the threshold tripped", other.id, n)
		}
	}
	rec, err := e.store.LatestUpgrade(e.ctx, "soak-1")
	if err != nil || rec.State != ota.StateReverted {
		t.Errorf("soak-1's record: %s, %v; want reverted", rec.State, err)
	}
}

// lateFleet starts simulated devices ids, reporting initial, on the test's broker,
// registering those not registered yet.
func (e *env) lateFleet(ids []string, initial protocol.Status) *simulator.Fleet {
	e.t.Helper()
	f, err := simulator.New(simulator.Config{BrokerURL: e.sys.MQTTURL, DeviceIDs: ids, Initial: initial,
		Registrar: &simulator.StoreRegistrar{Store: e.store}, Timing: fastTiming})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(e.ctx))
	if err := f.Start(ctx); err != nil {
		cancel()
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { f.Stop(); cancel() })
	return f
}

// TestContinuousRollout: a continuous rollout, after its waves, upgrades a device registered
// after it started, a registered device that comes online for the first time, and a device
// that was offline during its wave (its upgrade timed out) once it is back; each once. A late
// device the package does not fit is counted incompatible and left alone. Closed, it
// completes.
func TestContinuousRollout(t *testing.T) {
	timing := fastTiming
	timing.OfflineFor = 10 * time.Second
	offline := simID("cont", 3)
	firstSeen, unfit := "cont-first-seen", "cont-unfit"
	e := newEnvPrepared(t, system.Config{Devices: 3, Prefix: "cont", Timing: timing,
		Faults: simulator.Faults{Offline: simulator.Fault{Devices: []string{offline}}}},
		registerLabelled(nil, firstSeen, unfit))
	req := e.rollout("cont", "cont")
	req.Continuous = true
	req.Upgrade.Compat = &ota.Compatibility{Versions: ">=1.0,<1.1"}
	req.Upgrade.StartTimeout = ota.Duration(3 * time.Second)
	req.Upgrade.MaxAttempts = 1
	run := e.startRollout(req)
	require.Eventually(t, func() bool { return e.progress(run).State == ota.RolloutWatching }, time.Minute, 50*time.Millisecond, "the waves done")
	p := e.progress(run)
	if p.Counts.Succeeded != 2 || p.Counts.TimedOut != 1 || p.LeftOut.NeverSeen != 2 {
		t.Fatalf("after the waves: %+v, left out %+v; want 2 succeeded, %s timed out, 2 never seen", p.Counts, p.LeftOut, offline)
	}

	// A device registered now, one registered earlier that comes online for the first time,
	// and one the package does not fit (it runs 2.0).
	booted := time.Now()
	late := e.lateFleet([]string{"cont-new", firstSeen}, protocol.Status{"firmware_ver": "1.0"})
	other := e.lateFleet([]string{unfit}, protocol.Status{"firmware_ver": "2.0"})
	require.Eventually(t, func() bool {
		p := e.progress(run)
		return p.Late != nil && p.Late.Succeeded == 3 && p.Counts.Incompatible == 1
	}, time.Minute, 50*time.Millisecond, "the late devices and the one back online upgraded")
	rec, err := e.store.LatestUpgrade(e.ctx, "cont-new")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a late device's upgrade started %s after it booted", rec.CreatedAt.Sub(booted).Round(10*time.Millisecond))

	if err := e.update(run, ota.UpdateClose, "test over"); err != nil {
		t.Fatal(err)
	}
	p, err = e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted || p.Late.Started != 3 {
		t.Fatalf("closed: %s (%q), late %+v, err %v", p.State, p.Reason, p.Late, err)
	}
	for _, f := range []*simulator.Fleet{e.sys.Fleet, late} {
		for _, id := range f.IDs() {
			if d, _ := f.Device(id); d.Upgrades != 1 || d.Status["firmware_ver"] != "1.1" {
				t.Errorf("%s installed %d times and reports %v; want once, 1.1", id, d.Upgrades, d.Status)
			}
		}
	}
	if d, _ := other.Device(unfit); len(d.Received) != 0 {
		t.Errorf("the incompatible late device got %d commands", len(d.Received))
	}
}

// lateDevices registers n devices prefix-00001... after a rollout started, reporting status
// st, as the bridge records their boot reports: in batches of 500.
func (e *env) lateDevices(prefix string, from, n int, st protocol.Status) {
	e.t.Helper()
	for start := from; start < from+n; start += 500 {
		var devs []store.NewDevice
		var reports []store.Report
		for i := start; i < min(start+500, from+n); i++ {
			id := simID(prefix, i)
			devs = append(devs, store.NewDevice{ID: id, SecretHash: "h"})
			reports = append(reports, store.Report{DeviceID: id, Status: st, ReceivedAt: time.Now()})
		}
		if err := e.store.AddDevices(e.ctx, devs); err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.store.RecordBatch(e.ctx, reports, nil); err != nil {
			e.t.Fatal(err)
		}
	}
}

// continuousHistories runs a continuous rollout over late devices that register after it
// started, already on the target version, so that their upgrades end skipped at once: the
// rollout's own history is what is measured. It returns the history length of every run.
func continuousHistories(e *env, late, continueAfter int) ([]int64, ota.RolloutProgress) {
	e.t.Helper()
	req := e.rollout("hist", "hist")
	req.Continuous = true
	req.Targets.IncludeUpToDate = true
	req.ContinueAfter = continueAfter
	req.SkipPreflight = true
	run := e.startRollout(req)
	require.Eventually(e.t, func() bool { return e.progress(run).State == ota.RolloutWatching }, time.Minute, 50*time.Millisecond,
		"the rollout watching")
	e.lateDevices("hist", 1, late, protocol.Status{"firmware_ver": "1.1"})
	require.Eventually(e.t, func() bool {
		p := e.progress(run)
		return p.Late != nil && p.Late.Finished() == late
	}, 30*time.Minute, 200*time.Millisecond, fmt.Sprintf("%d late devices upgraded", late))
	if err := e.update(run, ota.UpdateClose, "measured"); err != nil {
		e.t.Fatal(err)
	}
	p, err := e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted || p.Late.Skipped != late {
		e.t.Fatalf("rollout %s, late %+v, err %v", p.State, p.Late, err)
	}
	return e.runHistories(run), p
}

// runHistories returns the history length of every run of a workflow, first run first.
func (e *env) runHistories(run client.WorkflowRun) []int64 {
	e.t.Helper()
	var lengths []int64
	runID := ""
	for {
		d, err := e.c.DescribeWorkflow(e.ctx, run.GetID(), runID)
		if err != nil {
			e.t.Fatal(err)
		}
		info := d.RawResponse.GetWorkflowExecutionInfo()
		lengths = append([]int64{info.GetHistoryLength()}, lengths...)
		it := e.c.GetWorkflowHistory(e.ctx, run.GetID(), info.GetExecution().GetRunId(), false, 0)
		ev, err := it.Next()
		if err != nil {
			e.t.Fatal(err)
		}
		prev := ev.GetWorkflowExecutionStartedEventAttributes().GetContinuedExecutionRunId()
		if prev == "" {
			return lengths
		}
		runID = prev
	}
}

// TestContinuousRolloutHistoryStaysBounded: over many late devices a continuous rollout
// continues as new every ContinueAfter starts, and no run's history grows with the devices
// the rollout upgraded before it. BenchmarkContinuousRolloutHistory measures 3,000.
func TestContinuousRolloutHistoryStaysBounded(t *testing.T) {
	e := newEnv(t, system.Config{})
	const late, continueAfter = 150, 50
	lengths, p := continuousHistories(e, late, continueAfter)
	t.Logf("%d late devices, %d runs, history lengths %v", late, p.Runs, lengths)
	if len(lengths) < late/continueAfter {
		t.Errorf("%d runs for %d devices, continuing as new every %d", len(lengths), late, continueAfter)
	}
	// A run holds at most continueAfter starts: each costs three events of its own and at
	// worst two workflow tasks (three events each) when the worker is slow to batch them,
	// plus the searches; whatever came before.
	for i, n := range lengths {
		if n > int64(continueAfter)*12+200 {
			t.Errorf("run %d has %d events; want a bound independent of the devices upgraded before", i+1, n)
		}
	}
}

// BenchmarkContinuousRolloutHistory: a continuous rollout over 3,000 late devices
// (OTAFLOW_BENCH_LATE to change it) with the default ContinueAfter, on the test's Temporal
// server: it prints every run's history length, the largest, and the events per device.
//
//	go test -run '^$' -bench ContinuousRolloutHistory -benchtime 1x -v ./internal/e2e
func BenchmarkContinuousRolloutHistory(b *testing.B) {
	late := 3000
	if v := os.Getenv("OTAFLOW_BENCH_LATE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("OTAFLOW_BENCH_LATE=%q: want a number of devices", v)
		}
		late = n
	}
	for range b.N {
		e := newEnvFor(b, 40*time.Minute, system.Config{}, nil)
		start := time.Now()
		lengths, p := continuousHistories(e, late, 0)
		took := time.Since(start)
		var total, largest int64
		for _, n := range lengths {
			total += n
			largest = max(largest, n)
		}
		b.Logf("%d late devices in %s: %d runs, history lengths %v", late, took.Round(time.Second), p.Runs, lengths)
		b.Logf("largest run: %d events; %.1f events per late device over all runs", largest, float64(total)/float64(late))
		b.ReportMetric(float64(largest), "events/largest-run")
		b.ReportMetric(float64(total)/float64(late), "events/device")
		b.ReportMetric(float64(len(lengths)), "runs")
	}
}
