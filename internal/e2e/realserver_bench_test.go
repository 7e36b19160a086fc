package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/setup"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/temporalconn"
)

// BenchmarkRealTemporalServer measures the Temporal side of the production topology, run
// natively from deploy/temporal's configuration: the schema job on new and on up-to-date
// databases, the server's start and restart, the setup step (first and second run), and a
// rollout to OTAFLOW_BENCH_DEVICES (default 1,000) simulated devices (embedded broker,
// in-process worker and bridge, 200 upgrades in flight), with the server's memory. Its
// PostgreSQL server syncs to disk, as a production one does. Run it alone:
//
//	go test -run '^$' -bench RealTemporalServer -benchtime 1x -v ./internal/e2e
func BenchmarkRealTemporalServer(b *testing.B) {
	devices := 1000
	if v := os.Getenv("OTAFLOW_BENCH_DEVICES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("OTAFLOW_BENCH_DEVICES=%q: want a number of devices", v)
		}
		devices = n
	}
	for range b.N {
		measureRealTemporalServer(b, devices)
	}
}

func measureRealTemporalServer(b *testing.B, devices int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bins := testenv.TemporalServerBinaries(b)
	dir := b.TempDir()
	pg, err := localstack.StartPostgres(ctx, localstack.PostgresOptions{Dir: filepath.Join(dir, "pg")})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Stop()
	timed := func(what string, f func() error) {
		b.Helper()
		start := time.Now()
		if err := f(); err != nil {
			b.Fatalf("%s: %v", what, err)
		}
		b.Logf("%-58s %s", what, time.Since(start).Round(10*time.Millisecond))
	}
	opts := localstack.TemporalServerOptions{Binaries: bins, PostgresURL: pg.URL(), Dir: filepath.Join(dir, "temporal")}
	timed("schema job, new databases", func() error { return localstack.SetupTemporalSchema(ctx, opts) })
	timed("schema job, databases up to date", func() error { return localstack.SetupTemporalSchema(ctx, opts) })
	var tp *localstack.TemporalServer
	timed("server start (schema job, then until the frontend answers)", func() (err error) {
		tp, err = localstack.StartTemporalServer(ctx, opts)
		return err
	})
	defer func() { _ = tp.Stop() }()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for run := 1; run <= 2; run++ {
		timed(fmt.Sprintf("starter setup, run %d", run), func() error {
			_, err := setup.Run(ctx, setup.Config{TemporalAddress: tp.Address(), DatabaseURL: pg.URL(), Logger: quiet}, setup.DefaultSteps())
			return err
		})
	}
	ports := tp.Ports()
	timed("restart in place (SIGTERM, start until the frontend answers)", func() error {
		if err := tp.Stop(); err != nil {
			return err
		}
		opts.Ports = ports
		var err error
		tp, err = localstack.StartTemporalServer(ctx, opts)
		return err
	})
	b.Logf("server memory, idle: %s", memory(tp.PID()))

	st, err := store.Open(ctx, pg.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	c, err := temporalconn.Dial(ctx, temporalconn.Options{Address: tp.Address(), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	sys, err := system.Start(ctx, system.Config{Client: c, Store: st, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		PackageDir: filepath.Join(dir, "packages"), PackageSize: 64 << 10, Devices: devices, Prefix: "bench",
		Timing: simulator.Timing{ReportInterval: 200 * time.Millisecond, InstallDelay: time.Second,
			RebootDelay: 500 * time.Millisecond, KeepAlive: 30 * time.Second, MaxReconnectInterval: 5 * time.Second}})
	if err != nil {
		b.Fatal(err)
	}
	defer sys.Close()
	if err := sys.WaitReported(ctx); err != nil {
		b.Fatal(err)
	}
	req := ota.RolloutRequest{Name: "bench", Targets: ota.Targets{Prefix: "bench-"}, MaxInFlight: 200,
		Upgrade: ota.UpgradeRequest{Type: "firmware", Version: "1.1", URL: sys.Package.URL, MD5: sys.Package.MD5, Size: sys.Package.Size}}
	start := time.Now()
	run, err := ota.StartRollout(ctx, c, req)
	if err != nil {
		b.Fatal(err)
	}
	var p ota.RolloutProgress
	if err := run.Get(ctx, &p); err != nil {
		b.Fatalf("rollout: %v", err)
	}
	took := time.Since(start)
	rate := float64(p.Counts.Succeeded) / took.Minutes()
	b.Logf("rollout of %d devices: %s, %d succeeded, %d failed, %d timed out, in %s: %.0f upgrades/min",
		devices, p.State, p.Counts.Succeeded, p.Counts.Failed, p.Counts.TimedOut, took.Round(100*time.Millisecond), rate)
	b.Logf("server memory after the rollout: %s", memory(tp.PID()))
	b.ReportMetric(rate, "upgrades/min")
	if p.State != ota.RolloutCompleted || p.Counts.Succeeded != devices {
		b.Errorf("rollout %s with %+v, want every device succeeded", p.State, p.Counts)
	}
}

// memory is the resident and peak memory of a process (Linux), as "261 MiB (peak 267 MiB)".
func memory(pid int) string {
	if runtime.GOOS != "linux" {
		return "unknown (Linux only)"
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown: " + err.Error()
	}
	kib := map[string]int{}
	for _, line := range strings.Split(string(status), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if f := strings.Fields(value); ok && len(f) == 2 && f[1] == "kB" {
			kib[name], _ = strconv.Atoi(f[0])
		}
	}
	return fmt.Sprintf("%d MiB (peak %d MiB)", kib["VmRSS"]/1024, kib["VmHWM"]/1024)
}
