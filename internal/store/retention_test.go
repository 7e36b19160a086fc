package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func TestRetentionPolicy(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	got, err := st.RetentionPolicy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := ota.DefaultRetentionPolicy(); got != want {
		t.Errorf("a new database's policy is %+v, want the defaults %+v", got, want)
	}

	p := got
	p.ProgressEvents, p.Upgrades, p.TargetLists = 45*24*time.Hour, 400*24*time.Hour, 0
	p.BatchSize, p.BatchPause = 250, 1500*time.Millisecond
	if err := st.SetRetentionPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	got, err = st.RetentionPolicy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !got.UpdatedAt.After(p.UpdatedAt) {
		t.Errorf("updated_at %s did not move on from %s", got.UpdatedAt, p.UpdatedAt)
	}
	p.UpdatedAt = got.UpdatedAt
	if got != p {
		t.Errorf("stored %+v, read back %+v", p, got)
	}

	bad := p
	bad.ProgressEvents = time.Hour // less than a running upgrade may need
	if err := st.SetRetentionPolicy(ctx, bad); err == nil {
		t.Error("a policy that deletes progress reports after an hour was stored")
	}
	if got, _ := st.RetentionPolicy(ctx); got != p {
		t.Errorf("a refused policy changed the stored one: %+v", got)
	}
}

// TestDeleteExpiredBatch deletes the progress reports older than a cutoff in batches, with
// older and newer reports interleaved in insertion order (a bridge with a late clock), and
// finds exactly the old ones gone, each batch at most the batch size and the cursor moving on.
func TestDeleteExpiredBatch(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	if err := st.AddDevice(ctx, "d1", "hash", nil); err != nil {
		t.Fatal(err)
	}
	cutoff := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	var reports []store.Report
	old, young := 0, 0
	for i := range 1050 {
		at := cutoff.Add(time.Duration(i-700) * time.Minute) // 700 older, 350 newer
		if i%10 == 3 {
			at = cutoff.Add(time.Duration(i) * time.Hour) // newer, among the older ones
		}
		if at.Before(cutoff) {
			old++
		} else {
			young++
		}
		reports = append(reports, store.Report{DeviceID: "d1", ReceivedAt: at,
			Progress: &protocol.Progress{ID: "c", Type: "firmware", Version: "1", Progress: 1 + i%99}})
	}
	// One report exactly at the cutoff: not older, kept.
	reports = append(reports, store.Report{DeviceID: "d1", ReceivedAt: cutoff,
		Progress: &protocol.Progress{ID: "c", Type: "firmware", Version: "1", Progress: 50}})
	young++
	if _, err := st.RecordBatch(ctx, reports, nil); err != nil {
		t.Fatal(err)
	}

	var cursor ota.CleanupCursor
	var batches []int
	total := 0
	for done := false; !done; {
		var n int
		var err error
		prev := cursor
		n, cursor, done, err = st.DeleteExpiredBatch(ctx, ota.RetainProgressEvents, cutoff, cursor, 100)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 && !cursor.At.After(prev.At) && cursor.ID <= prev.ID {
			t.Fatalf("the cursor did not move on: %+v after %+v", cursor, prev)
		}
		batches = append(batches, n)
		total += n
		if len(batches) > 20 {
			t.Fatal("too many batches")
		}
	}
	// Full batches, then the rest: a batch of fewer than 100 is the last (after a full last
	// batch, an empty one says none is left).
	var wantBatches []int
	for range old / 100 {
		wantBatches = append(wantBatches, 100)
	}
	wantBatches = append(wantBatches, old%100)
	if !slices.Equal(batches, wantBatches) || total != old {
		t.Errorf("batches %v (%d rows), want %v (%d)", batches, total, wantBatches, old)
	}
	left := readProgressTimes(t, st)
	if len(left) != young {
		t.Errorf("%d reports left, want the %d not older than the cutoff", len(left), young)
	}
	for _, at := range left {
		if at.Before(cutoff) {
			t.Errorf("a report of %s, older than the cutoff, is left", at)
		}
	}
	// Run again: nothing more to do.
	n, _, done, err := st.DeleteExpiredBatch(ctx, ota.RetainProgressEvents, cutoff, ota.CleanupCursor{}, 100)
	if err != nil || n != 0 || !done {
		t.Errorf("second cleanup: %d deleted, done %v, %v", n, done, err)
	}
}

func readProgressTimes(t *testing.T, st testDB) []time.Time {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, st.url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	rows, err := conn.Query(ctx, `SELECT received_at FROM progress_events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	times, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
	if err != nil {
		t.Fatal(err)
	}
	return times
}

// TestDeleteExpiredOtherItems covers the rejected messages, the shed counts and the upgrades
// (a device's latest upgrade is kept, however old, and an unfinished one is never deleted).
func TestDeleteExpiredOtherItems(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	cutoff := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	for _, id := range []string{"d1", "d2"} {
		if err := st.AddDevice(ctx, id, "hash", nil); err != nil {
			t.Fatal(err)
		}
	}
	var rejected []store.Rejected
	var shed []store.ShedCount
	for i := range 30 {
		at := cutoff.Add(time.Duration(i-20) * time.Hour) // 20 older, 10 not
		rejected = append(rejected, store.Rejected{Topic: "devices/d1/status", DeviceID: "d1", Reason: "bad", Payload: []byte("x"), ReceivedAt: at})
		shed = append(shed, store.ShedCount{DeviceID: "d1", Reason: "rate", PeriodStart: at, Count: 5, FirstAt: at, LastAt: at})
	}
	if _, err := st.RecordBatch(ctx, nil, rejected); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordShed(ctx, shed); err != nil {
		t.Fatal(err)
	}
	// d1: three finished upgrades before the cutoff, the last of them its latest; d2: an old
	// one and a newer unfinished one.
	record := func(run, device string, state ota.State, at time.Time) {
		t.Helper()
		u := store.Upgrade{RunID: run, WorkflowID: "ota-" + device, DeviceID: device, Type: "firmware", Version: "1",
			URL: "http://x/p", MD5: "00", Size: 1, State: ota.StateSent}
		if err := st.RecordUpgrade(ctx, u, at, ""); err != nil {
			t.Fatal(err)
		}
		if state != ota.StateSent {
			u.State = state
			if err := st.RecordUpgrade(ctx, u, at.Add(time.Minute), ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	record("r1", "d1", ota.StateSucceeded, cutoff.Add(-72*time.Hour))
	record("r2", "d1", ota.StateFailed, cutoff.Add(-48*time.Hour))
	record("r3", "d1", ota.StateSucceeded, cutoff.Add(-24*time.Hour))
	record("r4", "d2", ota.StateTimedOut, cutoff.Add(-24*time.Hour))
	record("r5", "d2", ota.StateSent, cutoff.Add(-2*time.Hour))

	for _, tt := range []struct {
		item ota.RetentionItem
		want int
	}{
		{ota.RetainRejectedMessages, 20},
		{ota.RetainShedReports, 20},
		{ota.RetainUpgrades, 3}, // r1, r2 and r4; r3 is d1's latest, r5 is d2's and runs
	} {
		t.Run(string(tt.item), func(t *testing.T) {
			total := 0
			var cursor ota.CleanupCursor
			for done := false; !done; {
				var n int
				var err error
				n, cursor, done, err = st.DeleteExpiredBatch(ctx, tt.item, cutoff, cursor, 7)
				if err != nil {
					t.Fatal(err)
				}
				if n > 7 {
					t.Errorf("a batch of %d, more than 7", n)
				}
				total += n
			}
			if total != tt.want {
				t.Errorf("deleted %d, want %d", total, tt.want)
			}
		})
	}
	if got, err := st.RejectedMessages(ctx, "d1", 100); err != nil || len(got) != 10 {
		t.Errorf("%d rejected messages left (%v), want 10", len(got), err)
	}
	if got, err := st.ShedReports(ctx, "d1", cutoff.Add(-time.Hour*100), 100); err != nil || len(got) != 10 {
		t.Errorf("%d shed counts left (%v), want 10", len(got), err)
	}
	for run, want := range map[string]bool{"r1": false, "r2": false, "r3": true, "r4": false, "r5": true} {
		_, err := st.GetUpgrade(ctx, run)
		if got := err == nil; got != want {
			t.Errorf("upgrade %s kept %v, want %v (%v)", run, got, want, err)
		}
		if events, err := st.UpgradeEvents(ctx, run); err != nil || (len(events) > 0) != want {
			t.Errorf("upgrade %s: %d state changes left, want them kept %v (%v)", run, len(events), want, err)
		}
	}
	if latest, err := st.LatestUpgrade(ctx, "d1"); err != nil || latest.RunID != "r3" {
		t.Errorf("d1's latest upgrade is %q (%v), want r3", latest.RunID, err)
	}
}

func TestDeleteTargetListBatch(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	var ids []string
	for i := range 25 {
		ids = append(ids, fmt.Sprintf("dev-%02d", i))
	}
	addDevices(t, st.Store, ids...)
	key, _, err := st.CreateTargetList(ctx, "roll", ids)
	if err != nil {
		t.Fatal(err)
	}
	lists, err := st.ExpiredTargetLists(ctx, time.Now().Add(time.Hour), "", 10)
	if err != nil || len(lists) != 1 || lists[0].Key != key || lists[0].Rollout != "roll" {
		t.Fatalf("expired lists %+v (%v), want %s", lists, err, key)
	}
	if lists, err := st.ExpiredTargetLists(ctx, time.Now().Add(-time.Hour), "", 10); err != nil || len(lists) != 0 {
		t.Errorf("lists stored before an hour ago: %+v (%v), want none", lists, err)
	}
	var sizes []int
	for gone := false; !gone; {
		var n int
		n, gone, err = st.DeleteTargetListBatch(ctx, key, 10)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n)
	}
	if !slices.Equal(sizes, []int{10, 10, 5}) {
		t.Errorf("batches %v, want [10 10 5]", sizes)
	}
	if lists, err := st.TargetLists(ctx, "roll"); err != nil || len(lists) != 0 {
		t.Errorf("lists left: %+v (%v)", lists, err)
	}
}

func TestRecordShedAddsUp(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	p := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return p.Add(time.Duration(s) * time.Second) }
	if err := st.RecordShed(ctx, []store.ShedCount{
		{DeviceID: "d1", Reason: "rate", PeriodStart: p, Count: 10, FirstAt: at(5), LastAt: at(20)},
		{DeviceID: "d1", Reason: "rate", PeriodStart: p, Count: 1, FirstAt: at(3), LastAt: at(4)}, // the same row twice in a flush
		{DeviceID: "d1", Reason: "invalid", PeriodStart: p, Count: 2, FirstAt: at(1), LastAt: at(2)},
	}); err != nil {
		t.Fatal(err)
	}
	// A second bridge, or the next flush of the interval.
	if err := st.RecordShed(ctx, []store.ShedCount{{DeviceID: "d1", Reason: "rate", PeriodStart: p, Count: 7, FirstAt: at(30), LastAt: at(59)}}); err != nil {
		t.Fatal(err)
	}
	got, err := st.ShedReports(ctx, "d1", p, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.ShedCount{
		{DeviceID: "d1", Reason: "invalid", PeriodStart: p, Count: 2, FirstAt: at(1), LastAt: at(2)},
		{DeviceID: "d1", Reason: "rate", PeriodStart: p, Count: 18, FirstAt: at(3), LastAt: at(59)},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if g := got[i]; g.DeviceID != want[i].DeviceID || g.Reason != want[i].Reason || g.Count != want[i].Count ||
			!g.PeriodStart.Equal(want[i].PeriodStart) || !g.FirstAt.Equal(want[i].FirstAt) || !g.LastAt.Equal(want[i].LastAt) {
			t.Errorf("row %d: %+v, want %+v", i, g, want[i])
		}
	}
}

// TestListDevicesByPrefixAndList: a prefix selects exactly the IDs that start with it (byte
// by byte, whatever the database's collation), pages follow one another in byte order, and a
// list's pages come from the list, in ID order, with the other filters applied.
func TestListDevicesByPrefixAndList(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	ids := []string{"A-1", "a-1", "a-2", "a.1", "a_1", "a-10", "ab", "b-1", "a-", "a", "Z"}
	addDevices(t, st.Store, ids...)
	if err := st.RecordStatus(ctx, "a-2", protocol.Status{"firmware_ver": "1.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	page := func(f ota.DeviceFilter) []string {
		t.Helper()
		var out []string
		for {
			devs, err := st.ListDevices(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range devs {
				out = append(out, d.ID)
			}
			if len(devs) < f.Limit {
				return out
			}
			f.After = devs[len(devs)-1].ID
		}
	}
	tests := []struct {
		f    ota.DeviceFilter
		want []string
	}{
		{ota.DeviceFilter{Prefix: "a-", Limit: 2}, []string{"a-", "a-1", "a-10", "a-2"}},
		{ota.DeviceFilter{Prefix: "a", Limit: 3}, []string{"a", "a-", "a-1", "a-10", "a-2", "a.1", "a_1", "ab"}},
		{ota.DeviceFilter{Prefix: "", Limit: 5}, []string{"A-1", "Z", "a", "a-", "a-1", "a-10", "a-2", "a.1", "a_1", "ab", "b-1"}},
		{ota.DeviceFilter{Prefix: "a-", NotReportingKey: "firmware_ver", NotReportingValue: "1.1", Limit: 10}, []string{"a-", "a-1", "a-10"}},
		{ota.DeviceFilter{Prefix: "zz", Limit: 10}, nil},
	}
	for _, tt := range tests {
		if got := page(tt.f); !slices.Equal(got, tt.want) {
			t.Errorf("%+v: %v, want %v", tt.f, got, tt.want)
		}
		n, err := st.CountDevices(ctx, tt.f)
		if err != nil || n != len(tt.want) {
			t.Errorf("%+v: counted %d (%v), want %d", tt.f, n, err, len(tt.want))
		}
	}

	key, _, err := st.CreateTargetList(ctx, "r", []string{"b-1", "a-2", "a-1", "Z"})
	if err != nil {
		t.Fatal(err)
	}
	if got := page(ota.DeviceFilter{List: key, Limit: 2}); !slices.Equal(got, []string{"Z", "a-1", "a-2", "b-1"}) {
		t.Errorf("list pages: %v", got)
	}
	f := ota.DeviceFilter{List: key, Prefix: "a-", NotReportingKey: "firmware_ver", NotReportingValue: "1.1", Limit: 10}
	if got := page(f); !slices.Equal(got, []string{"a-1"}) {
		t.Errorf("list with filters: %v, want [a-1]", got)
	}
	if n, err := st.CountDevices(ctx, ota.DeviceFilter{List: key}); err != nil || n != 4 {
		t.Errorf("counted %d in the list (%v), want 4", n, err)
	}
	if _, err := st.ListDevices(ctx, ota.DeviceFilter{List: "no/such", Limit: 10}); err != nil {
		t.Errorf("a missing list: %v", err)
	}
}
