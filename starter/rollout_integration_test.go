package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// The package every rollout of these tests installs. No HTTP server serves it: the rollouts
// skip the pre-flight download.
var rolloutPackage = []string{"--type", "firmware", "--version", "1.1", "--url", "https://files.example.com/fw/1.1.bin",
	"--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "1024", "--skip-preflight"}

// rolloutStart is a `rollout start` command line of the test package.
func rolloutStart(name string, more ...string) []string {
	return slices.Concat([]string{"rollout", "start", "--name", name}, rolloutPackage, more)
}

// rolloutSchedule is a `rollout schedule` command line of the test package.
func rolloutSchedule(name string, more ...string) []string {
	return slices.Concat([]string{"rollout", "schedule", "--name", name}, rolloutPackage, more)
}

// sent returns how many commands each device got so far.
func (r *recorder) sent() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := make(map[string]int, len(r.commands))
	for dev, cmds := range r.commands {
		n[dev] = len(cmds)
	}
	return n
}

// play plays the devices of a test: for every command the worker sends a device, it asks
// react for the report the device sends back (a signal name and its payload, as the bridge
// would signal it), if any, and signals the device's upgrade workflow. It stops when the test
// ends.
func (f *fixture) play(t *testing.T, react func(dev string, cmd protocol.UpgradeCommand) (signal string, payload any, ok bool)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		answered := map[string]int{}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for dev, n := range f.pub.sent() {
				if n <= answered[dev] {
					continue
				}
				cmd, _ := f.pub.nth(dev, n)
				signal, payload, ok := react(dev, cmd)
				if !ok {
					answered[dev] = n
					continue
				}
				err := testenv.TemporalClient().SignalWorkflow(ctx, ota.DeviceWorkflowID(dev), "", signal, payload)
				var notFound *serviceerror.NotFound
				if err == nil || errors.As(err, &notFound) {
					answered[dev] = n // else try again at the next tick
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// answer plays the devices that only selects (all when nil): each reports firmware 1.1 as
// soon as it gets a command, as after a good install.
func (f *fixture) answer(t *testing.T, only func(dev string) bool) {
	f.play(t, func(dev string, _ protocol.UpgradeCommand) (string, any, bool) {
		if only != nil && !only(dev) {
			return "", nil, false
		}
		return ota.SignalStatus, ota.StatusSignal{Status: protocol.Status{protocol.VersionKey("firmware"): "1.1"}, ReceivedAt: time.Now()}, true
	})
}

// registerDevices registers n devices prefix1..prefixN reporting firmware 1.0, and cancels
// their upgrades still running when the test ends.
func (f *fixture) registerDevices(t *testing.T, prefix string, n int) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		if err := f.store.AddDevice(ctx, id, "unused", nil); err != nil {
			t.Fatal(err)
		}
		if err := f.store.RecordStatus(ctx, id, protocol.Status{protocol.VersionKey("firmware"): "1.0"}, time.Now()); err != nil {
			t.Fatal(err)
		}
		endUpgrade(t, id)
		ids = append(ids, id)
	}
	return ids
}

// endRollout deletes the rollout's schedule and terminates the rollout if it still runs when
// the test ends (before its devices' upgrades are canceled), so that nothing outlives the
// test's worker.
func endRollout(t *testing.T, name string) {
	t.Cleanup(func() {
		c := testenv.TemporalClient()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.ScheduleClient().GetHandle(ctx, rolloutScheduleID(name)).Delete(ctx)
		if ref, err := findRollout(ctx, c, name); err == nil && ref.running() {
			_ = c.TerminateWorkflow(ctx, ref.WorkflowID, "", "the test ended")
		}
	})
}

// statusJSON runs `rollout status NAME --json` and decodes it.
func statusJSON(t tester, dbURL, name string) rolloutStatusReport {
	t.Helper()
	r := runCLI(t, context.Background(), servers(dbURL, "rollout", "status", name, "--json")...)
	r.check(t, 0)
	var rep rolloutStatusReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Errorf("rollout status --json: %v\n%s", err, r.stdout)
		t.FailNow()
	}
	return rep
}

// waitState waits until the rollout is in state s and returns its status.
func waitState(t *testing.T, dbURL, name string, s ota.RolloutState) rolloutStatusReport {
	t.Helper()
	var rep rolloutStatusReport
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		rep = statusJSON(c, dbURL, name)
		assert.Equal(c, s, rep.State, "rollout %s: %+v", name, rep)
	}, 20*time.Second, 20*time.Millisecond, "rollout %s %s", name, s)
	return rep
}

// listed returns the rollouts of `rollout list --json` (with more arguments) by name, the
// newest of a name.
func listed(t tester, dbURL string, more ...string) map[string]rolloutListEntry {
	t.Helper()
	r := runCLI(t, context.Background(), servers(dbURL, append([]string{"rollout", "list", "--json"}, more...)...)...)
	r.check(t, 0)
	var entries []rolloutListEntry
	if err := json.Unmarshal([]byte(r.stdout), &entries); err != nil {
		t.Errorf("rollout list --json: %v\n%s", err, r.stdout)
		t.FailNow()
	}
	m := map[string]rolloutListEntry{}
	for _, e := range entries {
		if _, seen := m[e.Name]; !seen {
			m[e.Name] = e
		}
	}
	return m
}

func TestRolloutStartWaitCompletes(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	devs := f.registerDevices(t, "ro-wait-", 6)
	f.answer(t, nil)
	const name = "ro-wait"
	endRollout(t, name)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }

	r := cli(rolloutStart(name, "--devices", strings.Join(append(slices.Clone(devs), "ghost-1"), ","), "--waves", "2,100%", "--wait")...)
	r.check(t, 0, "warning: 1 of the 7 listed devices are not registered and are left out: ghost-1")
	for _, want := range []string{"Started rollout ro-wait: firmware 1.1", "workflow  " + ota.RolloutWorkflowID(name),
		"State     completed", "succeeded 6  skipped 0  failed 0"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rollout start --wait output lacks %q:\n%s", want, r.stdout)
		}
	}
	sent := f.pub.sent()
	for _, d := range devs {
		if sent[d] != 1 {
			t.Errorf("%s got %d commands, want 1", d, sent[d])
		}
	}
	if len(sent) != len(devs) {
		t.Errorf("commands went to %v, want the 6 devices", sent)
	}

	rep := statusJSON(t, f.dbURL, name)
	if rep.WorkflowID != ota.RolloutWorkflowID(name) || rep.WorkflowStatus != "Completed" || rep.State != ota.RolloutCompleted ||
		rep.Total != 6 || rep.Counts != (ota.Counts{Started: 6, Succeeded: 6}) {
		t.Errorf("status --json = %+v", rep)
	}
	if len(rep.Waves) != 2 || rep.Waves[0].Target != 2 || rep.Waves[0].Counts.Succeeded != 2 || rep.Waves[1].Target != 4 || rep.Waves[1].Counts.Succeeded != 4 {
		t.Errorf("status --json waves = %+v, want 2 then 4 succeeded", rep.Waves)
	}
	if rep.StoreCounts[ota.StateSucceeded] != 6 || len(rep.StoreCounts) != 1 {
		t.Errorf("status --json store counts = %v, want 6 succeeded", rep.StoreCounts)
	}
	// The finished rollout is on its last wave, in the JSON as in the text, and the text and
	// the JSON agree on every field the text shows.
	if rep.CurrentWave != len(rep.Waves) {
		t.Errorf("status --json current_wave = %d of %d waves, want the last", rep.CurrentWave, len(rep.Waves))
	}
	js := cli("rollout", "status", name, "--json")
	js.check(t, 0)
	text := cli("rollout", "status", name)
	text.check(t, 0)
	checkTextAgreesWithJSON(t, text.stdout, []byte(js.stdout))

	r = cli("rollout", "status", name)
	r.check(t, 0)
	for _, want := range []string{"State     completed", "wave 1  [" + strings.Repeat("#", barWidth) + "]  2/2  succeeded 2",
		"wave 2  [" + strings.Repeat("#", barWidth) + "]  4/4  succeeded 4", "Records   succeeded 6  (PostgreSQL; agree with the workflow)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rollout status lacks %q:\n%s", want, r.stdout)
		}
	}

	// Without PostgreSQL, the workflow's progress alone; with it unreachable, a warning too.
	r = runCLI(t, ctx, servers("", "rollout", "status", name)...)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "State     completed") || strings.Contains(r.stdout, "Records") {
		t.Errorf("rollout status without a database:\n%s", r.stdout)
	}
	r = runCLI(t, ctx, servers("postgres://otaflow@127.0.0.1:1/none?connect_timeout=5", "rollout", "status", name)...)
	r.check(t, 0, "warning: no records from PostgreSQL")
	if !strings.Contains(r.stdout, "State     completed") || !strings.Contains(r.stdout, "Records   unavailable: ") {
		t.Errorf("rollout status with an unreachable database:\n%s", r.stdout)
	}

	// list shows it, with its state once visibility has it.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		e, ok := listed(c, f.dbURL)[name]
		assert.True(c, ok && e.State == string(ota.RolloutCompleted) && e.Version == "1.1" && e.WorkflowStatus == "Completed",
			"listed: %+v", e)
	}, 10*time.Second, 20*time.Millisecond, "rollout list to show ro-wait completed")
	if _, ok := listed(t, f.dbURL, "--state", string(ota.RolloutPaused))[name]; ok {
		t.Error("rollout list --state paused shows the completed rollout")
	}
	r = cli("rollout", "list", "--state", string(ota.RolloutCompleted))
	r.check(t, 0)
	if !strings.Contains(r.stdout, "NAME") || !strings.Contains(r.stdout, name+"  ") {
		t.Errorf("rollout list table:\n%s", r.stdout)
	}

	cli("rollout", "pause", name).check(t, exitFailure, "rollout ro-wait has ended (completed", "nothing to pause")
	cli("rollout", "status", "ro-none").check(t, exitFailure, "no such rollout", "ro-none")

	// Every listed device unknown: nothing is started.
	cli(rolloutStart("ro-ghosts", "--devices", "ghost-1,ghost-2")...).check(t, exitFailure, "none of the 2 listed devices is registered")
	if _, err := findRollout(ctx, testenv.TemporalClient(), "ro-ghosts"); !errors.Is(err, errNoRollout) {
		t.Errorf("a rollout of unknown devices was started: %v", err)
	}
}

func TestRolloutWaitReportsAbort(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	devs := f.registerDevices(t, "ro-abort-", 3)
	// The first device fails its download; the others would succeed.
	f.play(t, func(dev string, cmd protocol.UpgradeCommand) (string, any, bool) {
		if dev == devs[0] {
			return ota.SignalProgress, ota.ProgressSignal{Progress: protocol.Progress{ID: cmd.ID, Type: cmd.Type,
				Version: cmd.Version, Progress: protocol.CodeMD5Mismatch, Desc: "md5 mismatch"}, ReceivedAt: time.Now()}, true
		}
		return ota.SignalStatus, ota.StatusSignal{Status: protocol.Status{protocol.VersionKey("firmware"): "1.1"}, ReceivedAt: time.Now()}, true
	})
	const name = "ro-abort"
	endRollout(t, name)

	r := runCLI(t, ctx, servers(f.dbURL, rolloutStart(name, "--prefix", "ro-abort-", "--waves", "1,100%", "--max-attempts", "1",
		"--failure-threshold", "50", "--failure-min", "1", "--on-failure", "abort", "--wait", "--json")...)...)
	r.check(t, exitFailure, "rollout ro-abort ended aborted: failure threshold reached in wave 1: 1 of 1 finished devices failed")
	var rep rolloutStartReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("rollout start --wait --json printed no JSON object: %v\n%s", err, r.stdout)
	}
	if rep.Result == nil || rep.Result.State != ota.RolloutAborted || rep.Result.Counts != (ota.Counts{Started: 1, Failed: 1}) ||
		!strings.Contains(rep.Error, "rollout aborted") {
		t.Errorf("rollout start --wait --json = %+v, result %+v", rep, rep.Result)
	}
	if !strings.Contains(r.stderr, "State     aborted") {
		t.Errorf("the progress on stderr does not end aborted:\n%s", r.stderr)
	}
	if n := f.pub.sent(); n[devs[1]] != 0 || n[devs[2]] != 0 {
		t.Errorf("the aborted rollout went on to wave 2: %v", n)
	}
}

func TestRolloutPauseResumeApproveCancel(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	devs := f.registerDevices(t, "ro-ctl-", 3)
	f.answer(t, func(dev string) bool { return dev == devs[0] }) // the others never finish
	const name = "ro-ctl"
	endRollout(t, name)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }

	r := cli(rolloutStart(name, "--prefix", "ro-ctl-", "--waves", "1,100%", "--approve-waves", "--json")...)
	r.check(t, 0)
	var started rolloutStartReport
	if err := json.Unmarshal([]byte(r.stdout), &started); err != nil || started.WorkflowID != ota.RolloutWorkflowID(name) || started.RunID == "" {
		t.Fatalf("rollout start --json = %q (%v)", r.stdout, err)
	}
	cli(rolloutStart(name, "--prefix", "ro-ctl-")...).check(t, exitAlreadyRunning, "rollout ro-ctl is already running")
	watch := startCLI(ctx, servers(f.dbURL, "rollout", "status", name, "--watch")...)
	// Once it shows the rollout, it has read its flags: in-process runs of the command line
	// must not parse at the same time (urfave/cli's help flag is shared).
	watch.waitOutput(t, "Rollout ro-ctl: firmware 1.1")

	// Wave 1 (one device) succeeds; wave 2 waits for approval.
	rep := waitState(t, f.dbURL, name, ota.RolloutWaitingApproval)
	watch.waitOutput(t, "State     waiting_approval")
	if rep.CurrentWave != 2 || rep.Counts.Succeeded != 1 || !strings.Contains(rep.Reason, "starter rollout approve ro-ctl") {
		t.Errorf("waiting for approval: %+v", rep.RolloutProgress)
	}
	cli("rollout", "resume", name).check(t, exitFailure, "rollout ro-ctl refused to resume: rollout is not paused")
	cli("rollout", "approve", name, "--wave", "3").check(t, exitFailure, "refused to approve: wave 2 is waiting for approval, not wave 3")
	r = cli("rollout", "approve", name, "--wave", "2")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Approved wave 2 of rollout ro-ctl") {
		t.Errorf("approve printed %q", r.stdout)
	}
	f.command(t, devs[1], 1)
	f.command(t, devs[2], 1)

	// pause, refused twice, resume, refused twice.
	r = cli("rollout", "pause", name, "--reason", "checking the logs")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Paused rollout ro-ctl") {
		t.Errorf("pause printed %q", r.stdout)
	}
	rep = statusJSON(t, f.dbURL, name)
	if rep.State != ota.RolloutPaused || rep.Reason != "paused by operator: checking the logs" {
		t.Errorf("after pause: state %s, reason %q", rep.State, rep.Reason)
	}
	cli("rollout", "pause", name).check(t, exitFailure, "refused to pause: rollout is already paused")
	// The watch looks once a second: it shows the pause before the test resumes.
	watch.waitOutput(t, "State     paused")
	cli("rollout", "resume", name).check(t, 0)
	if rep = statusJSON(t, f.dbURL, name); rep.State != ota.RolloutRunning || rep.Reason != "" {
		t.Errorf("after resume: state %s, reason %q", rep.State, rep.Reason)
	}
	cli("rollout", "resume", name).check(t, exitFailure, "refused to resume: rollout is not paused")

	// cancel, with the running upgrades.
	r = cli("rollout", "cancel", name, "--cancel-running", "--reason", "test over", "--wait")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Rollout ro-ctl canceled: succeeded 1  canceled 2") {
		t.Errorf("cancel --wait printed:\n%s", r.stdout)
	}
	rep = statusJSON(t, f.dbURL, name)
	if rep.State != ota.RolloutCanceled || rep.Reason != "canceled by operator: test over" || rep.WorkflowStatus != "Completed" ||
		rep.Counts != (ota.Counts{Started: 3, Succeeded: 1, Canceled: 2}) || rep.FinishedAt == nil {
		t.Errorf("after cancel: %+v", rep)
	}
	for _, d := range devs[1:] {
		if u, err := f.store.LatestUpgrade(ctx, d); err != nil || u.State != ota.StateCanceled || u.Rollout != name {
			t.Errorf("upgrade of %s = %+v (%v), want canceled in rollout %s", d, u, err, name)
		}
	}
	cli("rollout", "resume", name).check(t, exitFailure, "has ended (canceled")
	cli("rollout", "cancel", name).check(t, exitFailure, "has ended")

	// status --watch (not on a terminal) printed a block per change and ended with the rollout.
	w := watch.wait(t)
	w.check(t, 0)
	last := -1
	for _, s := range []ota.RolloutState{ota.RolloutWaitingApproval, ota.RolloutPaused, ota.RolloutCanceled} {
		i := strings.Index(w.stdout, "State     "+string(s))
		if i < last {
			t.Errorf("status --watch shows %s missing or out of order:\n%s", s, w.stdout)
		}
		last = i
	}
	if strings.Contains(w.stdout, "\x1b[") {
		t.Errorf("status --watch redrew in place on a pipe:\n%q", w.stdout)
	}
}

func TestRolloutScheduleAtStartsIt(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	f.registerDevices(t, "ro-sch-", 2)
	f.answer(t, nil)
	const name = "ro-sch"
	endRollout(t, name)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }
	c := testenv.TemporalClient()

	at := time.Now().UTC().Truncate(time.Second).Add(3 * time.Second)
	schedule := rolloutSchedule(name, "--prefix", "ro-sch-", "--at", at.Format(time.RFC3339), "--json")
	r := cli(schedule...)
	r.check(t, 0)
	var rep scheduleReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("rollout schedule --json: %v\n%s", err, r.stdout)
	}
	if rep.ScheduleID != rolloutScheduleID(name) || rep.WorkflowID != ota.RolloutWorkflowID(name) ||
		len(rep.NextActionTimes) != 1 || !rep.NextActionTimes[0].Equal(at) {
		t.Errorf("rollout schedule --json = %+v, want one start at %s", rep, at)
	}
	cli(schedule...).check(t, exitAlreadyRunning, "rollout ro-sch already has a schedule")

	// The schedule starts the rollout as rollout-ro-sch (not a rollout of that name that an
	// earlier run of this test left behind).
	var ref rolloutRef
	require.Eventually(t, func() bool {
		var err error
		ref, err = findRollout(ctx, c, name)
		return err == nil && !ref.StartTime.Before(at)
	}, 30*time.Second, 20*time.Millisecond, "the schedule to start the rollout")
	if id := ota.RolloutWorkflowID(name); ref.WorkflowID != id {
		t.Errorf("the scheduled rollout runs as %s, want %s", ref.WorkflowID, id)
	}
	if _, err := c.DescribeWorkflow(ctx, ref.WorkflowID, ""); err != nil {
		t.Errorf("describe %s: %v", ref.WorkflowID, err)
	}
	// status --watch --json follows it to the end, one line per change.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r = runCLI(t, wctx, servers(f.dbURL, "rollout", "status", name, "--watch", "--json")...)
	r.check(t, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	var final rolloutStatusReport
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &final); err != nil {
		t.Fatalf("status --watch --json: %v\n%s", err, r.stdout)
	}
	if final.State != ota.RolloutCompleted || final.Counts != (ota.Counts{Started: 2, Succeeded: 2}) || final.WorkflowID != ref.WorkflowID {
		t.Errorf("the scheduled rollout ended %+v", final)
	}

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		e, ok := listed(c, f.dbURL)[name]
		assert.True(c, ok && e.WorkflowID == ref.WorkflowID && e.State == string(ota.RolloutCompleted), "listed: %+v", e)
	}, 10*time.Second, 20*time.Millisecond, "rollout list to show ro-sch")
	// The one-shot is spent: done, with what its start did.
	r = cli("rollout", "schedule", "list")
	r.check(t, 0)
	row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s+once at ` + regexp.QuoteMeta(at.Format(time.RFC3339)) +
		`\s+done\s+-\s+` + regexp.QuoteMeta(formatTime(at)+" started "+ref.WorkflowID) + `$`)
	if !row.MatchString(r.stdout) {
		t.Errorf("rollout schedule list:\n%s", r.stdout)
	}
	entry := scheduleListed(t, f.dbURL, name)
	if entry == nil || entry.State != scheduleDone || entry.LastStart == nil || entry.LastStart.Outcome != startStarted ||
		entry.LastStart.Rollout != ref.WorkflowID || !entry.LastStart.ScheduledAt.Equal(at) ||
		!strings.HasPrefix(entry.LastStart.WorkflowID, ota.ScheduledRolloutWorkflowID(name)+"-") {
		t.Errorf("schedule list --json entry = %+v, last start %+v", entry, entry.LastStart)
	}

	// A new schedule whose expression the server refuses leaves the spent one as it was...
	cli(rolloutSchedule(name, "--prefix", "ro-sch-", "--cron", "61 * * * *")...).check(t, exitUsage, "Minute is not in range")
	if again := scheduleListed(t, f.dbURL, name); again == nil || again.State != scheduleDone || again.LastStart == nil ||
		again.LastStart.Rollout != ref.WorkflowID {
		t.Errorf("the spent schedule after a refused replacement: %+v", again)
	}

	// ...and a good one of the name replaces it.
	at2 := at.Add(time.Hour)
	r = cli(rolloutSchedule(name, "--prefix", "ro-sch-", "--at", at2.Format(time.RFC3339))...)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Replaced the spent one-shot schedule "+rolloutScheduleID(name)) {
		t.Errorf("rollout schedule over a spent one printed:\n%s", r.stdout)
	}
	if entry := scheduleListed(t, f.dbURL, name); entry == nil || entry.State != scheduleActive || len(entry.NextActionTimes) != 1 ||
		!entry.NextActionTimes[0].Equal(at2) || entry.LastStart != nil {
		t.Errorf("the replacing schedule is listed as %+v", entry)
	}
	cli(rolloutSchedule(name, "--prefix", "ro-sch-", "--at", at2.Format(time.RFC3339))...).check(t, exitAlreadyRunning, "already has a schedule")

	cli("rollout", "schedule", "delete", name).check(t, 0)
	cli("rollout", "schedule", "delete", name).check(t, exitFailure, "rollout ro-sch has no schedule")
	if entry := scheduleListed(t, f.dbURL, name); entry != nil {
		t.Errorf("the deleted schedule is listed: %+v", entry)
	}
}

// scheduleListed returns the entry of `rollout schedule list --json` of the rollout name; nil
// when there is none.
func scheduleListed(t tester, dbURL, name string) *scheduleEntry {
	t.Helper()
	r := runCLI(t, context.Background(), servers(dbURL, "rollout", "schedule", "list", "--json")...)
	r.check(t, 0)
	var entries []scheduleEntry
	if err := json.Unmarshal([]byte(r.stdout), &entries); err != nil {
		t.Errorf("rollout schedule list --json: %v\n%s", err, r.stdout)
		t.FailNow()
	}
	for _, e := range entries {
		if e.Name == name {
			return &e
		}
	}
	return nil
}

func TestRolloutScheduleCronCarriesTheRequest(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	devs := f.registerDevices(t, "ro-cron-", 2)
	const name = "ro-cron"
	endRollout(t, name)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }
	c := testenv.TemporalClient()

	// In 2099 only: it never fires during the test.
	r := cli(rolloutSchedule(name, "--devices", devs[1]+","+devs[0]+",ghost-9", "--cron", "0 1 * * * 2099", "--tz", "Europe/Berlin",
		"--window", "01:00-05:00", "--waves", "1,50%:90,100%", "--bake", "5m", "--approve-waves", "--ramp", "10,2,1m",
		"--max-in-flight", "20", "--failure-threshold", "10", "--on-failure", "abort", "--max-attempts", "2")...)
	r.check(t, 0, "warning: 1 of the 3 listed devices are not registered and are left out: ghost-9")
	if !strings.Contains(r.stdout, `Scheduled rollout ro-cron (schedule rollout-schedule-ro-cron): firmware 1.1, cron "0 1 * * * 2099" in Europe/Berlin.`) {
		t.Errorf("rollout schedule printed:\n%s", r.stdout)
	}

	// The list is stored under a key of its own.
	lists, err := f.store.TargetLists(ctx, name)
	if err != nil || len(lists) != 1 || !strings.HasPrefix(lists[0].Key, name+store.TargetListSeparator) {
		t.Fatalf("stored target lists = %+v (%v), want one keyed %s/...", lists, err, name)
	}
	scheduled := lists[0].Key
	if got, err := f.store.ListDevices(ctx, ota.DeviceFilter{List: scheduled}); err != nil || len(got) != 2 {
		t.Errorf("stored target list = %v (%v), want the 2 known devices", got, err)
	}

	desc, err := c.ScheduleClient().GetHandle(ctx, rolloutScheduleID(name)).Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := desc.Schedule.Spec
	if spec.TimeZoneName != "Europe/Berlin" || len(spec.Calendars) != 1 || !slices.Equal(spec.Calendars[0].Year, []client.ScheduleRange{{Start: 2099, End: 2099, Step: 1}}) {
		t.Errorf("schedule spec = %+v", spec)
	}
	action, ok := desc.Schedule.Action.(*client.ScheduleWorkflowAction)
	if !ok {
		t.Fatalf("schedule action = %T", desc.Schedule.Action)
	}
	if action.ID != ota.ScheduledRolloutWorkflowID(name) || action.TaskQueue != ota.TaskQueue ||
		action.Workflow != ota.ScheduledRolloutWorkflowName {
		t.Errorf("schedule action = %+v", action)
	}
	if v, _ := action.TypedSearchAttributes.GetKeyword(ota.SearchRollout); v != name {
		t.Errorf("schedule action search attribute %s = %q", ota.SearchRollout.GetName(), v)
	}
	in, err := scheduledInput(desc.Schedule.Action)
	if err != nil {
		t.Fatal(err)
	}
	req := in.Request
	wantWaves := []ota.Wave{
		{Count: 1, Bake: ota.Duration(5 * time.Minute)},
		{Percent: 50, SuccessThreshold: 90, Bake: ota.Duration(5 * time.Minute), Approve: true},
		{Percent: 100, Approve: true},
	}
	if req.Name != name || req.Targets.List != scheduled || !slices.Equal(req.Waves, wantWaves) || req.MaxInFlight != 20 ||
		req.FailurePercent != 10 || req.FailureAction != ota.ActionAbort || req.Upgrade.MaxAttempts != 2 || !req.SkipPreflight ||
		req.Ramp == nil || *req.Ramp != (ota.Ramp{StartPerMinute: 10, Factor: 2, Step: ota.Duration(time.Minute)}) ||
		req.Window == nil || *req.Window != (ota.Window{Start: "01:00", End: "05:00", TimeZone: "Europe/Berlin"}) || in.Carry != nil {
		t.Errorf("scheduled request = %+v", req)
	}
	if err := req.Validate(); err != nil {
		t.Errorf("the scheduled request does not validate: %v", err)
	}

	// A rollout of that name may start meanwhile, with a list of its own: the schedule's
	// stays as it was.
	var started rolloutStartReport
	r = cli(rolloutStart(name, "--devices", devs[0], "--json")...)
	r.check(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &started); err != nil {
		t.Fatal(err)
	}
	f.command(t, devs[0], 1)
	if got, _ := f.store.ListDevices(ctx, ota.DeviceFilter{List: scheduled}); len(got) != 2 {
		t.Errorf("the schedule's list after a start of the name = %v, want its 2 devices", got)
	}
	// The schedule's list, the start's, and the snapshot the rollout took at its pre-flight.
	lists, _ = f.store.TargetLists(ctx, name)
	snapshots := 0
	for _, l := range lists {
		if strings.HasPrefix(l.Key, ota.RolloutWorkflowID(name)+"@") {
			snapshots++
		}
	}
	if len(lists) != 3 || snapshots != 1 {
		t.Errorf("stored lists = %+v, want the schedule's, the start's and the rollout's snapshot", lists)
	}
	cli("rollout", "cancel", name, "--cancel-running", "--wait").check(t, 0)

	// Deleting the schedule prunes the lists nothing uses any more (here: at once).
	grace := targetListGrace
	targetListGrace = 0
	t.Cleanup(func() { targetListGrace = grace })
	cli("rollout", "schedule", "delete", name).check(t, 0)
	if lists, err := f.store.TargetLists(ctx, name); err != nil || len(lists) != 0 {
		t.Errorf("stored lists after the schedule was deleted = %+v (%v), want none", lists, err)
	}
}

// TestRolloutScheduleBadCronIsAUsageError: the Temporal server checks a --cron expression;
// one it refuses is a usage error (exit 2) that says why in its words and how to write one,
// with no SDK wrapping, and leaves nothing behind: no schedule, no stored device list.
func TestRolloutScheduleBadCronIsAUsageError(t *testing.T) {
	tests := []struct {
		expr string
		why  string // the server's reason
	}{
		{"61 * * * *", "Minute is not in range [0-59]"},
		{"0 1 *", "CronString does not have 5-7 fields"},
		{"@fortnightly", "CronString does not have 5-7 fields"},
		{"*/0 * * * *", "Minute has invalid Step"},
		{"0 1 * * fri-mon", "DayOfWeek End is before Start"},
		{"@every 500ms", "interval is too small"},
		{"TZ=Europe/Berlin 0 1 * * *", "conflicting timezone names"},
	}
	ctx := context.Background()
	f := startWorker(t)
	devs := f.registerDevices(t, "ro-badcron-", 1)
	const name = "ro-badcron"
	endRollout(t, name)
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			r := runCLI(t, ctx, servers(f.dbURL, rolloutSchedule(name, "--devices", devs[0], "--cron", tt.expr)...)...)
			r.check(t, exitUsage, fmt.Sprintf("--cron %q: the Temporal server does not accept it: %s", tt.expr, tt.why),
				"Give 5 fields (minute hour day-of-month month day-of-week)", "the time zone goes in --tz")
			for _, internal := range []string{"rpc error", "InvalidArgument", "Invalid schedule spec"} {
				if strings.Contains(r.stderr, internal) {
					t.Errorf("the message shows %q:\n%s", internal, r.stderr)
				}
			}
			if r.stdout != "" {
				t.Errorf("a refused schedule wrote to stdout:\n%s", r.stdout)
			}
		})
	}
	_, err := testenv.TemporalClient().ScheduleClient().GetHandle(ctx, rolloutScheduleID(name)).Describe(ctx)
	if !isNotFound(err) {
		t.Errorf("describe the schedule of the refused expressions: %v, want not found", err)
	}
	if lists, err := f.store.TargetLists(ctx, name); err != nil || len(lists) != 0 {
		t.Errorf("stored device lists after the refused schedules: %+v (%v), want none", lists, err)
	}
	// A good expression of the same request is taken.
	runCLI(t, ctx, servers(f.dbURL, rolloutSchedule(name, "--devices", devs[0], "--cron", "0 1 * * mon-fri 2099")...)...).check(t, 0)
}

// TestRolloutConcurrentStartsOneWins starts two rollouts of one name at once, from two
// processes, with disjoint device lists, a few times over: each time exactly one starts, and
// its rollout upgrades exactly its own list; the other exits 3, and its devices get no command
// and no upgrade record, and its list is not kept.
func TestRolloutConcurrentStartsOneWins(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	const name = "ro-race"
	endRollout(t, name)
	for round := 1; round <= 3; round++ {
		lists := [2][]string{
			f.registerDevices(t, fmt.Sprintf("ro-race-%d-a", round), 5),
			f.registerDevices(t, fmt.Sprintf("ro-race-%d-b", round), 5),
		}
		var procs [2]*process
		for i, l := range lists {
			procs[i] = startProcess(t, servers(f.dbURL, rolloutStart(name, "--devices", strings.Join(l, ","))...)...)
		}
		res := [2]result{procs[0].wait(t), procs[1].wait(t)}
		won := slices.IndexFunc(res[:], func(r result) bool { return r.code == 0 })
		if won < 0 || res[1-won].code != exitAlreadyRunning {
			t.Fatalf("round %d: exit codes %d and %d, want 0 and %d\nstderr a:\n%s\nstderr b:\n%s", round, res[0].code, res[1].code,
				exitAlreadyRunning, res[0].stderr, res[1].stderr)
		}
		winner, loser := lists[won], lists[1-won]
		res[1-won].check(t, exitAlreadyRunning, "rollout ro-race is already running", "nothing was started")

		// The devices answer only now: the winner's rollout ran while the loser tried.
		f.answer(t, func(dev string) bool { return slices.Contains(winner, dev) })
		rep := waitState(t, f.dbURL, name, ota.RolloutCompleted)
		if rep.Total != len(winner) || rep.Counts != (ota.Counts{Started: len(winner), Succeeded: len(winner)}) {
			t.Errorf("round %d: the rollout ended %+v, want the winner's %d devices upgraded", round, rep.RolloutProgress, len(winner))
		}
		sent := f.pub.sent()
		for _, d := range winner {
			if sent[d] != 1 {
				t.Errorf("round %d: winner's device %s got %d commands, want 1", round, d, sent[d])
			}
		}
		for _, d := range loser {
			if sent[d] != 0 {
				t.Errorf("round %d: loser's device %s got %d commands", round, d, sent[d])
			}
			if u, err := f.store.LatestUpgrade(ctx, d); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("round %d: loser's device %s has an upgrade record %+v (%v)", round, d, u, err)
			}
		}
		stored, err := f.store.TargetLists(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range stored {
			devs, err := f.store.ListDevices(ctx, ota.DeviceFilter{List: l.Key})
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range devs {
				if slices.Contains(loser, d.ID) {
					t.Errorf("round %d: the loser's list %s is still stored", round, l.Key)
					break
				}
			}
		}
	}
}

// recordHistoriesEnv names a directory where TestScheduleFiresWhileRolloutRuns writes the
// histories of the ScheduledRolloutWorkflow runs it sees, for the replay tests of
// workflows/testdata: OTAFLOW_RECORD_HISTORIES=$PWD/workflows/testdata go test -run
// TestScheduleFiresWhileRolloutRuns ./starter
const recordHistoriesEnv = "OTAFLOW_RECORD_HISTORIES"

// recordHistory writes a workflow run's history as JSON, as `temporal workflow show --output
// json` does, to file in the directory recordHistoriesEnv names; without it, nothing.
func recordHistory(t *testing.T, workflowID, runID, file string) {
	t.Helper()
	dir := os.Getenv(recordHistoriesEnv)
	if dir == "" {
		return
	}
	ctx := context.Background()
	hist := &historypb.History{}
	it := testenv.TemporalClient().GetWorkflowHistory(ctx, workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		hist.Events = append(hist.Events, ev)
	}
	b, err := temporalproto.CustomJSONMarshalOptions{}.Marshal(hist)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %s (%d events)", file, len(hist.Events))
}

// TestScheduleFiresWhileRolloutRuns fires a rollout's schedule while a rollout of its name
// runs: no second rollout starts, the scheduled start says it was skipped, and the commands
// that take the name reach the one rollout. Once that rollout has ended, the schedule starts
// the next one under the same workflow ID.
func TestScheduleFiresWhileRolloutRuns(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	f.registerDevices(t, "ro-dup-", 2)
	const name = "ro-dup"
	endRollout(t, name)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }
	c := testenv.TemporalClient()
	id := ota.RolloutWorkflowID(name)

	// The devices do not answer yet: the rollout runs until the test says.
	var first rolloutStartReport
	r := cli(rolloutStart(name, "--prefix", "ro-dup-", "--json")...)
	r.check(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &first); err != nil {
		t.Fatal(err)
	}
	f.command(t, "ro-dup-1", 1)
	// In 2099 only: it fires when the test triggers it.
	cli(rolloutSchedule(name, "--prefix", "ro-dup-", "--cron", "0 1 * * * 2099")...).check(t, 0)
	h := c.ScheduleClient().GetHandle(ctx, rolloutScheduleID(name))
	if err := h.Trigger(ctx, client.ScheduleTriggerOptions{}); err != nil {
		t.Fatal(err)
	}
	var entry *scheduleEntry
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		entry = scheduleListed(c, f.dbURL, name)
		assert.True(c, entry != nil && entry.LastStart != nil && entry.LastStart.Outcome != startStarting, "listed: %+v", entry)
	}, 20*time.Second, 20*time.Millisecond, "the scheduled start to end")
	last := entry.LastStart
	if last.Outcome != startSkipped || last.Rollout != "" ||
		last.Detail != "rollout ro-dup is already running (workflow rollout-ro-dup); this scheduled start was skipped" {
		t.Errorf("the scheduled start = %+v, want it skipped", last)
	}
	recordHistory(t, last.WorkflowID, last.RunID, "scheduled-rollout-skipped.json")

	// One rollout of the name runs: the first.
	running, err := listRollouts(ctx, c, fmt.Sprintf("%s AND ExecutionStatus = 'Running'", rolloutQuery(name, "")))
	if err != nil {
		t.Fatal(err)
	}
	if len(running) != 1 || running[0].WorkflowID != id || running[0].RunID != first.RunID {
		t.Errorf("running rollouts of %s = %+v, want only the first (%s)", name, running, first.RunID)
	}
	r = cli("rollout", "pause", name, "--reason", "one at a time")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Paused rollout ro-dup (workflow rollout-ro-dup)") {
		t.Errorf("pause printed %q", r.stdout)
	}
	rep := statusJSON(t, f.dbURL, name)
	if rep.WorkflowID != id || rep.RunID != first.RunID || rep.State != ota.RolloutPaused || rep.Total != 2 || rep.Counts.Started != 2 {
		t.Errorf("status = %+v, want the first rollout, paused, with its 2 devices", rep)
	}
	cli("rollout", "cancel", name, "--cancel-running", "--wait").check(t, 0)

	// With no rollout running, the schedule starts the next one as rollout-ro-dup.
	f.answer(t, nil)
	if err := h.Trigger(ctx, client.ScheduleTriggerOptions{}); err != nil {
		t.Fatal(err)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		entry = scheduleListed(c, f.dbURL, name)
		assert.True(c, entry != nil && entry.LastStart != nil && entry.LastStart.RunID != last.RunID &&
			entry.LastStart.Outcome != startStarting, "listed: %+v", entry)
	}, 20*time.Second, 20*time.Millisecond, "the second scheduled start to end")
	if l := entry.LastStart; l.Outcome != startStarted || l.Rollout != id || len(entry.RecentWorkflowIDs) != 2 {
		t.Errorf("the second scheduled start = %+v (recent %v), want rollout %s started", l, entry.RecentWorkflowIDs, id)
	}
	recordHistory(t, entry.LastStart.WorkflowID, entry.LastStart.RunID, "scheduled-rollout-started.json")
	rep = waitState(t, f.dbURL, name, ota.RolloutCompleted)
	if rep.WorkflowID != id || rep.RunID == first.RunID || rep.Counts != (ota.Counts{Started: 2, Succeeded: 2}) {
		t.Errorf("the scheduled rollout = %+v, want a new run of %s that upgraded both devices", rep, id)
	}
}

// TestScheduleOfEarlierVersion fires a schedule as earlier versions created them, which starts
// the rollout itself as rollout-<name>-<scheduled time>: status, pause and cancel still find
// it by name, and `schedule list` shows it.
func TestScheduleOfEarlierVersion(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	f.registerDevices(t, "ro-old-", 1)
	const name = "ro-old"
	endRollout(t, name)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }
	c := testenv.TemporalClient()

	req := ota.RolloutRequest{Name: name, Targets: ota.Targets{Prefix: "ro-old-"}, SkipPreflight: true,
		Upgrade: ota.UpgradeRequest{Type: "firmware", Version: "1.1", URL: "https://files.example.com/fw/1.1.bin",
			MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1024}}.WithDefaults()
	opts := ota.RolloutStartOptions(req)
	h, err := c.ScheduleClient().Create(ctx, client.ScheduleOptions{
		ID:   rolloutScheduleID(name),
		Spec: client.ScheduleSpec{CronExpressions: []string{"0 1 * * * 2099"}},
		Action: &client.ScheduleWorkflowAction{ID: opts.ID, Workflow: ota.RolloutWorkflowName,
			Args: []any{ota.RolloutInput{Request: req}}, TaskQueue: opts.TaskQueue, Memo: opts.Memo,
			TypedSearchAttributes: opts.TypedSearchAttributes, StaticSummary: opts.StaticSummary},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Trigger(ctx, client.ScheduleTriggerOptions{}); err != nil {
		t.Fatal(err)
	}
	var ref rolloutRef
	require.Eventually(t, func() bool {
		ref, err = findRollout(ctx, c, name)
		return err == nil && ref.running()
	}, 20*time.Second, 20*time.Millisecond, "the old schedule to start the rollout")
	if !strings.HasPrefix(ref.WorkflowID, ota.RolloutWorkflowID(name)+"-") {
		t.Fatalf("the rollout runs as %s, want %s-<time>", ref.WorkflowID, ota.RolloutWorkflowID(name))
	}
	f.command(t, "ro-old-1", 1)
	if rep := statusJSON(t, f.dbURL, name); rep.WorkflowID != ref.WorkflowID || rep.Counts.Started != 1 {
		t.Errorf("status = %+v, want %s", rep, ref.WorkflowID)
	}
	r := cli("rollout", "pause", name)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Paused rollout ro-old (workflow "+ref.WorkflowID+")") {
		t.Errorf("pause printed %q", r.stdout)
	}
	if entry := scheduleListed(t, f.dbURL, name); entry == nil || entry.State != scheduleActive || entry.LastStart == nil ||
		entry.LastStart.Outcome != startStarted || entry.LastStart.Rollout != ref.WorkflowID {
		t.Errorf("schedule list shows %+v", entry)
	}
	r = cli("rollout", "cancel", name, "--cancel-running", "--wait")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Canceling rollout ro-old (workflow "+ref.WorkflowID+")") {
		t.Errorf("cancel printed %q", r.stdout)
	}
}

// TestRolloutNameUsedAgain starts a rollout of a name that an ended rollout had: `rollout
// status` counts the records of the new rollout only (they agree with its workflow), and
// `rollout list` lists both, once each, and says which is the latest.
func TestRolloutNameUsedAgain(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	f.registerDevices(t, "ro-again-", 2)
	f.answer(t, nil)
	const name = "ro-again"
	endRollout(t, name)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }

	var runs [2]rolloutStartReport
	for i := range runs {
		// The fake devices never report to PostgreSQL: both rollouts upgrade both devices.
		r := cli(rolloutStart(name, "--prefix", "ro-again-", "--wait", "--json")...)
		r.check(t, 0)
		if err := json.Unmarshal([]byte(r.stdout), &runs[i]); err != nil {
			t.Fatalf("rollout start %d: %v\n%s", i+1, err, r.stdout)
		}
	}
	if runs[0].RunID == runs[1].RunID {
		t.Fatalf("both starts report run %s", runs[0].RunID)
	}

	rep := statusJSON(t, f.dbURL, name)
	if rep.RunID != runs[1].RunID || rep.Counts != (ota.Counts{Started: 2, Succeeded: 2}) {
		t.Fatalf("status = run %s, counts %+v; want the second rollout, 2 succeeded", rep.RunID, rep.Counts)
	}
	if len(rep.StoreCounts) != 1 || rep.StoreCounts[ota.StateSucceeded] != 2 {
		t.Errorf("status --json store counts = %v, want the second rollout's 2 succeeded (not both rollouts' 4)", rep.StoreCounts)
	}
	r := cli("rollout", "status", name)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Records   succeeded 2  (PostgreSQL; agree with the workflow)") {
		t.Errorf("rollout status:\n%s", r.stdout)
	}

	var entries []rolloutListEntry
	require.Eventually(t, func() bool {
		r := cli("rollout", "list", "--json")
		r.check(t, 0)
		var all []rolloutListEntry
		if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
			t.Fatalf("rollout list --json: %v\n%s", err, r.stdout)
		}
		entries = entries[:0]
		for _, e := range all {
			if e.Name == name {
				entries = append(entries, e)
			}
		}
		return len(entries) == 2 && entries[0].State == string(ota.RolloutCompleted) && entries[1].State == string(ota.RolloutCompleted)
	}, 10*time.Second, 50*time.Millisecond, "rollout list to show both rollouts of "+name)
	if entries[0].RunID != runs[1].RunID || !entries[0].Latest || entries[1].RunID != runs[0].RunID || entries[1].Latest {
		t.Errorf("rollout list --json of %s = %+v, want the second rollout (latest), then the first", name, entries)
	}
	// A third rollout of the name that has started no device yet (its window opens in 12
	// hours) has no records, whatever the earlier ones left.
	opens := time.Now().UTC().Add(12 * time.Hour)
	window := opens.Format("15:04") + "-" + opens.Add(time.Hour).Format("15:04")
	cli(rolloutStart(name, "--prefix", "ro-again-", "--window", window)...).check(t, 0)
	waitState(t, f.dbURL, name, ota.RolloutWaitingWindow)
	r = cli("rollout", "status", name)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Records   none  (PostgreSQL; agree with the workflow)") {
		t.Errorf("rollout status of a rollout that started no device yet:\n%s", r.stdout)
	}
	cli("rollout", "cancel", name, "--wait").check(t, 0)

	// The table says the same; --state shows the rollouts in that state, and still calls
	// latest only the latest of the name.
	row := regexp.MustCompile(`(?m)^` + name + `\s+(\S+)\s.*\s(latest|earlier)$`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "canceled latest, completed earlier, completed earlier"},
		{[]string{"--state", string(ota.RolloutCompleted)}, "completed earlier, completed earlier"},
	} {
		var rows []string
		require.Eventually(t, func() bool {
			r := cli(append([]string{"rollout", "list"}, tc.args...)...)
			r.check(t, 0)
			rows = rows[:0]
			for _, m := range row.FindAllStringSubmatch(r.stdout, -1) {
				rows = append(rows, m[1]+" "+m[2])
			}
			return strings.Join(rows, ", ") == tc.want
		}, 10*time.Second, 50*time.Millisecond, "rollout list to show the canceled rollout")
	}
}

// TestRolloutStartReportsPreflight: `rollout start` waits for the pre-flight and reports it.
// A package that fails the check ends it with exit code 1 and a plain message (no SDK
// internals), also in `rollout status`; targets that match no device too, unless
// --allow-empty; a package that passes says how many targets the rollout has.
func TestRolloutStartReportsPreflight(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	f.registerDevices(t, "ro-pre-", 2)
	f.answer(t, nil)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }
	body := bytes.Repeat([]byte("firmware"), 128) // 1,024 bytes
	sum := md5.Sum(body)
	good := hex.EncodeToString(sum[:])
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	t.Cleanup(files.Close)
	pkg := func(name, md5sum string, more ...string) []string {
		return slices.Concat([]string{"rollout", "start", "--name", name, "--type", "firmware", "--version", "1.1",
			"--url", files.URL + "/fw-1.1.bin", "--md5", md5sum, "--size", "1024"}, more)
	}
	sdkWords := []string{"activity error", "scheduledEventID", "(type:", "retryable"}

	t.Run("package fails the check", func(t *testing.T) {
		const name = "ro-pre-bad"
		endRollout(t, name)
		bad := "0123456789abcdef0123456789abcdef"
		want := "rollout ro-pre-bad ended failed: pre-flight check failed, no device was touched: package " + files.URL +
			"/fw-1.1.bin is 1024 bytes with md5 " + good + ", but the upgrade says 1024 bytes with md5 " + bad
		r := cli(pkg(name, bad, "--prefix", "ro-pre-")...)
		r.check(t, exitFailure, want)
		if !strings.Contains(r.stdout, "Started rollout ro-pre-bad") || strings.Contains(r.stdout, "Follow it") {
			t.Errorf("rollout start printed:\n%s", r.stdout)
		}
		for _, w := range sdkWords {
			if strings.Contains(r.stderr, w) {
				t.Errorf("rollout start shows SDK internals (%q):\n%s", w, r.stderr)
			}
		}
		rep := statusJSON(t, f.dbURL, name)
		if rep.State != ota.RolloutFailed || !strings.HasPrefix(want, "rollout ro-pre-bad ended failed: "+rep.Reason) || rep.Reason == "" {
			t.Errorf("status --json: state %s, reason %q", rep.State, rep.Reason)
		}
		r = cli("rollout", "status", name)
		r.check(t, 0)
		for _, w := range sdkWords {
			if strings.Contains(r.stdout, w) {
				t.Errorf("rollout status shows SDK internals (%q):\n%s", w, r.stdout)
			}
		}
		if n := len(f.pub.sent()); n != 0 {
			t.Errorf("%d devices got a command after a failed pre-flight", n)
		}
	})

	t.Run("no device matches", func(t *testing.T) {
		const name = "ro-pre-empty"
		endRollout(t, name)
		r := cli(pkg(name, good, "--prefix", "ro-nobody-", "--json")...)
		r.check(t, exitFailure, `rollout ro-pre-empty matched no device (registered, enabled devices with IDs starting "ro-nobody-", `+
			"not already reporting firmware_ver=1.1): nothing to upgrade", "--allow-empty")
		var rep rolloutStartReport
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.Preflight == nil || rep.Preflight.Total != 0 || rep.Error == "" {
			t.Errorf("rollout start --json = %+v (%v)\n%s", rep, err, r.stdout)
		}
		st := waitState(t, f.dbURL, name, ota.RolloutCompleted)
		if !strings.HasPrefix(st.Reason, "matched no device") {
			t.Errorf("the empty rollout's reason = %q", st.Reason)
		}
		r = cli(pkg(name, good, "--prefix", "ro-nobody-", "--allow-empty", "--wait")...)
		r.check(t, 0)
		if !strings.Contains(r.stdout, "Rollout ro-pre-empty matched no device") || !strings.Contains(r.stdout, "State     completed") {
			t.Errorf("rollout start --allow-empty --wait printed:\n%s", r.stdout)
		}
	})

	t.Run("package passes", func(t *testing.T) {
		const name = "ro-pre-good"
		endRollout(t, name)
		r := cli(pkg(name, good, "--prefix", "ro-pre-")...)
		r.check(t, 0)
		for _, w := range []string{"Pre-flight: the rollout checks the package (downloads it once) and fixes its targets ...",
			"Pre-flight passed: 2 target(s) in 1 wave(s).", "Follow it with `starter rollout status ro-pre-good --watch`."} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("rollout start output lacks %q:\n%s", w, r.stdout)
			}
		}
		waitState(t, f.dbURL, name, ota.RolloutCompleted)
	})
}
