package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/workflows"
)

func TestRetentionShowAndSet(t *testing.T) {
	ctx := context.Background()
	dbURL := testenv.DatabaseURL(t)
	r := runCLI(t, ctx, servers(dbURL, "retention", "show")...)
	r.check(t, 0)
	for _, want := range []string{"the defaults", "progress_events    30d", "upgrades           forever", "5000 rows"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}

	r = runCLI(t, ctx, servers(dbURL, "retention", "set", "--progress-events", "14d", "--upgrades", "400d", "--batch-size", "2000", "--json")...)
	r.check(t, 0)
	var rep retentionReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("set --json: %v\n%s", err, r.stdout)
	}
	keeps := map[ota.RetentionItem]string{}
	for _, it := range rep.Items {
		keeps[it.Item] = it.Keep
	}
	if keeps[ota.RetainProgressEvents] != "14d" || keeps[ota.RetainUpgrades] != "400d" || keeps[ota.RetainRejectedMessages] != "30d" ||
		rep.BatchSize != 2000 || rep.UpdatedAt.IsZero() {
		t.Errorf("after set: %+v", rep)
	}

	// Bad input changes nothing: exit code 2.
	for _, args := range [][]string{
		{"--progress-events", "2h"}, // less than a day
		{"--rejected-messages", "3 weeks"},
		{"--batch-size", "10"},
		{"--batch-pause", "1m"},
		{}, // nothing to change
	} {
		r = runCLI(t, ctx, servers(dbURL, append([]string{"retention", "set"}, args...)...)...)
		r.check(t, exitUsage)
	}
	r = runCLI(t, ctx, servers(dbURL, "retention", "show", "--json")...)
	r.check(t, 0)
	var after retentionReport
	if err := json.Unmarshal([]byte(r.stdout), &after); err != nil {
		t.Fatal(err)
	}
	if after.BatchSize != 2000 || after.Items[0].Keep != "14d" || !after.UpdatedAt.Equal(rep.UpdatedAt) {
		t.Errorf("refused changes changed the policy: %+v", after)
	}
}

// TestRetentionRunWaits: after `setup` creates the cleanup's schedule, `retention show` shows
// it and `retention run --wait` runs a cleanup through it, which deletes the expired reports
// only, and prints what it did.
func TestRetentionRunWaits(t *testing.T) {
	ctx := context.Background()
	dbURL := testenv.DatabaseURL(t)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c := testenv.TemporalClient()
	w := workflows.NewWorker(c, &activities.Activities{Store: st, Temporal: c})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := st.AddDevice(ctx, "ret-1", "hash", nil); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var reports []store.Report
	for i, age := range []time.Duration{40 * 24 * time.Hour, 31 * 24 * time.Hour, 29 * 24 * time.Hour, time.Hour} {
		reports = append(reports, store.Report{DeviceID: "ret-1", ReceivedAt: now.Add(-age),
			Progress: &protocol.Progress{ID: "c1", Type: "firmware", Version: "1.1", Progress: 10 * (i + 1)}})
	}
	if _, err := st.RecordBatch(ctx, reports, nil); err != nil {
		t.Fatal(err)
	}

	r := runCLI(t, ctx, servers(dbURL, "setup")...)
	r.check(t, 0)
	// The test server outlives the test: the schedule must not fire into later tests.
	t.Cleanup(func() {
		_ = c.ScheduleClient().GetHandle(context.Background(), ota.RetentionCleanupScheduleID).Delete(context.Background())
	})
	r = runCLI(t, ctx, servers(dbURL, "retention", "show")...)
	r.check(t, 0)
	for _, want := range []string{"Cleanup: schedule retention-cleanup, workflow RetentionCleanup every 1h0m0s", "Temporal keeps closed workflows"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}

	r = runCLI(t, ctx, servers(dbURL, "retention", "run", "--wait")...)
	r.check(t, 0)
	t.Logf("retention run --wait:\n%s", r.stdout)
	for _, want := range []string{"Started cleanup retention-cleanup-", "progress_events    deleted 2 rows older than ", "upgrades           kept forever"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("run --wait lacks %q:\n%s", want, r.stdout)
		}
	}
	left, err := st.ProgressEvents(ctx, "ret-1", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 || left[0].Progress != 40 || left[1].Progress != 30 {
		t.Errorf("reports left: %+v, want the two younger than 30 days", left)
	}
	r = runCLI(t, ctx, servers(dbURL, "retention", "show", "--json")...)
	r.check(t, 0)
	var rep retentionReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Schedule == nil || rep.Schedule.LastRun == nil || !strings.HasPrefix(rep.Schedule.LastID, ota.RetentionCleanupWorkflowID+"-") {
		t.Errorf("show after the run: schedule %+v, want the last run", rep.Schedule)
	}
}
