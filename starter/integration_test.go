package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/serviceerror"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/workflows"
)

// starterMainEnv makes the test binary run as starter (the arguments are the command line
// without the program name), so that tests can run several starters as separate processes,
// as operators do; in-process runs must not parse command lines at the same time.
const starterMainEnv = "OTAFLOW_STARTER_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(starterMainEnv) == "1" {
		os.Exit(run(context.Background(), append([]string{"starter"}, os.Args[1:]...), os.Stdout, os.Stderr))
	}
	flag.Parse()
	if fuzzOnly() {
		os.Exit(m.Run())
	}
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

// fuzzOnly reports whether this run of the test binary only fuzzes, which needs no server: a
// fuzzing worker process, or `go test -run '^$' -fuzz F` (how scripts/test runs each target).
func fuzzOnly() bool {
	value := func(name string) string {
		if f := flag.Lookup(name); f != nil {
			return f.Value.String()
		}
		return ""
	}
	return value("test.fuzzworker") == "true" || (value("test.fuzz") != "" && value("test.run") == "^$")
}

// servers returns the global flags that point starter at the test servers, with a database of
// the test's own.
func servers(dbURL string, args ...string) []string {
	return append([]string{"--temporal-address", testenv.TemporalAddress(), "--temporal-namespace", testenv.TemporalNamespace(),
		"--database-url", dbURL}, args...)
}

// recorder is the worker's MQTT publisher in these tests: it keeps the commands instead of
// sending them (MQTT is not what the starter's tests are about).
type recorder struct {
	mu       sync.Mutex
	commands map[string][]protocol.UpgradeCommand // by device
	cancels  map[string][]string                  // the command IDs of cancel messages, by device
}

// Publish records an upgrade command published to a device's command topic, or a cancel
// message published to its cancel topic.
func (r *recorder) Publish(_ context.Context, topic string, payload []byte) error {
	dev, kind, err := protocol.ParseTopic(topic)
	if err != nil {
		return err
	}
	if kind == protocol.KindCancel {
		c, err := protocol.ParseCancel(payload)
		if err != nil {
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.cancels == nil {
			r.cancels = map[string][]string{}
		}
		r.cancels[dev] = append(r.cancels[dev], c.ID)
		return nil
	}
	if kind != protocol.KindCommand {
		return fmt.Errorf("the worker published to %s, not a command or cancel topic", topic)
	}
	cmd, err := protocol.ParseCommand(payload)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.commands == nil {
		r.commands = map[string][]protocol.UpgradeCommand{}
	}
	r.commands[dev] = append(r.commands[dev], cmd)
	return nil
}

// nth returns the n-th command (from 1) sent to a device, if sent.
func (r *recorder) nth(dev string, n int) (protocol.UpgradeCommand, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmds := r.commands[dev]
	if len(cmds) < n {
		return protocol.UpgradeCommand{}, false
	}
	return cmds[n-1], true
}

// fixture is a test's database and a worker running in-process against it.
type fixture struct {
	dbURL string
	store *store.Store
	pub   *recorder
}

// startWorker opens a database of the test's own and runs a worker that records in it.
func startWorker(t *testing.T) *fixture {
	t.Helper()
	return startWorkerWith(t, nil)
}

// startWorkerWith is startWorker with the worker's event notifications made by notifications
// (nil: none).
func startWorkerWith(t *testing.T, notifications func(st *store.Store) *activities.Notifications) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{dbURL: testenv.DatabaseURL(t), pub: &recorder{}}
	st, err := store.Open(ctx, f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	f.store = st
	a := &activities.Activities{Publisher: f.pub, Store: st}
	if notifications != nil {
		a.Notify = notifications(st)
	}
	w := workflows.NewWorker(testenv.TemporalClient(), a)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return f
}

// endUpgrade cancels a device's upgrade if it still runs, so that no workflow outlives its
// test's worker.
func endUpgrade(t *testing.T, dev string) {
	t.Cleanup(func() {
		c := testenv.TemporalClient()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if runID, err := runningUpgrade(ctx, c, dev); err == nil && runID != "" {
			_ = c.CancelWorkflow(ctx, ota.DeviceWorkflowID(dev), runID)
			_, _ = ota.UpgradeResult(ctx, c.GetWorkflow(ctx, ota.DeviceWorkflowID(dev), runID))
		}
	})
}

// command waits for the worker to send dev its n-th command (from 1, over all its upgrades
// in the test) and returns it.
func (f *fixture) command(t *testing.T, dev string, n int) protocol.UpgradeCommand {
	t.Helper()
	var cmd protocol.UpgradeCommand
	require.Eventually(t, func() bool {
		var ok bool
		cmd, ok = f.pub.nth(dev, n)
		return ok
	}, 20*time.Second, 20*time.Millisecond, fmt.Sprintf("command %d to %s", n, dev))
	return cmd
}

// signalProgress sends the device's progress report to its workflow, as the bridge does.
func signalProgress(t *testing.T, dev string, p protocol.Progress) {
	t.Helper()
	err := testenv.TemporalClient().SignalWorkflow(context.Background(), ota.DeviceWorkflowID(dev), "",
		ota.SignalProgress, ota.ProgressSignal{Progress: p, ReceivedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
}

// signalStatus sends the device's status report to its workflow, as the bridge does.
func signalStatus(t *testing.T, dev string, st protocol.Status) {
	t.Helper()
	err := testenv.TemporalClient().SignalWorkflow(context.Background(), ota.DeviceWorkflowID(dev), "",
		ota.SignalStatus, ota.StatusSignal{Status: st, ReceivedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
}

// running is a starter command running in a goroutine.
type running struct {
	out, errOut testenv.Buffer
	done        chan int
}

func startCLI(ctx context.Context, args ...string) *running {
	r := &running{done: make(chan int, 1)}
	go func() { r.done <- run(ctx, append([]string{"starter"}, args...), &r.out, &r.errOut) }()
	return r
}

// waitOutput waits until the command's stdout holds want.
func (r *running) waitOutput(t *testing.T, want string) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out := r.out.String()
		assert.True(c, strings.Contains(out, want), "stdout so far:\n%s\nstderr:\n%s", out, r.errOut.String())
	}, 20*time.Second, 20*time.Millisecond, "output %q", want)
}

// wait waits for the command to end and returns its result.
func (r *running) wait(t *testing.T) result {
	t.Helper()
	select {
	case code := <-r.done:
		return result{code: code, stdout: r.out.String(), stderr: r.errOut.String()}
	case <-time.After(30 * time.Second):
		t.Fatalf("the command did not end\nstdout:\n%s\nstderr:\n%s", r.out.String(), r.errOut.String())
		return result{}
	}
}

// process is starter running as a process of its own (see starterMainEnv).
type process struct {
	cmd         *exec.Cmd
	out, errOut testenv.Buffer
	done        chan struct{}
}

// startProcess runs starter with args in a process of its own.
func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: exec.Command(exe, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), starterMainEnv+"=1")
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errOut
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait waits for the process to end and returns its result.
func (p *process) wait(t *testing.T) result {
	t.Helper()
	select {
	case <-p.done:
		return result{code: p.cmd.ProcessState.ExitCode(), stdout: p.out.String(), stderr: p.errOut.String()}
	case <-time.After(time.Minute):
		t.Fatalf("starter %v did not end\nstdout:\n%s\nstderr:\n%s", p.cmd.Args[1:], p.out.String(), p.errOut.String())
		return result{}
	}
}

var secretLine = regexp.MustCompile(`(?m)^MQTT secret: ([0-9a-f]{64})$`)

func TestDevicesRoundTrip(t *testing.T) {
	ctx := context.Background()
	dbURL := testenv.DatabaseURL(t)
	// The registry commands need no Temporal: point it nowhere.
	cli := func(args ...string) result {
		return runCLI(t, ctx, append([]string{"--temporal-address", "127.0.0.1:1", "--database-url", dbURL}, args...)...)
	}
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	r := cli("devices", "list")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "(no devices)") {
		t.Errorf("an empty registry lists:\n%s", r.stdout)
	}
	r = cli("devices", "list", "--json")
	r.check(t, 0)
	var none []store.Device
	if err := json.Unmarshal([]byte(r.stdout), &none); err != nil || len(none) != 0 {
		t.Errorf("empty list --json = %q (%v), want []", r.stdout, err)
	}

	// add prints the secret once; only its hash is stored.
	r = cli("devices", "add", "--device", "dev-a", "--label", "site=lab", "--label", "ring=canary,beta")
	r.check(t, 0)
	m := secretLine.FindStringSubmatch(r.stdout)
	if m == nil || !strings.Contains(r.stdout, "not shown again") {
		t.Fatalf("devices add did not print the secret with its warning:\n%s", r.stdout)
	}
	secretA := m[1]
	verify := func(dev, secret string, want bool) {
		t.Helper()
		hash, _, err := st.DeviceCredentials(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		if hash == secret || strings.Contains(hash, secret) {
			t.Fatal("the secret is stored in clear")
		}
		if ok, err := credential.Verify(hash, secret); err != nil || ok != want {
			t.Fatalf("secret of %s verifies %v (%v), want %v", dev, ok, err, want)
		}
	}
	verify("dev-a", secretA, true)
	if d, err := st.GetDevice(ctx, "dev-a"); err != nil || d.Labels["site"] != "lab" || d.Labels["ring"] != "canary,beta" {
		t.Errorf("dev-a = %+v (%v), want its labels", d, err)
	}

	r = cli("devices", "add", "--device", "dev-a")
	r.check(t, exitFailure, "dev-a is already registered", "rotate-secret")
	verify("dev-a", secretA, true) // unchanged

	r = cli("devices", "add", "--device", "dev-b", "--json")
	r.check(t, 0)
	var added secretReport
	if err := json.Unmarshal([]byte(r.stdout), &added); err != nil || added.DeviceID != "dev-b" || len(added.Secret) != 64 {
		t.Fatalf("devices add --json = %q (%v)", r.stdout, err)
	}
	verify("dev-b", added.Secret, true)
	cli("devices", "add", "--device", "sensor-1").check(t, 0)
	if err := st.RecordStatus(ctx, "sensor-1", protocol.Status{"firmware_ver": "1.0", "app_ver": "2.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}

	// list, filtered, limited, as JSON.
	listIDs := func(args ...string) []string {
		t.Helper()
		r := cli(append([]string{"devices", "list", "--json"}, args...)...)
		r.check(t, 0)
		var devs []store.Device
		if err := json.Unmarshal([]byte(r.stdout), &devs); err != nil {
			t.Fatalf("devices list --json: %v\n%s", err, r.stdout)
		}
		var ids []string
		for _, d := range devs {
			ids = append(ids, d.ID)
		}
		return ids
	}
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"dev-a", "dev-b", "sensor-1"}},
		{[]string{"--prefix", "dev-"}, []string{"dev-a", "dev-b"}},
		{[]string{"--prefix", "sensor"}, []string{"sensor-1"}},
		{[]string{"--prefix", "nothing"}, nil},
		{[]string{"--limit", "2"}, []string{"dev-a", "dev-b"}},
		{[]string{"--prefix", "dev-", "--limit", "1"}, []string{"dev-a"}},
	} {
		if got := listIDs(tt.args...); !slices.Equal(got, tt.want) {
			t.Errorf("devices list %v = %v, want %v", tt.args, got, tt.want)
		}
	}
	r = cli("devices", "list")
	r.check(t, 0)
	if !regexp.MustCompile(`(?m)^sensor-1\s+app_ver=2\.1 firmware_ver=1\.0\s+\d{4}-\d\d-\d\dT\S+\s+no$`).MatchString(r.stdout) {
		t.Errorf("the table does not show sensor-1's versions, last seen and disabled:\n%s", r.stdout)
	}

	// More devices than one page: every one listed once, in order.
	var want []string
	for i := range listPageSize + 7 {
		id := fmt.Sprintf("bulk-%04d", i)
		want = append(want, id)
		if err := st.AddDevice(ctx, id, "unused", nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := listIDs("--prefix", "bulk-"); !slices.Equal(got, want) {
		t.Errorf("paginated list has %d devices, want %d in order", len(got), len(want))
	}
	if got := listIDs("--prefix", "bulk-", "--limit", fmt.Sprint(listPageSize+2)); !slices.Equal(got, want[:listPageSize+2]) {
		t.Errorf("paginated list with a limit has %d devices, want %d", len(got), listPageSize+2)
	}

	// rotate-secret: a new secret replaces the old; an unknown device is refused, not created.
	r = cli("devices", "rotate-secret", "--device", "dev-a")
	r.check(t, 0)
	m = secretLine.FindStringSubmatch(r.stdout)
	if m == nil || m[1] == secretA {
		t.Fatalf("rotate-secret printed no new secret:\n%s", r.stdout)
	}
	verify("dev-a", m[1], true)
	verify("dev-a", secretA, false)
	r = cli("devices", "rotate-secret", "--device", "ghost")
	r.check(t, exitFailure, "unknown device ghost")
	if _, err := st.GetDevice(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rotate-secret of an unknown device registered it: %v", err)
	}

	// disable / enable. Disable also cancels the device's running upgrade, which needs Temporal:
	// without it, the device is disabled all the same, and the command says what it could not do.
	cli("devices", "disable", "--device", "dev-b").check(t, exitFailure,
		"device dev-b is disabled, but its running upgrade (workflow ota-dev-b) could not be canceled", "starter cancel --device dev-b")
	if _, disabled, _ := st.DeviceCredentials(ctx, "dev-b"); !disabled {
		t.Error("dev-b is not disabled")
	}
	r = runCLI(t, ctx, servers(dbURL, "devices", "disable", "--device", "dev-b")...)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Device dev-b disabled") || !strings.Contains(r.stdout, "It had no upgrade running.") {
		t.Errorf("devices disable printed:\n%s", r.stdout)
	}
	r = cli("devices", "list", "--prefix", "dev-b")
	if !regexp.MustCompile(`(?m)^dev-b\s+-\s+never\s+yes$`).MatchString(r.stdout) {
		t.Errorf("the list does not show dev-b disabled:\n%s", r.stdout)
	}
	cli("devices", "enable", "--device", "dev-b").check(t, 0)
	if _, disabled, _ := st.DeviceCredentials(ctx, "dev-b"); disabled {
		t.Error("dev-b is still disabled")
	}
	cli("devices", "disable", "--device", "ghost").check(t, exitFailure, "unknown device ghost")
	cli("devices", "enable", "--device", "ghost").check(t, exitFailure, "unknown device ghost")

	// status without Temporal: the records, and a warning instead of the live state.
	r = cli("status", "--device", "sensor-1")
	r.check(t, 0, "no live state", "cannot reach Temporal")
	for _, want := range []string{"sensor-1", "app_ver=2.1 firmware_ver=1.0", "No upgrade recorded."} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	cli("status", "--device", "ghost").check(t, exitFailure, "unknown device ghost")
}

func TestUpgradeWaitFollowsProgressToSuccess(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	const dev = "wait-ok-1"
	endUpgrade(t, dev)
	runCLI(t, ctx, servers(f.dbURL, "devices", "add", "--device", dev)...).check(t, 0)

	up := startCLI(ctx, servers(f.dbURL, "upgrade", "--device", dev, "--type", "firmware", "--version", "1.1",
		"--url", "https://files.example.com/fw/1.1.bin", "--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "1024", "--wait")...)
	cmd := f.command(t, dev, 1)
	up.waitOutput(t, dev+"  sent  0%  attempt 1/3")
	st, err := store.Open(ctx, f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// As the bridge does: the report is stored (which records the download in the upgrade
	// record), then forwarded.
	first := protocol.Progress{ID: cmd.ID, Type: "firmware", Version: "1.1", Progress: 42, Desc: "downloading"}
	if err := st.RecordProgress(ctx, dev, first, time.Now()); err != nil {
		t.Fatal(err)
	}
	signalProgress(t, dev, first)
	up.waitOutput(t, dev+"  downloading  42%  attempt 1/3")

	// While it runs, status --json shows the live state and the records.
	r := runCLI(t, ctx, servers(f.dbURL, "status", "--device", dev, "--json")...)
	r.check(t, 0)
	var rep statusReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if !rep.Running || rep.Live == nil || rep.Live.State != ota.StateDownloading || rep.Live.Progress != 42 || rep.Live.CommandID != cmd.ID {
		t.Errorf("status --json live = running %v %+v, want downloading 42%% of %s", rep.Running, rep.Live, cmd.ID)
	}
	if rep.Upgrade == nil || rep.Upgrade.State != ota.StateDownloading || rep.Upgrade.RunID != rep.RunID || rep.Device.ID != dev {
		t.Errorf("status --json record = %+v, want the running upgrade downloading", rep.Upgrade)
	}
	var states []ota.State
	for _, ev := range rep.Events {
		states = append(states, ev.State)
	}
	if !slices.Equal(states, []ota.State{ota.StateSent, ota.StateDownloading}) {
		t.Errorf("status --json events = %v, want sent, downloading", states)
	}
	// A report the bridge stored but did not forward shows as the last report.
	if err := st.RecordProgress(ctx, dev, protocol.Progress{ID: cmd.ID, Type: "firmware", Version: "1.1", Progress: 57, Desc: "downloading"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, ctx, servers(f.dbURL, "status", "--device", dev)...)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "Last report  57%  downloading") {
		t.Errorf("status lacks the last stored report:\n%s", r.stdout)
	}

	signalProgress(t, dev, protocol.Progress{ID: cmd.ID, Type: "firmware", Version: "1.1", Progress: 100, Desc: "downloaded"})
	up.waitOutput(t, dev+"  downloaded  100%  attempt 1/3")
	signalStatus(t, dev, protocol.Status{protocol.VersionKey("firmware"): "1.1"})
	r = up.wait(t)
	r.check(t, 0)
	if !strings.Contains(r.stdout, dev+"  succeeded  100%  attempt 1/3") || !strings.Contains(r.stdout, "workflow  "+ota.DeviceWorkflowID(dev)) {
		t.Errorf("upgrade --wait output:\n%s", r.stdout)
	}

	r = runCLI(t, ctx, servers(f.dbURL, "status", "--device", dev)...)
	r.check(t, 0)
	for _, want := range []string{"Latest upgrade: firmware 1.1", "succeeded  100%  attempt 1", "No upgrade running."} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status after the upgrade lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestUpgradeWaitReportsFailure(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	const dev = "wait-fail-1"
	endUpgrade(t, dev)
	runCLI(t, ctx, servers(f.dbURL, "devices", "add", "--device", dev)...).check(t, 0)

	up := startCLI(ctx, servers(f.dbURL, "upgrade", "--json", "--wait", "--device", dev, "--type", "app", "--version", "2.0",
		"--url", "http://files.example.com/app-2.0.apk", "--md5", "0123456789abcdef0123456789abcdef", "--size", "10", "--max-attempts", "1")...)
	cmd := f.command(t, dev, 1)
	signalProgress(t, dev, protocol.Progress{ID: cmd.ID, Type: "app", Version: "2.0", Progress: protocol.CodeMD5Mismatch, Desc: "md5 mismatch"})
	r := up.wait(t)
	r.check(t, exitFailure, "failed: code -2 (md5 check failed) md5 mismatch")
	var rep upgradeReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("upgrade --json --wait printed no JSON object: %v\n%s", err, r.stdout)
	}
	if rep.Result == nil || rep.Result.State != ota.StateFailed || rep.Result.ErrorCode != protocol.CodeMD5Mismatch || rep.WorkflowID != ota.DeviceWorkflowID(dev) {
		t.Errorf("upgrade --json result = %+v", rep)
	}

}

// TestUpgradeRefusesUnknownAndDisabledDevices: an upgrade of a device the registry does not
// know, or holds disabled, is bad input (exit code 2): nothing is started, nothing recorded.
func TestUpgradeRefusesUnknownAndDisabledDevices(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	const disabled = "refused-disabled-1"
	runCLI(t, ctx, servers(f.dbURL, "devices", "add", "--device", disabled)...).check(t, 0)
	if err := f.store.SetDisabled(ctx, disabled, true); err != nil {
		t.Fatal(err)
	}
	upgrade := func(dev string) []string {
		return []string{"upgrade", "--wait", "--device", dev, "--type", "app", "--version", "2.0",
			"--url", "http://files.example.com/app-2.0.apk", "--md5", "0123456789abcdef0123456789abcdef", "--size", "10"}
	}
	for _, tc := range []struct {
		dev  string
		want []string
	}{
		{"refused-unknown-1", []string{"unknown device refused-unknown-1: nothing was started", "starter devices add --device refused-unknown-1"}},
		{disabled, []string{"device refused-disabled-1 is disabled: nothing was started", "starter devices enable --device refused-disabled-1"}},
	} {
		t.Run(tc.dev, func(t *testing.T) {
			endUpgrade(t, tc.dev)
			r := runCLI(t, ctx, servers(f.dbURL, upgrade(tc.dev)...)...)
			r.check(t, exitUsage, tc.want...)
			if r.stdout != "" {
				t.Errorf("a refused upgrade printed:\n%s", r.stdout)
			}
			_, err := testenv.TemporalClient().DescribeWorkflow(ctx, ota.DeviceWorkflowID(tc.dev), "")
			var notFound *serviceerror.NotFound
			if !errors.As(err, &notFound) {
				t.Errorf("a workflow %s exists (%v), want none started", ota.DeviceWorkflowID(tc.dev), err)
			}
			if u, err := f.store.LatestUpgrade(ctx, tc.dev); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("an upgrade of %s was recorded: %+v (%v)", tc.dev, u, err)
			}
		})
	}
	// Without the registry it cannot check: bad usage too, before anything is dialled.
	runCLI(t, ctx, servers("", upgrade("refused-unknown-1")...)...).check(t, exitUsage, "checks the device registry", "DATABASE_URL")
}

func TestConcurrentUpgradeRefusedAndCancel(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	const dev = "cancel-1"
	endUpgrade(t, dev)
	runCLI(t, ctx, servers(f.dbURL, "devices", "add", "--device", dev)...).check(t, 0)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }

	r := cli("cancel", "--device", dev)
	r.check(t, exitFailure, "has no upgrade running")

	upgrade := []string{"upgrade", "--device", dev, "--type", "os", "--version", "9.1",
		"--url", "https://files.example.com/os-9.1.img", "--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "4096"}
	// upgrade --wait, interrupted: it stops waiting, and the upgrade goes on.
	waitCtx, interrupt := context.WithCancel(ctx)
	defer interrupt()
	waiting := startCLI(waitCtx, servers(f.dbURL, append(upgrade, "--wait")...)...)
	waiting.waitOutput(t, dev+"  sent  0%  attempt 1/3")
	interrupt()
	r = waiting.wait(t)
	r.check(t, exitInterrupted, "stopped waiting", "goes on", "starter cancel --device "+dev)
	runID := regexp.MustCompile(`(?m)^  run       (\S+)$`).FindStringSubmatch(r.stdout)
	link := "http://localhost:8233/namespaces/" + testenv.TemporalNamespace() + "/workflows/" + ota.DeviceWorkflowID(dev)
	if runID == nil || !strings.Contains(r.stdout, link) {
		t.Fatalf("upgrade printed no run ID or Web UI link %s:\n%s", link, r.stdout)
	}
	first := f.command(t, dev, 1)

	// A second upgrade of the same device is refused, naming the running one.
	r = cli(append(upgrade, "--version", "9.2")...)
	r.check(t, exitAlreadyRunning, "already has an upgrade running", ota.DeviceWorkflowID(dev), runID[1])

	r = cli("status", "--device", dev, "--json")
	r.check(t, 0)
	var rep statusReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Running || rep.RunID != runID[1] || rep.Live == nil || rep.Live.State != ota.StateSent || rep.Live.Version != "9.1" {
		t.Errorf("status --json = running %v run %s live %+v, want 9.1 sent in run %s", rep.Running, rep.RunID, rep.Live, runID[1])
	}

	r = cli("cancel", "--device", dev, "--wait")
	r.check(t, 0)
	if !strings.Contains(r.stdout, runID[1]) || !strings.Contains(r.stdout, dev+"  canceled") {
		t.Errorf("cancel --wait output:\n%s", r.stdout)
	}
	st, err := ota.UpgradeResult(ctx, testenv.TemporalClient().GetWorkflow(ctx, ota.DeviceWorkflowID(dev), runID[1]))
	if st.State != ota.StateCanceled {
		t.Errorf("the upgrade ended %s (%v), want canceled", st.State, err)
	}
	rec, err := f.store.LatestUpgrade(ctx, dev)
	if err != nil || rec.State != ota.StateCanceled || rec.FinishedAt == nil {
		t.Errorf("recorded upgrade = %+v (%v), want canceled and finished", rec, err)
	}
	// The device was told to stop the command it had (PROTOCOL.md 1.1's cancel message).
	f.pub.mu.Lock()
	cancels := slices.Clone(f.pub.cancels[dev])
	f.pub.mu.Unlock()
	if !slices.Equal(cancels, []string{first.ID}) {
		t.Errorf("cancel messages for %v, want one for the command %s", cancels, first.ID)
	}

	cli("cancel", "--device", dev).check(t, exitFailure, "has no upgrade running")
	// With nothing running, the device can be upgraded again.
	r = cli(append(upgrade, "--version", "9.2")...)
	r.check(t, 0)
	if cmd := f.command(t, dev, 2); cmd.Version != "9.2" {
		t.Errorf("the new upgrade sent %+v, want version 9.2", cmd)
	}
	cli("cancel", "--device", dev, "--wait").check(t, 0)
}
