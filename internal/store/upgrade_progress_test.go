package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// TestProgressAdvancesUpgrade checks that stored progress reports move the reporting
// device's upgrade record in flight on (downloading, downloaded, the progress) with an
// upgrade event per change of state, and never touch what the workflow decides: other
// attempts, other devices, pending and finished records, downloaded going back. Each case
// runs with its reports in one batch and with one batch per report, which must agree.
func TestProgressAdvancesUpgrade(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	// row is an upgrade record set up by its workflow at t0 + created seconds.
	type row struct {
		run, device, cmd string
		attempt          int
		state            ota.State
		progress         int
		version          string // default 1.1
		created          int
	}
	type report struct {
		device, cmd, version string // version default 1.1
		progress, at         int
		desc                 string
	}
	type want struct {
		state    ota.State
		progress int
		updated  int // seconds after t0
	}
	type event struct {
		run    string
		state  ota.State
		detail string
		at     int
	}
	sent := func(run, device, cmd string) row {
		return row{run: run, device: device, cmd: cmd, attempt: 1, state: ota.StateSent}
	}
	p := func(cmd string, progress, s int) report {
		return report{device: "d1", cmd: cmd, progress: progress, at: s}
	}
	tests := []struct {
		name    string
		rows    []row
		reports []report
		want    map[string]want // by run; rows not named must stay as set up
		events  []event         // recorded by the reports, in order
	}{
		{"sent, then 1, 50 and 100", []row{sent("r1", "d1", "c1")},
			[]report{p("c1", 1, 1), p("c1", 50, 2), p("c1", 100, 3)},
			map[string]want{"r1": {ota.StateDownloaded, 100, 3}},
			[]event{{"r1", ota.StateDownloading, "progress 1 reported by the device", 1}, {"r1", ota.StateDownloaded, "progress 100 reported by the device", 3}}},
		{"the description goes with the event", []row{sent("r1", "d1", "c1")},
			[]report{{device: "d1", cmd: "c1", progress: 5, at: 1, desc: "downloading"}},
			map[string]want{"r1": {ota.StateDownloading, 5, 1}},
			[]event{{"r1", ota.StateDownloading, "progress 5 reported by the device: downloading", 1}}},
		{"100 straight from sent", []row{sent("r1", "d1", "c1")},
			[]report{p("c1", 100, 4)},
			map[string]want{"r1": {ota.StateDownloaded, 100, 4}},
			[]event{{"r1", ota.StateDownloaded, "progress 100 reported by the device", 4}}},
		{"progress never goes down", []row{{run: "r1", device: "d1", cmd: "c1", attempt: 1, state: ota.StateDownloading, progress: 60}},
			[]report{p("c1", 50, 1), p("c1", 70, 2), p("c1", 65, 3)},
			map[string]want{"r1": {ota.StateDownloading, 70, 2}}, nil},
		{"100 then an older percentage", []row{sent("r1", "d1", "c1")},
			[]report{p("c1", 100, 1), p("c1", 50, 2)},
			map[string]want{"r1": {ota.StateDownloaded, 100, 1}},
			[]event{{"r1", ota.StateDownloaded, "progress 100 reported by the device", 1}}},
		{"downloaded never goes back to downloading; 100 again changes nothing",
			[]row{{run: "r1", device: "d1", cmd: "c1", attempt: 1, state: ota.StateDownloaded, progress: 100}},
			[]report{p("c1", 60, 1), p("c1", 100, 2)}, nil, nil},
		{"error codes change nothing", []row{{run: "r1", device: "d1", cmd: "c1", attempt: 1, state: ota.StateDownloading, progress: 30}},
			[]report{p("c1", protocol.CodeDownloadFailed, 1), p("c1", protocol.CodeOther, 2)}, nil, nil},
		{"stale attempt", []row{{run: "r1", device: "d1", cmd: "c1-2", attempt: 2, state: ota.StateSent}},
			[]report{p("c1", 50, 1), p("c1", 100, 2)}, nil, nil},
		{"pending between attempts", []row{{run: "r1", device: "d1", cmd: "c1", attempt: 1, state: ota.StatePending, progress: 40}},
			[]report{p("c1", 45, 1), p("", 100, 2)}, nil, nil},
		{"finished", []row{{run: "r1", device: "d1", cmd: "c1", attempt: 1, state: ota.StateTimedOut, progress: 40}},
			[]report{p("c1", 45, 1), p("c1", 100, 2)}, nil, nil},
		{"without ID: same type and version", []row{sent("r1", "d1", "c1")},
			[]report{p("", 30, 1), {device: "d1", version: "2.0", progress: 90, at: 2}},
			map[string]want{"r1": {ota.StateDownloading, 30, 1}},
			[]event{{"r1", ota.StateDownloading, "progress 30 reported by the device", 1}}},
		{"another device's record", []row{sent("r1", "d1", "c1"), sent("r2", "d2", "c2")},
			[]report{p("c2", 50, 1), p("", 60, 2)},
			map[string]want{"r1": {ota.StateDownloading, 60, 2}},
			[]event{{"r1", ota.StateDownloading, "progress 60 reported by the device", 2}}},
		{"a record left open by an older run", []row{
			{run: "r0", device: "d1", cmd: "c0", attempt: 1, state: ota.StateSent, created: -60},
			sent("r1", "d1", "c1")},
			[]report{p("c1", 10, 1), p("", 20, 2), p("c0", 30, 3)},
			map[string]want{"r1": {ota.StateDownloading, 20, 2}, "r0": {ota.StateDownloading, 30, 3}},
			[]event{{"r1", ota.StateDownloading, "progress 10 reported by the device", 1}, {"r0", ota.StateDownloading, "progress 30 reported by the device", 3}}},
	}
	for _, tt := range tests {
		for _, oneByOne := range []bool{false, true} {
			name := tt.name
			if oneByOne {
				name += "/one batch per report"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				st := openStore(t)
				for _, d := range []string{"d1", "d2"} {
					if err := st.AddDevice(ctx, d, "hash", nil); err != nil {
						t.Fatal(err)
					}
				}
				before := map[string]int{} // events per run after the set-up
				for _, r := range tt.rows {
					version := r.version
					if version == "" {
						version = "1.1"
					}
					u := store.Upgrade{RunID: r.run, WorkflowID: ota.DeviceWorkflowID(r.device), DeviceID: r.device, Type: "firmware",
						Version: version, URL: "http://x/fw.bin", MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1,
						State: r.state, Attempt: r.attempt, CommandID: r.cmd, Progress: r.progress}
					if err := st.RecordUpgrade(ctx, u, at(r.created), "set up"); err != nil {
						t.Fatal(err)
					}
					before[r.run] = 1
				}
				var reports []store.Report
				for _, r := range tt.reports {
					version := r.version
					if version == "" {
						version = "1.1"
					}
					reports = append(reports, store.Report{DeviceID: r.device, ReceivedAt: at(r.at),
						Progress: &protocol.Progress{ID: r.cmd, Type: "firmware", Version: version, Progress: r.progress, Desc: r.desc}})
				}
				batches := [][]store.Report{reports}
				if oneByOne {
					batches = nil
					for _, r := range reports {
						batches = append(batches, []store.Report{r})
					}
				}
				for _, b := range batches {
					if _, err := st.RecordBatch(ctx, b, nil); err != nil {
						t.Fatalf("RecordBatch: %v", err)
					}
				}

				var got []event
				for _, r := range tt.rows {
					u, err := st.GetUpgrade(ctx, r.run)
					if err != nil {
						t.Fatal(err)
					}
					w, ok := tt.want[r.run]
					if !ok {
						w = want{r.state, r.progress, r.created}
					}
					if u.State != w.state || u.Progress != w.progress || !u.UpdatedAt.Equal(at(w.updated)) || u.Attempt != r.attempt || u.CommandID != r.cmd {
						t.Errorf("%s: %s %d%% updated %s, attempt %d, command %s; want %s %d%% updated %s, attempt %d, command %s", r.run,
							u.State, u.Progress, u.UpdatedAt, u.Attempt, u.CommandID, w.state, w.progress, at(w.updated), r.attempt, r.cmd)
					}
					evs, err := st.UpgradeEvents(ctx, r.run)
					if err != nil {
						t.Fatal(err)
					}
					for _, e := range evs[before[r.run]:] {
						if e.Attempt != r.attempt || e.ErrorCode != 0 {
							t.Errorf("%s: event %+v, want attempt %d and no error code", r.run, e, r.attempt)
						}
						got = append(got, event{r.run, e.State, e.Detail, int(e.At.Sub(t0) / time.Second)})
					}
				}
				slices.SortStableFunc(got, func(a, b event) int { return a.at - b.at })
				if fmt.Sprint(got) != fmt.Sprint(tt.events) {
					t.Errorf("events recorded:\n%v\nwant\n%v", got, tt.events)
				}
			})
		}
	}
}

// TestWorkflowAfterBridge checks the workflow's own records after the bridge moved the
// record on: the same state again records nothing twice, an attempt ended (pending) and a
// new attempt start over, and a stale report of the old attempt then changes nothing.
func TestWorkflowAfterBridge(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	batchFixture(t, st, t0)
	report := func(id string, progress, s int) {
		t.Helper()
		if _, err := st.RecordBatch(ctx, []store.Report{{DeviceID: "d1", ReceivedAt: t0.Add(time.Duration(s) * time.Second),
			Progress: &protocol.Progress{ID: id, Type: "firmware", Version: "1.1", Progress: progress}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	get := func() (store.Upgrade, []store.UpgradeEvent) {
		t.Helper()
		u, err := st.GetUpgrade(ctx, "r1")
		if err != nil {
			t.Fatal(err)
		}
		ev, err := st.UpgradeEvents(ctx, "r1")
		if err != nil {
			t.Fatal(err)
		}
		return u, ev
	}
	report("c1", 100, 1)
	u, ev := get()
	if u.State != ota.StateDownloaded || len(ev) != 2 {
		t.Fatalf("after 100: %s with %d events, want downloaded with 2", u.State, len(ev))
	}
	// A workflow still recording downloaded itself (older code) records it once only.
	if err := st.RecordUpgrade(ctx, u, t0.Add(2*time.Second), "downloaded"); err != nil {
		t.Fatal(err)
	}
	if _, ev := get(); len(ev) != 2 {
		t.Errorf("downloaded recorded again by the workflow: %d events, want 2", len(ev))
	}
	// The install did not take: the workflow ends the attempt and sends a new command.
	u.State = ota.StatePending
	if err := st.RecordUpgrade(ctx, u, t0.Add(3*time.Second), "attempt ended"); err != nil {
		t.Fatal(err)
	}
	report("c1", 100, 4) // redelivered: the attempt has ended
	if got, _ := get(); got.State != ota.StatePending {
		t.Errorf("a report of the ended attempt moved the record to %s", got.State)
	}
	u.State, u.Attempt, u.CommandID, u.Progress = ota.StateSent, 2, "c1-2", 0
	if err := st.RecordUpgrade(ctx, u, t0.Add(5*time.Second), "sent"); err != nil {
		t.Fatal(err)
	}
	report("c1", 90, 6)
	if got, _ := get(); got.State != ota.StateSent || got.Progress != 0 || got.Attempt != 2 {
		t.Errorf("a report of attempt 1 moved attempt 2's record: %s %d%% attempt %d", got.State, got.Progress, got.Attempt)
	}
	report("c1-2", 20, 7)
	got, ev := get()
	if got.State != ota.StateDownloading || got.Progress != 20 || got.Attempt != 2 {
		t.Errorf("attempt 2's record after its 20%%: %s %d%% attempt %d", got.State, got.Progress, got.Attempt)
	}
	if last := ev[len(ev)-1]; last.State != ota.StateDownloading || last.Attempt != 2 {
		t.Errorf("last event %+v, want downloading of attempt 2", last)
	}
	// The workflow, which heard of no progress (success straight from sent), records the
	// outcome: the attempt's progress stays what the bridge recorded.
	u.State = ota.StateSucceeded
	if err := st.RecordUpgrade(ctx, u, t0.Add(8*time.Second), "device reports firmware_ver=1.1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := get(); got.State != ota.StateSucceeded || got.Progress != 20 {
		t.Errorf("after the outcome: %s %d%%, want succeeded with the recorded 20%%", got.State, got.Progress)
	}
}
