package e2e

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/setup"
)

// retentionFixture are the rows seeded for a cleanup: per table, how many are older than the
// policy and how many younger, interleaved in insertion (id) order.
type retentionFixture struct {
	oldProgress, youngProgress int
	oldRejected, youngRejected int
	oldShed, youngShed         int
}

// seed writes the fixture's rows for device, with the times of a policy of 30 days for
// progress reports and rejected messages and 90 days for shed counts (the defaults): the
// old rows a day past it, the young ones a day short of it.
func (e *env) seed(device string, f retentionFixture) {
	e.t.Helper()
	conn, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = conn.Close(e.ctx) }()
	day := 24 * time.Hour
	steps := []struct {
		sql        string
		old, young int
		keep       time.Duration
	}{
		{`INSERT INTO progress_events (device_id, command_id, type, version, progress, description, received_at)
			SELECT $1, 'seed', 'firmware', '1.0', 1 + (i % 99), 'seeded', $2::timestamptz + i * interval '1 ms'
			FROM generate_series(0, $3::int - 1) i`, f.oldProgress, f.youngProgress, 30 * day},
		{`INSERT INTO rejected_messages (topic, device_id, reason, payload, received_at)
			SELECT 'devices/' || $1 || '/status', $1, 'seeded', '\x7b'::bytea, $2::timestamptz + i * interval '1 ms'
			FROM generate_series(0, $3::int - 1) i`, f.oldRejected, f.youngRejected, 30 * day},
		{`INSERT INTO shed_reports (device_id, reason, period_start, count, first_at, last_at)
			SELECT $1 || '-' || i, 'progress', $2::timestamptz, 10, $2::timestamptz, $2::timestamptz
			FROM generate_series(0, $3::int - 1) i`, f.oldShed, f.youngShed, 90 * day},
	}
	for _, s := range steps {
		// Old and young rows alternate in chunks, so that their ids interleave.
		old, young := s.old, s.young
		for old > 0 || young > 0 {
			if old > 0 {
				n := min(old, 700)
				if _, err := conn.Exec(e.ctx, s.sql, device, time.Now().Add(-s.keep-day), n); err != nil {
					e.t.Fatal(err)
				}
				old -= n
			}
			if young > 0 {
				n := min(young, 300)
				if _, err := conn.Exec(e.ctx, s.sql, device, time.Now().Add(-s.keep+day), n); err != nil {
					e.t.Fatal(err)
				}
				young -= n
			}
		}
	}
}

// dbCount runs a count query on db.
func dbCount(t testing.TB, ctx context.Context, db *pgx.Conn, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// conn is a connection of the test's own to its database, closed with the test.
func (e *env) conn() *pgx.Conn {
	e.t.Helper()
	conn, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// runCleanup creates the cleanup's schedule and runs a cleanup through it, as `starter
// retention run --wait` does, and returns its report.
func (e *env) runCleanup() (client.WorkflowRun, ota.CleanupReport) {
	e.t.Helper()
	if _, err := setup.EnsureCleanupSchedule(e.ctx, e.c, ota.DefaultCleanupInterval); err != nil {
		e.t.Fatal(err)
	}
	// The test server outlives the test: the schedule must not fire into later tests.
	e.t.Cleanup(func() {
		_ = e.c.ScheduleClient().GetHandle(context.Background(), ota.RetentionCleanupScheduleID).Delete(context.Background())
	})
	run, running, err := ota.TriggerRetentionCleanup(e.ctx, e.c)
	if err != nil || running {
		e.t.Fatalf("trigger the cleanup: %v (a cleanup already running: %v)", err, running)
	}
	var r ota.CleanupReport
	if err := run.Get(e.ctx, &r); err != nil {
		e.t.Fatalf("cleanup %s: %v", run.GetID(), err)
	}
	return run, r
}

// TestCleanupWhileBridgeWrites runs the retention cleanup, through its Temporal Schedule, on
// progress reports, rejected messages and shed counts older and younger than the policy,
// while a device keeps publishing reports that the bridge writes into the same table. It
// finds exactly the old rows gone, deleted in batches of at most the policy's batch size (the
// activity's batch counts), and every report the bridge received during the cleanup stored.
func TestCleanupWhileBridgeWrites(t *testing.T) {
	// This test is about retention: the writer may publish as fast as it can.
	e := newEnv(t, system.Config{Bridge: bridge.Config{Flood: bridge.FloodConfig{Off: true}}})
	const batch = 1000
	policy, err := e.store.RetentionPolicy(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	policy.BatchSize, policy.BatchPause = batch, 20*time.Millisecond
	if err := e.store.SetRetentionPolicy(e.ctx, policy); err != nil {
		t.Fatal(err)
	}
	db := e.conn()
	count := func(query string, args ...any) int { return dbCount(t, e.ctx, db, query, args...) }
	f := retentionFixture{oldProgress: 12000, youngProgress: 3000, oldRejected: 2500, youngRejected: 500, oldShed: 300, youngShed: 100}
	e.seed("seeded", f)

	// The writer: a device publishing progress reports one after another (QoS 1, each
	// acknowledged by the broker) until the cleanup has ended.
	live := e.scriptedDevice("live-writer", nil)
	var published atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b := fmt.Appendf(nil, `{"id":"w","type":"firmware","version":"1.1","progress":%d}`, 1+i%99)
			tok := live.client.Publish(protocol.ProgressTopic("live-writer"), 1, false, b)
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Errorf("publish: %v", tok.Error())
				return
			}
			published.Add(1)
		}
	}()
	require.Eventually(t, func() bool {
		return count(`SELECT count(*) FROM progress_events WHERE device_id = 'live-writer'`) > 50
	}, 10*time.Second, 50*time.Millisecond, "the bridge writing the writer's reports")

	started := time.Now()
	run, r := e.runCleanup()
	ended := time.Now()
	close(stop)
	<-done
	t.Logf("cleanup %s took %s", run.GetID(), ended.Sub(started).Round(time.Millisecond))

	want := map[ota.RetentionItem]int{ota.RetainProgressEvents: f.oldProgress, ota.RetainRejectedMessages: f.oldRejected, ota.RetainShedReports: f.oldShed}
	for _, res := range r.Items {
		t.Logf("%s: %+v", res.Item, res)
		n, ok := want[res.Item]
		switch {
		case res.Item == ota.RetainUpgrades:
			if !res.Kept {
				t.Errorf("upgrades are kept forever by default, but the cleanup handled them: %+v", res)
			}
		case !ok:
		case res.Deleted != int64(n) || res.Error != "":
			t.Errorf("%s: deleted %d (%s), want the %d old rows", res.Item, res.Deleted, res.Error, n)
		case res.Batches != (n+batch-1)/batch || res.Largest != min(n, batch):
			t.Errorf("%s: %d batches of at most %d, want %d of at most %d", res.Item, res.Batches, res.Largest, (n+batch-1)/batch, min(n, batch))
		}
	}
	// Exactly the old rows are gone.
	for _, c := range []struct {
		what  string
		query string
		want  int
	}{
		{"old progress reports", `SELECT count(*) FROM progress_events WHERE received_at < $1`, 0},
		{"young seeded progress reports", `SELECT count(*) FROM progress_events WHERE device_id = 'seeded'`, f.youngProgress},
		{"old rejected messages", `SELECT count(*) FROM rejected_messages WHERE received_at < $1`, 0},
		{"young rejected messages", `SELECT count(*) FROM rejected_messages WHERE device_id = 'seeded'`, f.youngRejected},
		{"young shed counts", `SELECT count(*) FROM shed_reports`, f.youngShed},
	} {
		var args []any
		if c.want == 0 {
			args = append(args, r.StartedAt.Add(-policy.ProgressEvents))
		}
		if got := count(c.query, args...); got != c.want {
			t.Errorf("%s: %d, want %d", c.what, got, c.want)
		}
	}
	// The bridge kept writing: every report the writer published is stored, those received
	// while the cleanup ran too.
	var stored int
	require.Eventually(t, func() bool {
		stored = count(`SELECT count(*) FROM progress_events WHERE device_id = 'live-writer'`)
		return stored == int(published.Load())
	}, 30*time.Second, 50*time.Millisecond, "every published report stored")
	during := count(`SELECT count(*) FROM progress_events WHERE device_id = 'live-writer' AND received_at BETWEEN $1 AND $2`, started, ended)
	if during == 0 {
		t.Errorf("no report stored while the cleanup ran (%s to %s)", started, ended)
	}
	var gap time.Duration
	if err := db.QueryRow(e.ctx, `SELECT coalesce(extract(epoch FROM max(d)), 0) * interval '1 second' FROM (
		SELECT received_at - lag(received_at) OVER (ORDER BY received_at) AS d FROM progress_events
		WHERE device_id = 'live-writer' AND received_at BETWEEN $1 AND $2) g`, started, ended).Scan(&gap); err != nil {
		t.Fatal(err)
	}
	t.Logf("the bridge stored %d reports, %d of them while the cleanup ran, the longest gap between two %s", stored, during, gap)
}
