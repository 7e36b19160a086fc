package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// TestUpgradeRecordFinal: a finished run's record never changes, except a success that turns
// out reverted within its soak.
func TestUpgradeRecordFinal(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		from, to ota.State
		want     ota.State
	}{
		{ota.StateSucceeded, ota.StateReverted, ota.StateReverted},
		{ota.StateSucceeded, ota.StateFailed, ota.StateSucceeded},
		{ota.StateFailed, ota.StateReverted, ota.StateFailed},
		{ota.StateCanceled, ota.StateSucceeded, ota.StateCanceled},
		{ota.StateReverted, ota.StateSucceeded, ota.StateReverted},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s then %s", tt.from, tt.to), func(t *testing.T) {
			id := fmt.Sprintf("final-%d", i)
			if err := st.AddDevice(ctx, id, "hash", nil); err != nil {
				t.Fatal(err)
			}
			u := store.Upgrade{RunID: "run-" + id, WorkflowID: ota.DeviceWorkflowID(id), DeviceID: id, Type: "firmware", Version: "1.1",
				URL: "http://files.local/fw.bin", MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1, State: tt.from, Attempt: 1}
			if err := st.RecordUpgrade(ctx, u, t0, "first"); err != nil {
				t.Fatal(err)
			}
			u.State, u.ErrorDesc = tt.to, "then"
			if err := st.RecordUpgrade(ctx, u, t0.Add(time.Minute), "then"); err != nil {
				t.Fatal(err)
			}
			got, err := st.GetUpgrade(ctx, u.RunID)
			if err != nil {
				t.Fatal(err)
			}
			events, err := st.UpgradeEvents(ctx, u.RunID)
			if err != nil {
				t.Fatal(err)
			}
			changed := tt.want == tt.to
			if got.State != tt.want || (len(events) == 2) != changed || (changed && !got.FinishedAt.Equal(t0.Add(time.Minute))) {
				t.Errorf("record %s finished %v with %d events; want %s", got.State, got.FinishedAt, len(events), tt.want)
			}
		})
	}
}

func TestLastProgress(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	batchFixture(t, st, t0)
	p := func(id string, n, s int) store.Report {
		return store.Report{DeviceID: "d1", ReceivedAt: t0.Add(time.Duration(s) * time.Second),
			Progress: &protocol.Progress{ID: id, Type: "firmware", Version: "1.1", Progress: n}}
	}
	if _, err := st.RecordBatch(ctx, []store.Report{p("c1", 10, 1), p("c1", 20, 2), p("", 30, 3), p("other", 40, 4), p("c1", -1, 5)}, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		attempt  ota.AttemptKey
		want     int // progress; 0 means not found
		wantSecs int
	}{
		{ota.AttemptKey{CommandID: "c1", Type: "firmware", Version: "1.1"}, 30, 3}, // the report without ID counts
		{ota.AttemptKey{CommandID: "other", Type: "firmware", Version: "1.1"}, 40, 4},
		{ota.AttemptKey{CommandID: "c9", Type: "firmware", Version: "2.0"}, 0, 0},
	}
	// LastReport counts the error codes too.
	if e, err := st.LastReport(ctx, "d1", tests[0].attempt); err != nil || e.Progress != -1 || !e.ReceivedAt.Equal(t0.Add(5*time.Second)) {
		t.Errorf("LastReport = %+v, %v; want the -1 at +5s", e, err)
	}
	for _, tt := range tests {
		t.Run(tt.attempt.CommandID, func(t *testing.T) {
			e, err := st.LastProgress(ctx, "d1", tt.attempt)
			if tt.want == 0 {
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("got %+v, %v; want not found", e, err)
				}
				return
			}
			if err != nil || e.Progress != tt.want || !e.ReceivedAt.Equal(t0.Add(time.Duration(tt.wantSecs)*time.Second)) {
				t.Fatalf("got %+v, %v; want %d at +%ds", e, err, tt.want, tt.wantSecs)
			}
		})
	}
}

func TestSnapshotTargets(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	for i := 1; i <= 6; i++ {
		if err := st.AddDevice(ctx, fmt.Sprintf("s-%d", i), "hash", map[string]string{"site": "a"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetDisabled(ctx, "s-2", true); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordStatus(ctx, "s-3", protocol.Status{"firmware_ver": "1.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	f := ota.DeviceFilter{Prefix: "s-", Labels: map[string]string{"site": "a"}, NotReportingKey: "firmware_ver", NotReportingValue: "1.1"}
	n, err := st.SnapshotTargets(ctx, "s", "snap", f)
	if err != nil || n != 4 {
		t.Fatalf("snapshot: %d, %v; want 4 (not the disabled one nor the up-to-date one)", n, err)
	}
	// A device registered later is not in the snapshot.
	if err := st.AddDevice(ctx, "s-7", "hash", map[string]string{"site": "a"}); err != nil {
		t.Fatal(err)
	}
	page, err := st.ListDevices(ctx, ota.DeviceFilter{List: "snap", After: "s-1", Limit: 2})
	if err != nil || len(page) != 2 || page[0].ID != "s-4" || page[1].ID != "s-5" {
		t.Fatalf("page after s-1: %+v, %v; want s-4, s-5", page, err)
	}
	if err := st.DeleteTargetLists(ctx, []string{"snap", "no-such-list"}); err != nil {
		t.Fatal(err)
	}
	if n, err := st.CountDevices(ctx, ota.DeviceFilter{List: "snap"}); err != nil || n != 0 {
		t.Fatalf("after delete: %d devices in the list, %v", n, err)
	}
}

// TestCountByStateOfOneRun: two rollouts of one name, one after the other, each count the
// upgrades they started (recorded with their first run ID); a rollout started before
// upgrades recorded it counts every upgrade of its name.
func TestCountByStateOfOneRun(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	record := func(runID, rolloutRun string, s ota.State) {
		t.Helper()
		u := store.Upgrade{RunID: runID, WorkflowID: "ota-" + runID, DeviceID: runID, Rollout: "fw", RolloutRun: rolloutRun,
			Type: "firmware", Version: "1.1", URL: "http://x/fw.bin", MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1, State: s, Attempt: 1}
		if err := st.RecordUpgrade(ctx, u, t0, ""); err != nil {
			t.Fatal(err)
		}
	}
	record("u1", "first", ota.StateSucceeded)
	record("u2", "first", ota.StateSucceeded)
	record("u3", "first", ota.StateFailed)
	record("u4", "second", ota.StateSkipped)
	record("u5", "second", ota.StateSent)
	record("u6", "", ota.StateSucceeded) // by a rollout of the name before issue 10
	for _, tc := range []struct {
		run  string
		want map[ota.State]int
	}{
		{"first", map[ota.State]int{ota.StateSucceeded: 2, ota.StateFailed: 1}},
		{"second", map[ota.State]int{ota.StateSkipped: 1, ota.StateSent: 1}},
		{"", map[ota.State]int{ota.StateSucceeded: 3, ota.StateFailed: 1, ota.StateSkipped: 1, ota.StateSent: 1}},
	} {
		got, err := st.CountByState(ctx, "fw", tc.run)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("CountByState(fw, %q) = %v, want %v", tc.run, got, tc.want)
		}
	}
	if u, err := st.GetUpgrade(ctx, "u4"); err != nil || u.RolloutRun != "second" {
		t.Errorf("GetUpgrade(u4) = %+v, %v; want rollout run second", u, err)
	}
}
