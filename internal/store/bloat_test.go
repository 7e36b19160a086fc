package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// BenchmarkRetentionBloat measures what deleting in batches does to progress_events over
// time: 30 days of reports (50,000 a day) are kept, then 20 more days are simulated, each
// adding a day of reports and running the cleanup's batch deletes (5,000 rows, 100 ms apart)
// on the day that expired, while a writer stores batches of 64 reports as the bridge does
// (reports the next day's cleanup deletes, so that the table holds 30 days throughout). It
// prints, day by day, the table's live and dead rows, its heap and total (index) sizes and
// the autovacuums so far, the cleanup's time and its slowest batch, and the writer's batch
// latency while the cleanup ran: once with PostgreSQL's autovacuum defaults, once with the
// table's scale factor at 0.02, as migration 006 sets it. autovacuum_naptime is set to 1 s on the test server for the
// run, so that autovacuum looks at the table once per simulated day (a real server looks
// every minute, 60 times per hourly cleanup):
//
//	go test -run '^$' -bench RetentionBloat -benchtime 1x -timeout 30m -v ./internal/store
func BenchmarkRetentionBloat(b *testing.B) {
	for _, v := range []struct{ name, alter string }{
		{"autovacuum-defaults", "RESET (autovacuum_vacuum_scale_factor)"},
		{"scale-factor-0.02-as-migrated", ""}, // migration 006
	} {
		b.Run(v.name, func(b *testing.B) {
			for range b.N {
				measureBloat(b, v.alter)
			}
		})
	}
}

func measureBloat(b *testing.B, alter string) {
	const (
		perDay   = 50000
		keepDays = 30
		days     = 20
		devices  = 10000
	)
	ctx := context.Background()
	url := testenv.DatabaseURL(b)
	st, err := store.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	exec := func(sql string, args ...any) {
		b.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`ALTER SYSTEM SET autovacuum_naptime = '1s'`)
	exec(`SELECT pg_reload_conf()`)
	defer func() {
		_, _ = conn.Exec(ctx, `ALTER SYSTEM RESET autovacuum_naptime`)
		_, _ = conn.Exec(ctx, `SELECT pg_reload_conf()`)
	}()
	if alter != "" {
		exec(`ALTER TABLE progress_events ` + alter)
	}
	exec(`INSERT INTO devices (id) SELECT format('dev-%s', lpad(i::text, 6, '0')) FROM generate_series(1, $1::int) i`, devices)
	// Day d's reports, received over that day, devices in turn.
	day0 := time.Now().Add(-(keepDays + days) * 24 * time.Hour).Truncate(24 * time.Hour)
	addDay := func(d int) {
		exec(`INSERT INTO progress_events (device_id, command_id, type, version, progress, description, received_at)
			SELECT format('dev-%s', lpad((1 + i % $2)::text, 6, '0')), 'c' || $3::int, 'firmware', '1.1', 1 + i % 99, 'downloading',
			       $4::timestamptz + i * (interval '1 day' / $1)
			FROM generate_series(0, $1::int - 1) i`, perDay, devices, d, day0.Add(time.Duration(d)*24*time.Hour))
	}
	start := time.Now()
	for d := range keepDays {
		addDay(d)
	}
	exec(`VACUUM ANALYZE progress_events`)
	type sizes struct {
		live, dead, heap, total, vacuums int64
	}
	read := func() sizes {
		var s sizes
		if err := conn.QueryRow(ctx, `SELECT n_live_tup, n_dead_tup, pg_relation_size(relid), pg_total_relation_size(relid),
			autovacuum_count + vacuum_count FROM pg_stat_user_tables WHERE relname = 'progress_events'`).
			Scan(&s.live, &s.dead, &s.heap, &s.total, &s.vacuums); err != nil {
			b.Fatal(err)
		}
		return s
	}
	first := read()
	b.Logf("%d days of %d reports stored in %s: heap %d MiB, with indexes %d MiB", keepDays, perDay, time.Since(start).Round(time.Second),
		first.heap>>20, first.total>>20)
	b.Logf("%4s %9s %9s %9s %10s %9s %9s %12s %10s", "day", "live", "dead", "heap MiB", "total MiB", "vacuums", "cleanup", "slowest batch", "writer p99")

	var wmu sync.Mutex
	var writes []time.Duration
	for d := keepDays; d < keepDays+days; d++ {
		addDay(d)
		cutoff := day0.Add(time.Duration(d-keepDays+1) * 24 * time.Hour)
		// The bridge writes while the cleanup runs: reports the next cleanup deletes, so that
		// the live rows stay what 30 days hold.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var reports []store.Report
				for j := range 64 {
					reports = append(reports, store.Report{DeviceID: fmt.Sprintf("dev-%06d", 1+(i*64+j)%devices), ReceivedAt: cutoff.Add(time.Hour),
						Progress: &protocol.Progress{ID: "w", Type: "firmware", Version: "1.1", Progress: 1 + j}})
				}
				s := time.Now()
				if _, err := st.RecordBatch(ctx, reports, nil); err != nil {
					b.Error(err)
					return
				}
				wmu.Lock()
				writes = append(writes, time.Since(s))
				wmu.Unlock()
			}
		})
		cleanupStart := time.Now()
		var slowest time.Duration
		var cursor ota.CleanupCursor
		for done := false; !done; {
			s := time.Now()
			var err error
			_, cursor, done, err = st.DeleteExpiredBatch(ctx, ota.RetainProgressEvents, cutoff, cursor, 5000)
			if err != nil {
				b.Fatal(err)
			}
			slowest = max(slowest, time.Since(s))
			time.Sleep(ota.DefaultCleanupBatchPause) // the cleanup's pause between batches
		}
		took := time.Since(cleanupStart)
		close(stop)
		wg.Wait()
		wmu.Lock()
		w := slices.Clone(writes)
		writes = writes[:0]
		wmu.Unlock()
		slices.Sort(w)
		s := read()
		b.Logf("%4d %9d %9d %9d %10d %9d %9s %12s %10s", d-keepDays+1, s.live, s.dead, s.heap>>20, s.total>>20, s.vacuums-first.vacuums,
			took.Round(time.Millisecond), slowest.Round(time.Millisecond), w[min(len(w)-1, len(w)*99/100)].Round(time.Millisecond))
	}
	last := read()
	perRow := func(s sizes, bytes int64) float64 { return float64(bytes) / float64(s.live) }
	b.Logf("after %d days: heap %d MiB (%+.0f%% of the first 30 days'), with indexes %d MiB (%+.0f%%), %d autovacuums; "+
		"bytes per live row: heap %.0f -> %.0f, with indexes %.0f -> %.0f",
		days, last.heap>>20, 100*(float64(last.heap)/float64(first.heap)-1), last.total>>20, 100*(float64(last.total)/float64(first.total)-1),
		last.vacuums-first.vacuums, perRow(first, first.heap), perRow(last, last.heap), perRow(first, first.total), perRow(last, last.total))
	b.ReportMetric(100*(float64(last.heap)/float64(first.heap)-1), "heap-growth-%")
	b.ReportMetric(100*(float64(last.total)/float64(first.total)-1), "total-growth-%")
}
