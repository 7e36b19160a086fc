package main

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/plan"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// registerReporting registers devices that report firmware versions.
func registerReporting(t *testing.T, st *store.Store, versions map[string]string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range slices.Sorted(maps.Keys(versions)) {
		if err := st.AddDevice(ctx, id, "hash", nil); err != nil {
			t.Fatal(err)
		}
		if err := st.RecordStatus(ctx, id, protocol.Status{"firmware_ver": versions[id]}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestQuarantineAndPlanCommands: `devices quarantine` shows, sets and releases; `rollout plan`
// shows the targets and the devices left out, quarantined ones included, and changes nothing.
func TestQuarantineAndPlanCommands(t *testing.T) {
	f := startWorker(t)
	ctx := context.Background()
	registerReporting(t, f.store, map[string]string{"pl-1": "1.0", "pl-2": "1.0", "pl-3": "1.0", "pl-4": "1.1"})
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }

	r := cli("devices", "quarantine", "policy")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Quarantine is off") {
		t.Errorf("policy by default:\n%s", r.stdout)
	}
	r = cli("devices", "quarantine", "policy", "--failures", "1", "--of", "2")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "1 of its last 2 judged upgrades") || !strings.Contains(r.stdout, "0 more quarantined") {
		t.Errorf("policy set:\n%s", r.stdout)
	}
	// pl-3's upgrade fails: the policy quarantines it.
	u := store.Upgrade{RunID: "run-pl-3", WorkflowID: ota.DeviceWorkflowID("pl-3"), DeviceID: "pl-3", Type: "firmware", Version: "1.1", State: ota.StateSent}
	if err := f.store.RecordUpgrade(ctx, u, time.Now(), ""); err != nil {
		t.Fatal(err)
	}
	u.State = ota.StateFailed
	if err := f.store.RecordUpgrade(ctx, u, time.Now(), ""); err != nil {
		t.Fatal(err)
	}
	r = cli("devices", "quarantine", "list", "--json")
	r.check(t, 0)
	var listed []store.QuarantinedDevice
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || len(listed) != 1 || listed[0].DeviceID != "pl-3" {
		t.Fatalf("quarantine list: %v, %+v\n%s", err, listed, r.stdout)
	}

	planArgs := slices.Concat([]string{"rollout", "plan", "--name", "pl"}, rolloutPackage, []string{"--prefix", "pl-", "--waves", "1,100%"})
	r = cli(append(slices.Clone(planArgs), "--json")...)
	r.check(t, 0)
	var p plan.Plan
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("plan --json: %v\n%s", err, r.stdout)
	}
	if p.Targets != 2 || p.LeftOut != (ota.LeftOut{UpToDate: 1, Quarantined: 1}) || len(p.Waves) != 2 || p.Waves[0].Targets != 1 || p.Waves[1].Targets != 1 {
		t.Errorf("plan = %+v", p)
	}
	r = cli(planArgs...)
	r.check(t, 0)
	for _, want := range []string{"Plan of rollout pl: firmware 1.1 (nothing was started)", "Targets   2 device(s) in 2 wave(s)",
		"Left out  2: 1 up to date, 1 quarantined"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("plan lacks %q:\n%s", want, r.stdout)
		}
	}
	// An explicit list: its unknown devices are named, and nothing is stored.
	r = cli(slices.Concat([]string{"rollout", "plan", "--name", "pl"}, rolloutPackage, []string{"--devices", "pl-1,ghost", "--json"})...)
	r.check(t, 0)
	p = plan.Plan{}
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || p.Targets != 1 || !slices.Equal(p.Unknown, []string{"ghost"}) {
		t.Errorf("plan of a list: %v, %+v", err, p)
	}
	if lists, err := f.store.TargetLists(ctx, "pl"); err != nil || len(lists) != 0 {
		t.Errorf("the plan stored target lists %v (%v)", lists, err)
	}
	if len(f.pub.sent()) != 0 {
		t.Errorf("the plan sent commands: %v", f.pub.sent())
	}

	r = cli("devices", "quarantine", "release", "--device", "pl-3")
	r.check(t, 0)
	r = cli("devices", "quarantine", "release", "--device", "pl-3")
	r.check(t, exitFailure, "device pl-3 is not in quarantine")
	r = cli(append(slices.Clone(planArgs), "--json")...)
	r.check(t, 0)
	p = plan.Plan{}
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || p.Targets != 3 || p.LeftOut.Quarantined != 0 {
		t.Errorf("plan after the release: %v, %+v", err, p)
	}
	r = cli("devices", "quarantine", "policy", "--off")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Quarantine is off") {
		t.Errorf("policy --off:\n%s", r.stdout)
	}
}

// TestRolloutCloseCommand: `rollout close` closes a continuous rollout, which then completes,
// and refuses a rollout that is not continuous.
func TestRolloutCloseCommand(t *testing.T) {
	f := startWorker(t)
	ctx := context.Background()
	registerReporting(t, f.store, map[string]string{"cl-1": "1.0"})
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }
	// No device answers: the upgrade times out fast, and the waves are done.
	quick := []string{"--prefix", "cl-", "--start-timeout", "1s", "--max-attempts", "1"}
	r := cli(rolloutStart("cl", append(slices.Clone(quick), "--continuous")...)...)
	r.check(t, 0)
	endUpgrade(t, "cl-1")
	require.Eventually(t, func() bool {
		r := cli("rollout", "status", "cl", "--json")
		return r.code == 0 && strings.Contains(r.stdout, `"state": "watching"`)
	}, 30*time.Second, 100*time.Millisecond, "the rollout watching")
	r = cli("rollout", "close", "cl", "--reason", "enough")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Closed rollout cl") {
		t.Errorf("close:\n%s", r.stdout)
	}
	r = cli("rollout", "close", "cl")
	// Refused: closed already, or (the rollout having no upgrade running) completed by now.
	if r.code != exitFailure || !(strings.Contains(r.stderr, "already closed") || strings.Contains(r.stderr, "has ended") ||
		strings.Contains(r.stderr, "is completed")) {
		t.Errorf("a second close: exit %d\n%s", r.code, r.stderr)
	}
	require.Eventually(t, func() bool {
		r := cli("rollout", "status", "cl", "--json")
		return r.code == 0 && strings.Contains(r.stdout, `"state": "completed"`) && strings.Contains(r.stdout, "closed by operator: enough")
	}, 30*time.Second, 100*time.Millisecond, "the rollout completed")

	r = cli(rolloutStart("cl-static", append(slices.Clone(quick), "--approve-waves", "--waves", "1,100%")...)...)
	r.check(t, 0)
	t.Cleanup(func() { cli("rollout", "cancel", "cl-static", "--cancel-running") })
	require.Eventually(t, func() bool {
		r := cli("rollout", "status", "cl-static", "--json")
		return r.code == 0 && strings.Contains(r.stdout, `"state": "waiting_approval"`)
	}, 30*time.Second, 100*time.Millisecond, "the static rollout waiting for approval")
	r = cli("rollout", "close", "cl-static")
	r.check(t, exitFailure, "refused to close", "not continuous")
}
