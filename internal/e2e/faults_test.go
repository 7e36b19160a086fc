package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/temporalconn"
)

// TestRolloutSurvivesRestarts restarts, one after another in the middle of a rollout, the
// worker, the bridge, the MQTT broker, PostgreSQL and the Temporal server, and checks afterwards that every
// device ended in a final state, none was upgraded twice, none was lost, and the rollout's
// counts equal the PostgreSQL records. It runs servers of its own, so that it can stop them.
func TestRolloutSurvivesRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts servers; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cli, err := localstack.EnsureTemporalCLI(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	pgPort, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tPort, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pgOpts := localstack.PostgresOptions{Dir: filepath.Join(dir, "pg"), Port: pgPort, NoFsync: true}
	pg, err := localstack.StartPostgres(ctx, pgOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Stop() })
	tOpts := localstack.TemporalOptions{CLIPath: cli, DBFile: filepath.Join(dir, "temporal.db"), Port: tPort}
	temporal, err := localstack.StartTemporal(ctx, tOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = temporal.Stop() })

	st, err := store.Open(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// A client of its own: it outlives the server it first connected to.
	c, err := temporalconn.Dial(ctx, temporalconn.Options{Address: temporal.Address()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	timing := fastTiming
	timing.InstallDelay = 800 * time.Millisecond
	const devices = 30
	sys, err := system.Start(ctx, system.Config{Client: c, Store: st, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		BrokerStore: filepath.Join(dir, "broker-sessions.db"),
		PackageDir:  filepath.Join(dir, "packages"), PackageSize: 64 << 10, Devices: devices, Prefix: "chaos", Timing: timing})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	if err := sys.WaitReported(ctx); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, store: st, sys: sys, c: c}
	req := e.rollout("chaos", "chaos")
	req.MaxInFlight = 3
	req.Upgrade.StartTimeout = ota.Duration(20 * time.Second)
	req.Upgrade.SilenceTimeout = ota.Duration(20 * time.Second)
	req.Upgrade.InstallTimeout = ota.Duration(20 * time.Second)
	run := e.startRollout(req)

	finished := func() int {
		v, err := c.QueryWorkflow(ctx, run.GetID(), "", ota.QueryProgress)
		var p ota.RolloutProgress
		if err != nil || v.Get(&p) != nil {
			return -1 // the server or the worker is down
		}
		return p.Counts.Finished()
	}
	next := 3
	step := func(what string, restart func()) {
		t.Helper()
		require.Eventually(t, func() bool { return finished() >= next },
			90*time.Second, 50*time.Millisecond, "progress before restarting the "+what)
		t.Logf("restarting the %s with %d devices finished", what, finished())
		restart()
		next += 4
	}
	step("worker", func() {
		sys.StopWorker()
		time.Sleep(time.Second)
		if err := sys.StartWorker(ctx); err != nil {
			t.Fatal(err)
		}
	})
	step("bridge", func() {
		sys.StopBridge()
		time.Sleep(time.Second)
		if err := sys.StartBridge(ctx); err != nil {
			t.Fatal(err)
		}
	})
	step("MQTT broker", func() {
		if err := sys.RestartBroker(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
	})
	step("PostgreSQL server", func() {
		if err := pg.Stop(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if pg, err = localstack.StartPostgres(ctx, pgOpts); err != nil {
			t.Fatal(err)
		}
	})
	step("Temporal server", func() {
		if err := temporal.Stop(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if temporal, err = localstack.StartTemporal(ctx, tOpts); err != nil {
			t.Fatal(err)
		}
	})
	var p ota.RolloutProgress
	require.Eventually(t, func() bool {
		v, err := c.QueryWorkflow(ctx, run.GetID(), "", ota.QueryProgress)
		return err == nil && v.Get(&p) == nil && p.State.Final()
	}, 3*time.Minute, 50*time.Millisecond, "the rollout to end")
	if p.State != ota.RolloutCompleted || p.Total != devices || p.Counts.Finished() != devices || p.Counts.Running() != 0 {
		t.Fatalf("rollout %s with %+v of %d; want completed with every device finished", p.State, p.Counts, p.Total)
	}
	if p.Counts.Succeeded != devices {
		t.Errorf("%d of %d devices succeeded: %+v", p.Counts.Succeeded, devices, p.Counts)
	}
	retried := 0
	for _, id := range sys.Fleet.IDs() {
		if up, err := st.LatestUpgrade(ctx, id); err == nil && up.Attempt > 1 {
			retried++
		}
		d, _ := sys.Fleet.Device(id)
		if d.Upgrades != 1 || d.Status["firmware_ver"] != "1.1" {
			t.Errorf("%s installed %d times and reports %v; want once, on 1.1", id, d.Upgrades, d.Status)
		}
	}
	t.Logf("%d of %d devices needed more than one attempt", retried, devices)
	e.checkRecords("chaos", p)
}

// TestBrokerRestartWithReportsWaiting restarts the broker while it holds the reports of a
// whole rollout for a stopped bridge: every device has installed and reported the new
// version, and nothing has reached the workflows yet. A broker that keeps its sessions
// (Config.BrokerStore) delivers the reports after the restart and every upgrade succeeds on
// its first attempt. One that loses them leaves the upgrades waiting for news until their
// start timeout; the retry's command finds the device on the target version, which answers
// with its status: every upgrade succeeds on its second attempt, and no device installs twice.
func TestBrokerRestartWithReportsWaiting(t *testing.T) {
	tests := []struct {
		name        string
		store       bool
		wantAttempt int
	}{
		{"sessions kept", true, 1},
		{"sessions lost", false, 2},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const devices = 6
			prefix := "brk" + string(rune('a'+i))
			cfg := system.Config{Devices: devices, Prefix: prefix}
			if tt.store {
				cfg.BrokerStore = filepath.Join(t.TempDir(), "broker-sessions.db")
			}
			e := newEnv(t, cfg)
			e.sys.StopBridge()
			req := e.rollout(prefix, prefix)
			req.MaxInFlight = devices
			req.Upgrade.StartTimeout = ota.Duration(8 * time.Second)
			run := e.startRollout(req)
			require.Eventually(t, func() bool {
				for _, id := range e.sys.Fleet.IDs() {
					if d, _ := e.sys.Fleet.Device(id); d.Upgrades != 1 || !d.Connected {
						return false
					}
				}
				return true
			}, time.Minute, 50*time.Millisecond, "every device on the new version")
			if err := e.sys.RestartBroker(e.ctx, 500*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if err := e.sys.StartBridge(e.ctx); err != nil {
				t.Fatal(err)
			}
			var p ota.RolloutProgress
			if err := run.Get(e.ctx, &p); err != nil {
				t.Fatal(err)
			}
			if p.State != ota.RolloutCompleted || p.Counts.Succeeded != devices {
				t.Fatalf("rollout %s with %+v; want every device succeeded", p.State, p.Counts)
			}
			for _, id := range e.sys.Fleet.IDs() {
				up, err := e.store.LatestUpgrade(e.ctx, id)
				if err != nil || up.State != ota.StateSucceeded || up.Attempt != tt.wantAttempt {
					t.Errorf("%s: upgrade %+v, err %v; want succeeded on attempt %d", id, up, err, tt.wantAttempt)
				}
				if d, _ := e.sys.Fleet.Device(id); d.Upgrades != 1 || d.Attempts != 1 {
					t.Errorf("%s installed %d times in %d attempts; want once", id, d.Upgrades, d.Attempts)
				}
			}
			e.checkRecords(prefix, p)
		})
	}
}
