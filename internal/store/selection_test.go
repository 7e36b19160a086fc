package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// fleetDevice is a device a selection test registers.
type fleetDevice struct {
	id       string
	labels   map[string]string
	version  string // reported firmware_ver; "" reports nothing
	disabled bool
}

func registerFleet(t *testing.T, st *store.Store, devices ...fleetDevice) {
	t.Helper()
	ctx := context.Background()
	for _, d := range devices {
		if err := st.AddDevice(ctx, d.id, "hash", d.labels); err != nil {
			t.Fatal(err)
		}
		if d.version != "" {
			if err := st.RecordStatus(ctx, d.id, protocol.Status{"firmware_ver": d.version}, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		if d.disabled {
			if err := st.SetDisabled(ctx, d.id, true); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// endUpgrade records an upgrade of the device that ended in state at, in rollout.
func endUpgrade(t *testing.T, st *store.Store, run, device, rollout string, state ota.State, at time.Time) {
	t.Helper()
	u := store.Upgrade{RunID: run, WorkflowID: ota.DeviceWorkflowID(device), DeviceID: device, Rollout: rollout,
		Type: "firmware", Version: "1.1", State: ota.StateSent}
	if err := st.RecordUpgrade(context.Background(), u, at.Add(-time.Minute), ""); err != nil {
		t.Fatal(err)
	}
	if state == ota.StateSent {
		return
	}
	u.State = state
	if err := st.RecordUpgrade(context.Background(), u, at, ""); err != nil {
		t.Fatal(err)
	}
}

// conn is a connection of its own to the test's database, for what the store does not do.
func (db testDB) conn(t *testing.T) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func pumpSelector() ota.Selector {
	return ota.Selector{Filter: ota.DeviceFilter{Prefix: "p-"}, Version: "1.1", VersionKey: "firmware_ver",
		Compat: &ota.Compatibility{Labels: map[string]string{"model": "pump"}, Versions: ">=1.0,<1.1"}}
}

func TestSelectTargets(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	pump := map[string]string{"model": "pump"}
	registerFleet(t, st.Store,
		fleetDevice{id: "p-1", labels: pump, version: "1.0"},
		fleetDevice{id: "p-2", labels: pump, version: "1.0"},
		fleetDevice{id: "p-3", labels: pump, version: "1.1"},                                // up to date
		fleetDevice{id: "p-4", labels: map[string]string{"model": "valve"}, version: "1.0"}, // incompatible
		fleetDevice{id: "p-5", labels: pump, version: "0.9"},                                // incompatible
		fleetDevice{id: "p-6", labels: pump},                                                // never seen
		fleetDevice{id: "p-7", labels: pump, version: "1.0", disabled: true},
		fleetDevice{id: "p-8", labels: pump, version: "1.0"}, // quarantined below
		fleetDevice{id: "x-1", labels: pump, version: "1.0"}, // not matched
	)
	if _, err := st.SetQuarantinePolicy(ctx, store.QuarantinePolicy{Failures: 1, Of: 1}); err != nil {
		t.Fatal(err)
	}
	endUpgrade(t, st.Store, "run-p8", "p-8", "", ota.StateFailed, time.Now())

	wantLeft := ota.LeftOut{UpToDate: 1, Incompatible: 2, Quarantined: 1, Disabled: 1, NeverSeen: 1}
	tests := []struct {
		name        string
		how         store.Selection
		wantTargets []string
	}{
		{"count only", store.Selection{Rollout: "fw"}, nil},
		{"stored", store.Selection{Rollout: "fw", Key: "fw@1", KeepLeftOut: true}, []string{"p-1", "p-2"}},
		// A retried selection of the same key stores what it counts, once.
		{"stored again", store.Selection{Rollout: "fw", Key: "fw@1", KeepLeftOut: true}, []string{"p-1", "p-2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := st.SelectTargets(ctx, pumpSelector(), tt.how)
			if err != nil {
				t.Fatal(err)
			}
			if got.Targets != 2 || got.LeftOut != wantLeft {
				t.Errorf("SelectTargets = %d targets, left out %+v; want 2, %+v", got.Targets, got.LeftOut, wantLeft)
			}
			if got.Changes.XID == "" {
				t.Error("no change cursor")
			}
			if tt.how.Key != "" {
				if ids := listed(t, st.Store, tt.how.Key); !slices.Equal(ids, tt.wantTargets) {
					t.Errorf("list %s = %v, want %v", tt.how.Key, ids, tt.wantTargets)
				}
			}
		})
	}

	// An explicit list that is not stored (rollout plan) is judged the same way.
	sel := pumpSelector()
	sel.Filter.Prefix = ""
	got, err := st.SelectTargets(ctx, sel, store.Selection{IDs: []string{"p-1", "p-3", "p-4", "x-1", "ghost"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := (ota.LeftOut{UpToDate: 1, Incompatible: 1}); got.Targets != 2 || got.LeftOut != want {
		t.Errorf("explicit IDs: %d targets, left out %+v; want 2 (p-1, x-1), %+v", got.Targets, got.LeftOut, want)
	}
}

// TestSelectTargets_Pages: selecting judges page by page and stores every target.
func TestSelectTargets_Pages(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	n := 2*store.SelectPageSize + 17
	devs := make([]store.NewDevice, n)
	for i := range devs {
		devs[i] = store.NewDevice{ID: fmt.Sprintf("big-%05d", i), SecretHash: "h"}
	}
	if err := st.AddDevices(ctx, devs); err != nil {
		t.Fatal(err)
	}
	if _, err := st.conn(t).Exec(ctx, `UPDATE devices SET reported = '{"firmware_ver":"1.0"}', reported_at = now()`); err != nil {
		t.Fatal(err)
	}
	var pages []int
	sel := ota.Selector{Filter: ota.DeviceFilter{Prefix: "big-"}, Version: "1.1", VersionKey: "firmware_ver"}
	got, err := st.SelectTargets(ctx, sel, store.Selection{Rollout: "big", Key: "big@1", Page: func(n int) { pages = append(pages, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if got.Targets != n {
		t.Errorf("%d targets, want %d", got.Targets, n)
	}
	if c, err := st.CountDevices(ctx, ota.DeviceFilter{List: "big@1"}); err != nil || c != n {
		t.Errorf("list holds %d (%v), want %d", c, err, n)
	}
	if want := []int{1000, 2000, n}; !slices.Equal(pages, want) {
		t.Errorf("pages judged %v, want %v", pages, want)
	}
}

func TestFindLate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	pump := map[string]string{"model": "pump"}
	registerFleet(t, st.Store, fleetDevice{id: "p-1", labels: pump, version: "1.0"})
	start := time.Now().Add(-time.Hour) // before every upgrade endUpgrade records
	sel, err := st.SelectTargets(ctx, pumpSelector(), store.Selection{Rollout: "fw", Key: "fw@1", KeepLeftOut: true})
	if err != nil || sel.Targets != 1 {
		t.Fatalf("SelectTargets = %+v, %v", sel, err)
	}
	search := store.LateSearch{Rollout: "fw", Since: start, LeftOutKey: "fw@1", Selector: pumpSelector(), Cursor: sel.Changes,
		Limit: 10, ScanLimit: 100}
	find := func(t *testing.T) ota.LateTargets {
		t.Helper()
		got, err := st.FindLate(ctx, search)
		if err != nil {
			t.Fatal(err)
		}
		search.Cursor = got.Cursor
		return got
	}
	// p-1 was taken on at pre-flight and upgraded: its upgrade's record keeps it out.
	endUpgrade(t, st.Store, "run-1", "p-1", "fw", ota.StateSucceeded, time.Now())
	if err := st.RecordStatus(ctx, "p-1", protocol.Status{"firmware_ver": "1.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := find(t); len(got.IDs) != 0 {
		t.Errorf("nothing new: found %v", got.IDs)
	}

	// A device registers (never seen: left out), then reports its status (a target).
	registerFleet(t, st.Store, fleetDevice{id: "p-2", labels: pump})
	if got := find(t); len(got.IDs) != 0 {
		t.Errorf("a device that never reported: found %v", got.IDs)
	}
	if err := st.RecordStatus(ctx, "p-2", protocol.Status{"firmware_ver": "1.0"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	// An incompatible device and one of another prefix change too.
	registerFleet(t, st.Store, fleetDevice{id: "p-3", labels: map[string]string{"model": "valve"}, version: "1.0"},
		fleetDevice{id: "x-1", labels: pump, version: "1.0"})
	got := find(t)
	if !slices.Equal(got.IDs, []string{"p-2"}) || got.LeftOut != (ota.LeftOut{Incompatible: 1}) {
		t.Errorf("found %v, left out %+v; want [p-2], 1 incompatible", got.IDs, got.LeftOut)
	}
	// Found once: the cursor moved past it.
	if got := find(t); len(got.IDs) != 0 {
		t.Errorf("found again: %v", got.IDs)
	}
	// Its upgrade times out (it went offline); when it reports again, it is a target again.
	endUpgrade(t, st.Store, "run-2", "p-2", "fw", ota.StateTimedOut, time.Now())
	if err := st.RecordStatus(ctx, "p-2", protocol.Status{"firmware_ver": "1.0"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	// The incompatible device is relabelled... by a new status it fits: it leaves the count.
	if _, err := st.conn(t).Exec(ctx, `UPDATE devices SET labels = '{"model":"pump"}' WHERE id = 'p-3'`); err != nil {
		t.Fatal(err)
	}
	got = find(t)
	if !slices.Equal(got.IDs, []string{"p-2", "p-3"}) || got.LeftOut != (ota.LeftOut{}) {
		t.Errorf("found %v, left out %+v; want [p-2 p-3], none", got.IDs, got.LeftOut)
	}
	// A device with a failed upgrade of the rollout is not taken on again.
	endUpgrade(t, st.Store, "run-3", "p-3", "fw", ota.StateFailed, time.Now())
	if err := st.RecordStatus(ctx, "p-3", protocol.Status{"firmware_ver": "1.0"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := find(t); len(got.IDs) != 0 {
		t.Errorf("a device whose upgrade failed: found %v", got.IDs)
	}

	// Limit: three new targets, two at a time, in the order of their changes.
	registerFleet(t, st.Store, fleetDevice{id: "p-9", labels: pump, version: "1.0"},
		fleetDevice{id: "p-8", labels: pump, version: "1.0"}, fleetDevice{id: "p-7", labels: pump, version: "1.0"})
	search.Limit = 2
	first, second := find(t), find(t)
	if all := append(first.IDs, second.IDs...); len(first.IDs) != 2 || !slices.Equal(all, []string{"p-9", "p-8", "p-7"}) {
		t.Errorf("found %v then %v; want [p-9 p-8] then [p-7]", first.IDs, second.IDs)
	}

	search.Cursor = ota.ChangeCursor{XID: "not a number"}
	if _, err := st.FindLate(ctx, search); err == nil {
		t.Error("a bad cursor was accepted")
	}
}

// TestFindLate_SeesLateCommits: a change whose transaction commits after later changes were
// read is found all the same.
func TestFindLate_SeesLateCommits(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	pump := map[string]string{"model": "pump"}
	sel, err := st.SelectTargets(ctx, pumpSelector(), store.Selection{Rollout: "fw", Key: "fw@1"})
	if err != nil {
		t.Fatal(err)
	}
	search := store.LateSearch{Rollout: "fw", Since: time.Now(), LeftOutKey: "fw@1", Selector: pumpSelector(), Cursor: sel.Changes,
		Limit: 10, ScanLimit: 100}
	// A slow transaction registers p-slow and holds on; a fast one registers p-fast.
	slow, err := st.conn(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(ctx)
	if _, err := slow.Exec(ctx, `INSERT INTO devices (id, labels, reported, reported_at) VALUES ('p-slow', '{"model":"pump"}', '{"firmware_ver":"1.0"}', now())`); err != nil {
		t.Fatal(err)
	}
	registerFleet(t, st.Store, fleetDevice{id: "p-fast", labels: pump, version: "1.0"})
	got, err := st.FindLate(ctx, search)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.IDs) != 0 {
		t.Errorf("found %v while an older transaction is open; want nothing past it yet", got.IDs)
	}
	search.Cursor = got.Cursor
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = st.FindLate(ctx, search)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got.IDs, "p-slow") || !slices.Contains(got.IDs, "p-fast") {
		t.Errorf("found %v; want p-slow and p-fast", got.IDs)
	}
}

func TestQuarantine(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	registerFleet(t, st.Store, fleetDevice{id: "q-1", version: "1.0"}, fleetDevice{id: "q-2", version: "1.0"},
		fleetDevice{id: "q-3", version: "1.0"})
	t0 := time.Now().Add(-time.Hour)
	// q-1: failed, timed out, succeeded; q-2: reverted, failed (and canceled and skipped,
	// which do not judge a device); q-3: one failure.
	endUpgrade(t, st.Store, "a1", "q-1", "fw", ota.StateFailed, t0)
	endUpgrade(t, st.Store, "a2", "q-1", "fw", ota.StateTimedOut, t0.Add(time.Minute))
	endUpgrade(t, st.Store, "a3", "q-1", "", ota.StateSucceeded, t0.Add(2*time.Minute))
	endUpgrade(t, st.Store, "b1", "q-2", "fw", ota.StateReverted, t0)
	endUpgrade(t, st.Store, "b2", "q-2", "fw", ota.StateFailed, t0.Add(time.Minute))
	endUpgrade(t, st.Store, "b3", "q-2", "fw", ota.StateCanceled, t0.Add(2*time.Minute))
	endUpgrade(t, st.Store, "b4", "q-2", "fw", ota.StateSkipped, t0.Add(3*time.Minute))
	endUpgrade(t, st.Store, "c1", "q-3", "fw", ota.StateFailed, t0)

	if _, ok, err := st.QuarantinePolicy(ctx); ok || err != nil {
		t.Fatalf("policy on by default (%v)", err)
	}
	for _, bad := range []store.QuarantinePolicy{{Failures: 0, Of: 3}, {Failures: 3, Of: 2}, {Failures: 1, Of: 101}} {
		if _, err := st.SetQuarantinePolicy(ctx, bad); err == nil {
			t.Errorf("policy %+v accepted", bad)
		}
	}
	// 2 of the last 2: q-2 only (q-1's last two are a timeout and a success).
	n, err := st.SetQuarantinePolicy(ctx, store.QuarantinePolicy{Failures: 2, Of: 2})
	if err != nil || n != 1 {
		t.Fatalf("SetQuarantinePolicy = %d, %v; want 1 quarantined", n, err)
	}
	in := func() []string {
		t.Helper()
		qs, err := st.QuarantinedDevices(ctx, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		ids := []string{}
		for _, q := range qs {
			ids = append(ids, q.DeviceID)
			if q.Reason == "" || q.Since.IsZero() {
				t.Errorf("quarantine of %s has no reason or time: %+v", q.DeviceID, q)
			}
		}
		return ids
	}
	if got := in(); !slices.Equal(got, []string{"q-2"}) {
		t.Errorf("quarantined %v, want [q-2]", got)
	}
	// An upgrade's end judges its device: q-3's second failure.
	endUpgrade(t, st.Store, "c2", "q-3", "", ota.StateFailed, t0.Add(time.Minute))
	if got := in(); !slices.Equal(got, []string{"q-2", "q-3"}) {
		t.Errorf("quarantined %v, want [q-2 q-3]", got)
	}
	// Released, q-3 is judged by the upgrades that end from now on only.
	if err := st.ReleaseQuarantine(ctx, "q-3"); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseQuarantine(ctx, "q-3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("releasing a released device: %v, want ErrNotFound", err)
	}
	endUpgrade(t, st.Store, "c3", "q-3", "", ota.StateFailed, time.Now())
	if got := in(); !slices.Equal(got, []string{"q-2"}) {
		t.Errorf("one failure after the release quarantined again: %v", got)
	}
	// Off: no device is quarantined any more; q-2 stays until released.
	if err := st.DisableQuarantine(ctx); err != nil {
		t.Fatal(err)
	}
	endUpgrade(t, st.Store, "c4", "q-3", "", ota.StateFailed, time.Now().Add(time.Second))
	if got := in(); !slices.Equal(got, []string{"q-2"}) {
		t.Errorf("quarantine off: quarantined %v, want [q-2]", got)
	}
}
