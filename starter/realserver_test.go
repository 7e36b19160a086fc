package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/temporalconn"
)

// TestSetupAndRolloutOnRealTemporalServer runs the Temporal side of the production topology
// natively: PostgreSQL and the real Temporal server (go.temporal.io/server, PostgreSQL
// persistence and visibility) from deploy/temporal's configuration, as docker-compose.yml
// runs it. `starter setup` prepares the new servers, and run again finds nothing to do and
// says so; then a rollout to simulated devices (over the embedded broker) completes, each
// device upgraded once, with the workflow's counts equal to PostgreSQL's records.
func TestSetupAndRolloutOnRealTemporalServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bins := testenv.TemporalServerBinaries(t)
	dir := t.TempDir()
	pg, err := localstack.StartPostgres(ctx, localstack.PostgresOptions{Dir: filepath.Join(dir, "pg"), NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Stop() })
	serverLog, err := os.Create(filepath.Join(dir, "temporal.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer serverLog.Close()
	tp, err := localstack.StartTemporalServer(ctx, localstack.TemporalServerOptions{Binaries: bins, Dir: filepath.Join(dir, "temporal"),
		PostgresURL: pg.URL(), Log: serverLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Stop() })
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(serverLog.Name())
			t.Logf("the Temporal server's log ends:\n%s", lastLines(string(b), 30))
		}
	}()

	servers := []string{"--temporal-address", tp.Address(), "--database-url", pg.URL()}
	first := runCLI(t, ctx, append(servers, "setup")...)
	first.check(t, 0)
	t.Logf("first setup:\n%s", first.stdout)
	for _, want := range []string{"created namespace default (retention 72h0m0s)", "registered OtaDevice, OtaTargetVersion",
		"applied migrations 001_init.sql", "Setup complete."} {
		if !strings.Contains(first.stdout, want) {
			t.Errorf("the first setup does not say %q:\n%s", want, first.stdout)
		}
	}
	second := runCLI(t, ctx, append(servers, "setup")...)
	second.check(t, 0)
	t.Logf("second setup:\n%s", second.stdout)
	for _, want := range []string{"namespace default exists (retention 72h0m0s), unchanged", "registered in default, unchanged",
		"PostgreSQL schema up to date, unchanged", "nothing changed"} {
		if !strings.Contains(second.stdout, want) {
			t.Errorf("the second setup does not say %q:\n%s", want, second.stdout)
		}
	}

	const devices = 6
	sys, st := startSystem(t, ctx, tp.Address(), pg.URL(), devices, "real")
	pkg := sys.Package
	rollout := runCLI(t, ctx, append(servers, "rollout", "start", "--name", "real", "--type", "firmware", "--version", "1.1",
		"--url", pkg.URL, "--md5", pkg.MD5, "--size", fmt.Sprint(pkg.Size), "--prefix", "real-", "--waves", "50%,100%", "--wait")...)
	rollout.check(t, 0)
	t.Logf("rollout:\n%s", lastLines(rollout.stdout, 12))

	// The rollout as the visibility store (PostgreSQL) and the workflow tell it, against the
	// records.
	status := runCLI(t, ctx, append(servers, "rollout", "status", "real")...)
	status.check(t, 0)
	for _, want := range []string{"State     " + string(ota.RolloutCompleted), fmt.Sprintf("%d targets, %d started: succeeded %d ", devices, devices, devices),
		"agree with the workflow"} {
		if !strings.Contains(status.stdout, want) {
			t.Errorf("rollout status does not say %q:\n%s", want, status.stdout)
		}
	}
	list := runCLI(t, ctx, append(servers, "rollout", "list", "--state", string(ota.RolloutCompleted))...)
	list.check(t, 0)
	if !strings.Contains(list.stdout, "real ") {
		t.Errorf("rollout list --state completed (a visibility query on the search attributes) lacks the rollout:\n%s", list.stdout)
	}
	for _, id := range sys.Fleet.IDs() {
		d, _ := sys.Fleet.Device(id)
		up, err := st.LatestUpgrade(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Upgrades != 1 || d.Status["firmware_ver"] != "1.1" || up.State != ota.StateSucceeded {
			t.Errorf("%s installed %d times, reports %v, recorded %s; want once, 1.1, succeeded", id, d.Upgrades, d.Status, up.State)
		}
	}
}

// startSystem runs the embedded broker, the worker, the bridge and simulated devices
// prefix-00001... on the Temporal server at address and the database dbURL until the test
// ends, and waits until every device has reported. Its Temporal client outlives restarts of
// the server.
func startSystem(t *testing.T, ctx context.Context, address, dbURL string, devices int, prefix string) (*system.System, *store.Store) {
	t.Helper()
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	c, err := temporalconn.Dial(ctx, temporalconn.Options{Address: address, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	sys, err := system.Start(ctx, system.Config{Client: c, Store: st, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		PackageDir: t.TempDir(), PackageSize: 32 << 10, Devices: devices, Prefix: prefix,
		Timing: simulator.Timing{ReportInterval: 20 * time.Millisecond, InstallDelay: 200 * time.Millisecond,
			RebootDelay: 100 * time.Millisecond, KeepAlive: 5 * time.Second, MaxReconnectInterval: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	if err := sys.WaitReported(ctx); err != nil {
		t.Fatal(err)
	}
	return sys, st
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
