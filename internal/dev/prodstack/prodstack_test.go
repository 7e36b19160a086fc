package prodstack_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/dev/prodstack"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/ota"
)

// envDevices overrides how many devices TestProductionTopologyLosesNothing rolls out to
// (default 1,000).
const envDevices = "OTAFLOW_PRODSTACK_DEVICES"

// TestProductionTopologyLosesNothing runs a rollout over the native production topology
// (PostgreSQL, the Temporal server on PostgreSQL, Mosquitto with its dynamic-security plugin,
// two workers and two bridges as processes of their own) and, during it, kills one worker and
// one bridge with SIGKILL (both come back), kills the broker with SIGKILL and restarts it on
// its persistence, and restarts the Temporal server. Afterwards every device succeeded and
// installed exactly once, the rollout's counts equal PostgreSQL's records, and every progress
// report the broker acknowledged is stored.
//
// The broker is killed while wave 2 waits for its approval, when no report is in the broker's
// hands: Mosquitto writes its state every autosave_interval, so a SIGKILL under load loses the
// reports it acknowledged since (deploy/mosquitto's benchmark measures it; README says so).
func TestProductionTopologyLosesNothing(t *testing.T) {
	devices := 1000
	if v := os.Getenv(envDevices); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, envDevices)
		devices = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	logFile, err := os.Create(filepath.Join(t.TempDir(), "prodstack.log"))
	require.NoError(t, err)
	defer logFile.Close()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("the last of every part's output (%s):\n%s", logFile.Name(), tail(string(b), 80))
		}
	})
	s, err := prodstack.Start(ctx, prodstack.Options{Log: logFile,
		Dir: t.TempDir(), Devices: devices, NoFsync: true, PackageName: "fw-64k.bin", PackageSize: 64 << 10,
		Timing: simulator.Timing{ReportInterval: 50 * time.Millisecond, InstallDelay: time.Second, RebootDelay: 200 * time.Millisecond,
			KeepAlive: 10 * time.Second, MaxReconnectInterval: 2 * time.Second},
		Say: t.Logf,
	})
	require.NoError(t, err)
	defer s.Close()

	req := ota.RolloutRequest{Name: "prod-1", Targets: ota.Targets{Prefix: "sim-"},
		Upgrade: ota.UpgradeRequest{Type: "firmware", Version: "1.1", URL: s.Package.URL, MD5: s.Package.MD5, Size: s.Package.Size,
			StartTimeout: ota.Duration(2 * time.Minute), SilenceTimeout: ota.Duration(time.Minute), InstallTimeout: ota.Duration(time.Minute), RetryBackoff: ota.Duration(time.Second)},
		Waves:       []ota.Wave{{Percent: 50}, {Percent: 100, Approve: true}},
		MaxInFlight: 200,
	}
	run, err := ota.StartRollout(ctx, s.Client, req)
	require.NoError(t, err)
	started := time.Now()

	progress := func() ota.RolloutProgress {
		var p ota.RolloutProgress
		if v, err := s.Client.QueryWorkflow(ctx, run.GetID(), "", ota.QueryProgress); err == nil {
			_ = v.Get(&p)
		}
		return p
	}
	waitFor := func(what string, cond func(ota.RolloutProgress) bool) {
		t.Helper()
		require.Eventually(t, func() bool { return cond(progress()) }, 10*time.Minute, 200*time.Millisecond, what)
	}

	waitFor("a tenth of the upgrades started", func(p ota.RolloutProgress) bool { return p.Counts.Started >= devices/10 })
	t.Logf("%s: kill -9 worker 1", time.Since(started).Round(time.Millisecond))
	require.NoError(t, s.KillWorker(ctx, 0))
	waitFor("a fifth of the upgrades finished", func(p ota.RolloutProgress) bool { return p.Counts.Finished() >= devices/5 })
	t.Logf("%s: kill -9 bridge 1", time.Since(started).Round(time.Millisecond))
	require.NoError(t, s.KillBridge(ctx, 0))

	waitFor("wave 2 waiting for approval", func(p ota.RolloutProgress) bool { return p.State == ota.RolloutWaitingApproval })
	t.Logf("%s: kill -9 the broker, restart it on its persistence", time.Since(started).Round(time.Millisecond))
	require.NoError(t, s.KillBroker(ctx))
	require.Eventually(t, func() bool { return s.Fleet.Stats().Connected == devices }, 5*time.Minute, 200*time.Millisecond,
		"every device connected again")
	h, err := s.Client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: run.GetID(), UpdateName: ota.UpdateApprove,
		Args: []any{0}, WaitForStage: client.WorkflowUpdateStageCompleted})
	require.NoError(t, err)
	require.NoError(t, h.Get(ctx, nil))

	waitFor("wave 2 under way", func(p ota.RolloutProgress) bool { return p.Counts.Started >= devices/2+devices/10 })
	t.Logf("%s: restart the Temporal server", time.Since(started).Round(time.Millisecond))
	require.NoError(t, s.RestartTemporal(ctx))

	require.NoError(t, run.Get(ctx, nil))
	p := progress()
	t.Logf("%s: rollout %s: %+v", time.Since(started).Round(time.Millisecond), p.State, p.Counts)
	require.Equal(t, ota.RolloutCompleted, p.State)
	require.Equal(t, devices, p.Counts.Succeeded, "every device succeeded")

	// Each device installed exactly once.
	for _, id := range s.Fleet.IDs() {
		d, _ := s.Fleet.Device(id)
		if d.Installs != 1 || d.Upgrades != 1 {
			t.Errorf("%s installed %d times (%d upgrades); want once", id, d.Installs, d.Upgrades)
		}
	}
	// The rollout's counts equal PostgreSQL's records.
	records, err := s.Store.CountByState(ctx, req.Name, "")
	require.NoError(t, err)
	require.Equal(t, map[ota.State]int{ota.StateSucceeded: devices}, records)

	// Every progress report the broker acknowledged is stored (duplicates aside).
	conn, err := pgx.Connect(ctx, s.DatabaseURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT device_id, count(DISTINCT (command_id, progress)) FROM progress_events GROUP BY device_id`)
	require.NoError(t, err)
	stored := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		require.NoError(t, rows.Scan(&id, &n))
		stored[id] = n
	}
	require.NoError(t, rows.Err())
	lost, acked := 0, 0
	for _, id := range s.Fleet.IDs() {
		d, _ := s.Fleet.Device(id)
		acked += d.ProgressAcked
		if stored[id] < d.ProgressAcked {
			lost += d.ProgressAcked - stored[id]
			t.Errorf("%s: the broker acknowledged %d progress reports, %d are stored", id, d.ProgressAcked, stored[id])
		}
	}
	t.Logf("%d progress reports acknowledged by the broker, %d lost", acked, lost)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
