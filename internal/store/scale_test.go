package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// fleet is the size of a fixture: devices (90% sim-NNNNNN, 9% pump-NNNNNN, 1% gw-NNNNNN),
// each with progress reports spread over 60 days and three finished upgrades of rollouts
// fw-1..fw-3 (four state changes each), rejected messages, and two target lists: big/0001 of
// every sim- device and small/0001 of 100 of them.
type fleet struct {
	devices, progressPerDevice, rejected int
}

// populate fills a new database at url (migrated by store.Open) with f, then vacuums and
// analyzes it as autovacuum would have.
func populate(tb testing.TB, url string, f fleet) {
	tb.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	steps := []string{
		`INSERT INTO devices (id, secret_hash, labels, reported, reported_at, last_seen)
		SELECT CASE WHEN i <= $1 * 0.90 THEN format('sim-%s', lpad(i::text, 6, '0'))
		            WHEN i <= $1 * 0.99 THEN format('pump-%s', lpad(i::text, 6, '0'))
		            ELSE format('gw-%s', lpad(i::text, 6, '0')) END,
		       'hash', jsonb_build_object('site', 'site-' || (i % 20)), '{"firmware_ver":"1.0"}', now(), now()
		FROM generate_series(1, $1::int) i`,
		`INSERT INTO upgrades (run_id, workflow_id, device_id, rollout, type, version, url, md5, size, state, attempt,
			command_id, progress, created_at, updated_at, finished_at)
		SELECT 'run-' || r || '-' || d.n, 'ota-' || d.id, d.id, 'fw-' || r, 'firmware', '1.' || r, 'http://x/p', '00', 1,
		       CASE WHEN d.n % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 1, 'cmd-' || r || '-' || d.n, 100,
		       now() - (4 - r) * interval '20 days', now() - (4 - r) * interval '20 days',
		       now() - (4 - r) * interval '20 days' + interval '5 minutes'
		FROM (SELECT id, row_number() OVER (ORDER BY id) n FROM devices) d, generate_series(1, 3) r`,
		`INSERT INTO upgrade_events (run_id, state, attempt, at)
		SELECT u.run_id, s, 1, u.created_at FROM upgrades u, unnest(ARRAY['sent', 'downloading', 'downloaded', 'succeeded']) s`,
		// In time order, as the bridge writes them: a round of reports of every device, then the next.
		`INSERT INTO progress_events (device_id, command_id, type, version, progress, description, received_at)
		SELECT d.id, 'cmd-' || (1 + g.k * 3 / $1) || '-' || d.n, 'firmware', '1.1', 1 + (g.k % 99), 'downloading',
		       now() - interval '60 days' + g.k * (interval '60 days' / $1) + d.n * interval '10 ms'
		FROM generate_series(0, $1::int - 1) g(k), (SELECT id, row_number() OVER (ORDER BY id) n FROM devices) d
		ORDER BY g.k, d.n`,
		`INSERT INTO rejected_messages (topic, device_id, reason, payload, received_at)
		SELECT 'devices/' || d.id || '/ota/progress', d.id, 'invalid JSON', '\x7b'::bytea, now() - interval '60 days' + i * (interval '60 days' / $1)
		FROM generate_series(1, $1::int) i JOIN (SELECT id, row_number() OVER (ORDER BY id) n FROM devices) d ON d.n = 1 + i % 1000`,
		`INSERT INTO target_lists (key, rollout) VALUES ('big/0001', 'big'), ('small/0001', 'small')`,
		`INSERT INTO rollout_targets (rollout, device_id) SELECT 'big/0001', id FROM devices WHERE id LIKE 'sim-%'`,
		`INSERT INTO rollout_targets (rollout, device_id) SELECT 'small/0001', id FROM devices WHERE id LIKE 'sim-%7' ORDER BY id LIMIT 100`,
		// Lists of earlier rollouts, of 1% of the fleet each.
		`INSERT INTO target_lists (key, rollout) SELECT 'old-' || l || '/0001', 'old-' || l FROM generate_series(1, 40) l`,
		`INSERT INTO rollout_targets (rollout, device_id)
		SELECT 'old-' || l || '/0001', id FROM generate_series(1, 40) l, devices WHERE hashtext(id || l) % 100 = 0`,
		// A day of flooding: a count per device and reason every minute, for 1% of the fleet.
		`INSERT INTO shed_reports (device_id, reason, period_start, count, first_at, last_at)
		SELECT id, 'rate', t, 60, t, t + interval '59 seconds'
		FROM devices, generate_series(now() - interval '1 day', now(), interval '1 minute') t WHERE id LIKE '%00'`,
	}
	args := [][]any{{f.devices}, nil, nil, {f.progressPerDevice}, {f.rejected}, nil, nil, nil, nil, nil, nil}
	for i, sql := range steps {
		if _, err := conn.Exec(ctx, sql, args[i]...); err != nil {
			tb.Fatalf("populate, step %d: %v", i+1, err)
		}
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		tb.Fatal(err)
	}
}

// statements records what a store runs: every statement with its arguments, batches too.
type statements struct {
	mu   sync.Mutex
	ran  []ranStatement
	name string // the operation running, for the records
}

type ranStatement struct {
	op, sql string
	args    []any
}

func (s *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	s.add(data.SQL, data.Args)
	return ctx
}

func (s *statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (s *statements) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (s *statements) TraceBatchQuery(_ context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	s.add(data.SQL, data.Args)
}

func (s *statements) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (s *statements) add(sql string, args []any) {
	switch strings.ToUpper(strings.TrimSpace(sql)) {
	case "BEGIN", "COMMIT", "ROLLBACK", "-- PING", "SELECT 1":
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ran = append(s.ran, ranStatement{op: s.name, sql: sql, args: args})
}

// take returns what ran since the last take.
func (s *statements) take() []ranStatement {
	s.mu.Lock()
	defer s.mu.Unlock()
	ran := s.ran
	s.ran = nil
	return ran
}

// hotPaths runs, on st, every query the starter, the bridge and the activities run on their
// hot paths, naming each: the ops their statements are recorded under.
func hotPaths(ctx context.Context, tb testing.TB, st *store.Store, rec *statements, run func(op string, f func() error)) {
	tb.Helper()
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Millisecond) }
	var reports []store.Report
	for i := range 64 {
		d := fmt.Sprintf("sim-%06d", 1+i*97)
		if i%8 == 7 {
			reports = append(reports, store.Report{DeviceID: d, Status: protocol.Status{"firmware_ver": "1.1"}, ReceivedAt: at(i)})
			continue
		}
		reports = append(reports, store.Report{DeviceID: d, ReceivedAt: at(i),
			Progress: &protocol.Progress{ID: "cmd-9-1", Type: "firmware", Version: "1.1", Progress: 1 + i}})
	}
	rejected := []store.Rejected{{Topic: "devices/sim-000001/ota/progress", DeviceID: "sim-000001", Reason: "bad", Payload: []byte("{"), ReceivedAt: at(1)}}
	ops := []struct {
		name string
		f    func() error
	}{
		// starter status
		{"status: device", func() error { _, err := st.GetDevice(ctx, "sim-000123"); return err }},
		{"status: latest upgrade", func() error { _, err := st.LatestUpgrade(ctx, "sim-000123"); return err }},
		{"status: upgrade events", func() error { _, err := st.UpgradeEvents(ctx, "run-3-123"); return err }},
		{"status: last progress (activity LastProgress too)", func() error {
			_, err := st.LastProgress(ctx, "sim-000123", ota.AttemptKey{CommandID: "cmd-3-123", Type: "firmware", Version: "1.1"})
			return err
		}},
		{"progress events of a device", func() error { _, err := st.ProgressEvents(ctx, "sim-000123", 20); return err }},
		{"rejected messages of a device", func() error { _, err := st.RejectedMessages(ctx, "sim-000123", 20); return err }},
		{"rejected messages, newest", func() error { _, err := st.RejectedMessages(ctx, "", 20); return err }},
		{"shed counts of a device", func() error { _, err := st.ShedReports(ctx, "sim-000100", t0.Add(-48*time.Hour), 20); return err }},
		// starter devices list --prefix
		{"devices list --prefix gw-", func() error {
			_, err := st.ListDevices(ctx, ota.DeviceFilter{Prefix: "gw-", Limit: 1000})
			return err
		}},
		{"devices list --prefix sim-, a middle page", func() error {
			_, err := st.ListDevices(ctx, ota.DeviceFilter{Prefix: "sim-", After: "sim-004500", Limit: 1000})
			return err
		}},
		{"devices list --prefix pump-00999 (few)", func() error {
			_, err := st.ListDevices(ctx, ota.DeviceFilter{Prefix: "pump-00999", Limit: 1000})
			return err
		}},
		// rollout target resolution (activities CountTargets, SnapshotTargets, ResolveTargets)
		{"rollout: count by prefix and label", func() error {
			_, err := st.CountDevices(ctx, ota.DeviceFilter{Prefix: "gw-", Labels: map[string]string{"site": "site-3"}})
			return err
		}},
		{"rollout: snapshot by prefix", func() error {
			_, err := st.SnapshotTargets(ctx, "snap", "snap/0001", ota.DeviceFilter{Prefix: "gw-", NotReportingKey: "firmware_ver", NotReportingValue: "1.1"})
			return err
		}},
		{"rollout: page of a small list", func() error {
			_, err := st.ListDevices(ctx, ota.DeviceFilter{List: "small/0001", Limit: 1000})
			return err
		}},
		{"rollout: middle page of a large list", func() error {
			_, err := st.ListDevices(ctx, ota.DeviceFilter{List: "big/0001", After: "sim-004500", Limit: 1000})
			return err
		}},
		{"rollout: count a list", func() error { _, err := st.CountDevices(ctx, ota.DeviceFilter{List: "small/0001"}); return err }},
		{"rollout status: count by state", func() error { _, err := st.CountByState(ctx, "fw-2", ""); return err }},
		// activities
		{"activity: send command (device)", func() error { _, err := st.GetDevice(ctx, "sim-000123"); return err }},
		{"activity: record state", func() error {
			return st.RecordUpgrade(ctx, store.Upgrade{RunID: "run-9-123", WorkflowID: "ota-sim-000123", DeviceID: "sim-000123",
				Type: "firmware", Version: "1.9", URL: "http://x/p", MD5: "00", Size: 1, State: ota.StateSent}, t0, "")
		}},
		// the bridge and the broker
		{"bridge: batch of 64 reports and a rejected message", func() error { _, err := st.RecordBatch(ctx, reports, rejected); return err }},
		{"bridge: shed counts", func() error {
			return st.RecordShed(ctx, []store.ShedCount{{DeviceID: "sim-000001", Reason: "rate", PeriodStart: t0, Count: 3, FirstAt: t0, LastAt: t0}})
		}},
		{"broker: credentials", func() error { _, _, err := st.DeviceCredentials(ctx, "sim-000123"); return err }},
		{"broker: disabled among connected", func() error {
			_, err := st.DisabledAmong(ctx, []string{"sim-000001", "sim-000002", "gw-099999"})
			return err
		}},
		// the cleanup workflow's activities
		{"cleanup: progress events batch", func() error {
			_, _, _, err := st.DeleteExpiredBatch(ctx, ota.RetainProgressEvents, t0.Add(-30*24*time.Hour), ota.CleanupCursor{}, 1000)
			return err
		}},
		{"cleanup: rejected messages batch", func() error {
			_, _, _, err := st.DeleteExpiredBatch(ctx, ota.RetainRejectedMessages, t0.Add(-30*24*time.Hour), ota.CleanupCursor{}, 1000)
			return err
		}},
		{"cleanup: shed counts batch", func() error {
			_, _, _, err := st.DeleteExpiredBatch(ctx, ota.RetainShedReports, t0.Add(-90*24*time.Hour), ota.CleanupCursor{}, 1000)
			return err
		}},
		{"cleanup: upgrades batch", func() error {
			_, _, _, err := st.DeleteExpiredBatch(ctx, ota.RetainUpgrades, t0.Add(-30*24*time.Hour), ota.CleanupCursor{}, 1000)
			return err
		}},
	}
	for _, op := range ops {
		rec.mu.Lock()
		rec.name = op.name
		rec.mu.Unlock()
		run(op.name, op.f)
	}
}

// bigTables are the tables that grow with the fleet and its reports.
var bigTables = []string{"devices", "progress_events", "rejected_messages", "upgrades", "upgrade_events", "rollout_targets", "shed_reports"}

// planNode is a node of EXPLAIN (FORMAT JSON)'s plan.
type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	IndexCond    string     `json:"Index Cond"`
	Plans        []planNode `json:"Plans"`
}

// walk calls f on every node with its parent (nil for the root).
func (n planNode) walk(f func(n planNode, parent *planNode)) { n.walkFrom(nil, f) }

func (n planNode) walkFrom(parent *planNode, f func(planNode, *planNode)) {
	f(n, parent)
	for _, c := range n.Plans {
		c.walkFrom(&n, f)
	}
}

// fullRead says whether p reads a whole growing table: a sequential scan, or an index scan
// without a condition that feeds a join (which reads the index from its first entry; a
// condition-less index scan under a Limit reads only the rows it returns).
func (p planNode) fullRead(parent *planNode) bool {
	if !slices.Contains(bigTables, p.RelationName) {
		return false
	}
	if p.NodeType == "Seq Scan" {
		return true
	}
	return strings.HasPrefix(p.NodeType, "Index") && p.IndexCond == "" && parent != nil && strings.HasSuffix(parent.NodeType, "Join")
}

// genericPlan explains, without running it, the plan PostgreSQL caches for a prepared
// statement once it stops planning for each call's values (plan_cache_mode = auto switches
// to it after five calls when it seems no worse): the plan for any values. pgx prepares
// every statement it runs.
func genericPlan(ctx context.Context, conn *pgx.Conn, name string, r ranStatement) (planNode, string, error) {
	desc, err := conn.Prepare(ctx, name, r.sql)
	if err != nil {
		return planNode{}, "", fmt.Errorf("prepare: %w", err)
	}
	// EXECUTE takes its values as SQL: each argument written as a literal of its parameter's
	// type, by the server.
	var values []string
	for i, arg := range r.args {
		var typ, lit string
		if err := conn.QueryRow(ctx, `SELECT format_type($1, NULL)`, desc.ParamOIDs[i]).Scan(&typ); err != nil {
			return planNode{}, "", fmt.Errorf("type of $%d: %w", i+1, err)
		}
		if err := conn.QueryRow(ctx, `SELECT quote_nullable($1::`+typ+`)`, arg).Scan(&lit); err != nil {
			return planNode{}, "", fmt.Errorf("write $%d as %s: %w", i+1, typ, err)
		}
		values = append(values, lit+"::"+typ)
	}
	exec := "EXECUTE " + name
	if len(values) > 0 {
		exec += "(" + strings.Join(values, ", ") + ")"
	}
	rows, err := conn.Query(ctx, "EXPLAIN (COSTS OFF) "+exec)
	if err != nil {
		return planNode{}, "", fmt.Errorf("explain: %w", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return planNode{}, "", fmt.Errorf("explain: %w", err)
	}
	text := strings.Join(lines, "\n")
	var js []byte
	if err := conn.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+exec).Scan(&js); err != nil {
		return planNode{}, "", fmt.Errorf("explain: %w", err)
	}
	var plans []struct {
		Plan planNode `json:"Plan"`
	}
	if err := json.Unmarshal(js, &plans); err != nil || len(plans) != 1 {
		return planNode{}, "", fmt.Errorf("decode plan %s: %v", js, err)
	}
	return plans[0].Plan, text, nil
}

// TestHotPathPlans runs every query on the hot paths of the starter, the bridge, the broker
// and the activities against a fleet of 20,000 devices with 400,000 progress reports, and
// checks that the plan PostgreSQL would cache for each (the generic plan of the prepared
// statement, which holds for any values) reads the tables that grow with the fleet through
// their indexes: no sequential scan, nor a join fed by a whole index. (BenchmarkFleetScale times them at 100,000 devices and
// 10 million reports.)
func TestHotPathPlans(t *testing.T) {
	ctx := context.Background()
	url := testenv.DatabaseURL(t)
	rec := &statements{}
	st, err := store.OpenTraced(ctx, url, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	populate(t, url, fleet{devices: 20000, progressPerDevice: 20, rejected: 20000})
	checkPlans(t, ctx, url, st, rec, testing.Verbose())
}

// checkPlans runs the hot paths on st (traced by rec) and fails when the generic plan of one
// of their statements reads a growing table sequentially; with show, it logs every plan.
func checkPlans(tb testing.TB, ctx context.Context, url string, st *store.Store, rec *statements, show bool) {
	tb.Helper()
	rec.take()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		tb.Fatal(err)
	}
	n := 0
	hotPaths(ctx, tb, st, rec, func(op string, f func() error) {
		if err := f(); err != nil && !errors.Is(err, store.ErrNotFound) {
			tb.Fatalf("%s: %v", op, err)
		}
		for _, r := range rec.take() {
			n++
			plan, text, err := genericPlan(ctx, conn, fmt.Sprintf("hot%d", n), r)
			if err != nil {
				tb.Errorf("%s: %v\n%s", op, err, r.sql)
				continue
			}
			var bad []string
			plan.walk(func(p planNode, parent *planNode) {
				if p.fullRead(parent) {
					bad = append(bad, p.NodeType+" of "+p.RelationName)
				}
			})
			if len(bad) > 0 {
				tb.Errorf("%s: reads a whole table: %v:\n%s\n%s", op, bad, r.sql, text)
			} else if show {
				tb.Logf("%s:\n%s", op, text)
			}
		}
	})
	if n < 25 {
		tb.Errorf("explained %d statements, want every hot path's", n)
	}
}

// BenchmarkFleetScale measures, on a fleet of 100,000 registered devices with 10 million
// progress reports (100 a device over 60 days), 300,000 upgrade records and 100,000 rejected
// messages, what the starter, the bridge and the activities do: `starter status` (its store
// reads), `devices list --prefix` (pages of 500), rollout target resolution (a snapshot of
// 90,000 devices read back in pages of 500, and a small list), the bridge's batch writes,
// and a retention cleanup batch. It prints the generic plan of every hot query (see
// TestHotPathPlans) with the timings. Generating the data takes a few minutes:
//
//	go test -run '^$' -bench FleetScale -benchtime 1x -timeout 30m -v ./internal/store
func BenchmarkFleetScale(b *testing.B) {
	for range b.N {
		measureFleetScale(b, fleet{devices: 100000, progressPerDevice: 100, rejected: 100000})
	}
}

// timing collects the durations of repeated runs of an operation.
type timing struct {
	name string
	runs []time.Duration
}

func (t timing) String() string {
	s := slices.Clone(t.runs)
	slices.Sort(s)
	p := func(q float64) time.Duration { return s[min(len(s)-1, int(float64(len(s))*q))] }
	return fmt.Sprintf("%-62s %5d runs  p50 %9s  p99 %9s  max %9s", t.name, len(s), p(0.5).Round(10*time.Microsecond),
		p(0.99).Round(10*time.Microsecond), s[len(s)-1].Round(10*time.Microsecond))
}

func measureFleetScale(b *testing.B, f fleet) {
	ctx := context.Background()
	url := testenv.DatabaseURL(b)
	st, err := store.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	populate(b, url, f)
	b.Logf("generated %d devices, %d progress reports, %d upgrades in %s", f.devices, f.devices*f.progressPerDevice, 3*f.devices,
		time.Since(start).Round(time.Second))
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var sizes string
	if err := conn.QueryRow(ctx, `SELECT string_agg(format('%s %s', relname, pg_size_pretty(pg_total_relation_size(relid))), ', ' ORDER BY pg_total_relation_size(relid) DESC)
		FROM pg_stat_user_tables`).Scan(&sizes); err != nil {
		b.Fatal(err)
	}
	b.Logf("sizes (with indexes): %s", sizes)

	var timings []timing
	measure := func(name string, n int, f func(i int) error) {
		b.Helper()
		t := timing{name: name}
		for i := range n {
			s := time.Now()
			if err := f(i); err != nil && !errors.Is(err, store.ErrNotFound) {
				b.Fatalf("%s: %v", name, err)
			}
			t.runs = append(t.runs, time.Since(s))
		}
		timings = append(timings, t)
	}
	dev := func(i int) string { return fmt.Sprintf("sim-%06d", 1+(i*7919)%int(float64(f.devices)*0.9)) }

	measure("starter status (device, latest upgrade, its events, last report)", 200, func(i int) error {
		d := dev(i)
		if _, err := st.GetDevice(ctx, d); err != nil {
			return err
		}
		u, err := st.LatestUpgrade(ctx, d)
		if err != nil {
			return err
		}
		if _, err := st.UpgradeEvents(ctx, u.RunID); err != nil {
			return err
		}
		_, err = st.LastProgress(ctx, d, ota.AttemptKey{CommandID: u.CommandID, Type: u.Type, Version: u.Version})
		return err
	})
	measure("progress reports of a device (20 newest)", 200, func(i int) error { _, err := st.ProgressEvents(ctx, dev(i), 20); return err })
	listAll := func(filter ota.DeviceFilter) (int, error) {
		n := 0
		for {
			page, err := st.ListDevices(ctx, filter)
			if err != nil {
				return n, err
			}
			n += len(page)
			if len(page) < filter.Limit {
				return n, nil
			}
			filter.After = page[len(page)-1].ID
		}
	}
	var listed int
	measure("devices list --prefix pump- (9,000 devices, pages of 500)", 5, func(int) error {
		var err error
		listed, err = listAll(ota.DeviceFilter{Prefix: "pump-", Limit: 500})
		return err
	})
	if listed != f.devices*9/100 {
		b.Errorf("listed %d pump- devices, want %d", listed, f.devices*9/100)
	}
	measure("devices list --prefix sim- (first page of 500 of 90,000)", 50, func(int) error {
		_, err := st.ListDevices(ctx, ota.DeviceFilter{Prefix: "sim-", Limit: 500})
		return err
	})
	measure("devices list --prefix gw-0999 (a few devices)", 50, func(int) error {
		_, err := st.ListDevices(ctx, ota.DeviceFilter{Prefix: "gw-0999", Limit: 500})
		return err
	})
	measure("rollout count of targets by prefix and label (CountTargets)", 20, func(int) error {
		_, err := st.CountDevices(ctx, ota.DeviceFilter{Prefix: "sim-", Labels: map[string]string{"site": "site-3"}})
		return err
	})
	var snapped int
	measure("rollout snapshot of 90,000 targets by prefix (SnapshotTargets)", 3, func(i int) error {
		var err error
		snapped, err = st.SnapshotTargets(ctx, "bench", fmt.Sprintf("bench/%d", i), ota.DeviceFilter{Prefix: "sim-",
			NotReportingKey: "firmware_ver", NotReportingValue: "1.1"})
		return err
	})
	if snapped != f.devices*9/10 {
		b.Errorf("snapshot of %d devices, want %d", snapped, f.devices*9/10)
	}
	measure("rollout page of 500 targets from the snapshot (ResolveTargets)", 180, func(i int) error {
		_, err := st.ListDevices(ctx, ota.DeviceFilter{List: "bench/0", After: dev(i * 500), Limit: 500})
		return err
	})
	measure("rollout resolution of all 90,000 snapshot targets, pages of 500", 3, func(int) error {
		n, err := listAll(ota.DeviceFilter{List: "bench/0", Limit: 500})
		if err == nil && n != snapped {
			err = fmt.Errorf("resolved %d of %d", n, snapped)
		}
		return err
	})
	measure("rollout page of a 100-device list (ResolveTargets)", 50, func(int) error {
		_, err := st.ListDevices(ctx, ota.DeviceFilter{List: "small/0001", Limit: 500})
		return err
	})
	measure("rollout status: count by state (100,000 upgrades of the rollout)", 20, func(int) error {
		_, err := st.CountByState(ctx, "fw-2", "")
		return err
	})
	// Writer w writes devices whose index is w modulo 8, as the bridge's shards split the
	// devices: two writers never update one device's row.
	batch := func(w, i int) []store.Report {
		var reports []store.Report
		for j := range 64 {
			d := dev((i*64+j)*8 + w)
			if j%8 == 7 {
				reports = append(reports, store.Report{DeviceID: d, Status: protocol.Status{"firmware_ver": "1.1"}, ReceivedAt: time.Now()})
				continue
			}
			reports = append(reports, store.Report{DeviceID: d, ReceivedAt: time.Now(),
				Progress: &protocol.Progress{ID: "cmd-bench", Type: "firmware", Version: "1.1", Progress: 1 + j}})
		}
		return reports
	}
	measure("bridge: batch of 64 reports (56 progress, 8 status), one writer", 300, func(i int) error {
		_, err := st.RecordBatch(ctx, batch(0, i), nil)
		return err
	})
	// Eight writers at once, as the bridge's eight shards write.
	var mu sync.Mutex
	par := timing{name: "bridge: batch of 64 reports, 8 writers at once"}
	startPar := time.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 100 {
				s := time.Now()
				if _, err := st.RecordBatch(ctx, batch(w, 1000+i), nil); err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				par.runs = append(par.runs, time.Since(s))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	parRate := float64(8*100*64) / time.Since(startPar).Seconds()
	timings = append(timings, par)
	var cursor ota.CleanupCursor
	deleted := 0
	measure("retention: delete batch of 5,000 expired progress reports", 40, func(int) error {
		n, next, _, err := st.DeleteExpiredBatch(ctx, ota.RetainProgressEvents, time.Now().Add(-30*24*time.Hour), cursor, 5000)
		cursor, deleted = next, deleted+n
		return err
	})
	for _, t := range timings {
		b.Log(t)
	}
	// The plans at this size.
	rec := &statements{}
	traced, err := store.OpenTraced(ctx, url, rec)
	if err != nil {
		b.Fatal(err)
	}
	defer traced.Close()
	checkPlans(b, ctx, url, traced, rec, testing.Verbose())
	b.Logf("8 writers stored %.0f reports/s; the cleanup deleted %d reports", parRate, deleted)
	b.ReportMetric(parRate, "bridge-reports/s")
}
