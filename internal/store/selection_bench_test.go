package store_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// fleetOf registers n devices bench-00000001... that report firmware 1.0 (one in ten 2.0, which
// the benchmark's package does not fit), in batches, as an import and the bridge would.
func fleetOf(b *testing.B, st *store.Store, n int) {
	b.Helper()
	ctx := context.Background()
	for start := 0; start < n; start += 5000 {
		var devs []store.NewDevice
		var reports []store.Report
		for i := start; i < min(start+5000, n); i++ {
			id := fmt.Sprintf("bench-%08d", i)
			devs = append(devs, store.NewDevice{ID: id, SecretHash: "h", Labels: map[string]string{"model": "pump"}})
			v := "1.0"
			if i%10 == 0 {
				v = "2.0"
			}
			reports = append(reports, store.Report{DeviceID: id, Status: protocol.Status{"firmware_ver": v}, ReceivedAt: time.Now()})
		}
		if err := st.AddDevices(ctx, devs); err != nil {
			b.Fatal(err)
		}
		if _, err := st.RecordBatch(ctx, reports, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func benchSelector() ota.Selector {
	return ota.Selector{Filter: ota.DeviceFilter{Prefix: "bench-"}, Version: "1.1", VersionKey: "firmware_ver",
		Compat: &ota.Compatibility{Labels: map[string]string{"model": "pump"}, Versions: ">=1.0,<2.0"}}
}

// BenchmarkSelectTargets selects a rollout's targets among 10,000 and 100,000 devices, with a
// version range that must be judged in Go, page by page: it reports the time, and the
// largest heap seen at a page's end, which stays flat as the fleet grows tenfold.
//
//	go test -run '^$' -bench SelectTargets -benchtime 3x ./internal/store
func BenchmarkSelectTargets(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("%d", n), func(b *testing.B) {
			st := openStore(b)
			fleetOf(b, st.Store, n)
			ctx := context.Background()
			var peak uint64
			var ms runtime.MemStats
			runtime.GC()
			b.ResetTimer()
			for i := range b.N {
				got, err := st.SelectTargets(ctx, benchSelector(), store.Selection{Rollout: "bench", Key: fmt.Sprintf("bench@%d", i),
					Page: func(int) {
						runtime.ReadMemStats(&ms)
						peak = max(peak, ms.HeapAlloc)
					}})
				if err != nil {
					b.Fatal(err)
				}
				if want := n - n/10; got.Targets != want || got.LeftOut.Incompatible != n/10 {
					b.Fatalf("%d targets, %+v left out; want %d, %d incompatible", got.Targets, got.LeftOut, want, n/10)
				}
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/selection")
		})
	}
}

// BenchmarkFindLate measures a continuous rollout's look for late devices in a registry of
// 100,000: an idle look (nothing changed since the last), and a look that finds 500 devices
// among 5,000 that changed (the others up to date).
//
//	go test -run '^$' -bench FindLate -benchtime 20x ./internal/store
func BenchmarkFindLate(b *testing.B) {
	st := openStore(b)
	fleetOf(b, st.Store, 100_000)
	ctx := context.Background()
	sel, err := st.SelectTargets(ctx, benchSelector(), store.Selection{Rollout: "late", Key: "late@1", KeepLeftOut: true})
	if err != nil {
		b.Fatal(err)
	}
	search := store.LateSearch{Rollout: "late", Since: time.Now(), LeftOutKey: "late@1", Selector: benchSelector(),
		Cursor: sel.Changes, Limit: 500, ScanLimit: 20_000}
	b.Run("idle", func(b *testing.B) {
		for range b.N {
			got, err := st.FindLate(ctx, search)
			if err != nil || len(got.IDs) != 0 {
				b.Fatalf("idle look found %d, %v", len(got.IDs), err)
			}
			search.Cursor = got.Cursor
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/look")
	})
	b.Run("5000-changed", func(b *testing.B) {
		var took time.Duration
		for i := range b.N {
			b.StopTimer()
			// 5,000 devices report again: 4,500 already on 1.1, 500 on 1.0.
			var reports []store.Report
			for j := 0; j < 5000; j++ {
				v := "1.1"
				if j%10 == 0 {
					v = "1.0"
				}
				id := fmt.Sprintf("bench-%08d", (i*5000+j)%100_000)
				reports = append(reports, store.Report{DeviceID: id, Status: protocol.Status{"firmware_ver": v}, ReceivedAt: time.Now()})
			}
			if _, err := st.RecordBatch(ctx, reports, nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			got, err := st.FindLate(ctx, search)
			took += time.Since(start)
			if err != nil || len(got.IDs) == 0 {
				b.Fatalf("found %d, %v", len(got.IDs), err)
			}
			search.Cursor = got.Cursor
		}
		b.ReportMetric(float64(took.Microseconds())/float64(b.N)/1000, "ms/look")
	})
}

// BenchmarkResolveSnapshot reads a rollout's snapshot of 90,000 targets among 100,000 devices
// page by page, as the rollout's ResolveTargets does (pages of 500).
//
//	go test -run '^$' -bench ResolveSnapshot -benchtime 1x ./internal/store
func BenchmarkResolveSnapshot(b *testing.B) {
	st := openStore(b)
	fleetOf(b, st.Store, 100_000)
	ctx := context.Background()
	if _, err := st.SelectTargets(ctx, benchSelector(), store.Selection{Rollout: "snap", Key: "snap@1"}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		n, after := 0, ""
		for {
			page, err := st.ListDevices(ctx, ota.DeviceFilter{List: "snap@1", After: after, Limit: 500})
			if err != nil {
				b.Fatal(err)
			}
			n += len(page)
			if len(page) < 500 {
				break
			}
			after = page[len(page)-1].ID
		}
		if n != 90_000 {
			b.Fatalf("read %d targets, want 90,000", n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/snapshot")
}
