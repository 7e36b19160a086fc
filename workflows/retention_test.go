package workflows

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
)

// fakeTables stands for the store behind DeleteExpired: each item's rows as their times in
// (time, id) order, id being the index. A call deletes at most two batches, as if its budget
// ran out, so that the workflow must call again from the cursor.
type fakeTables struct {
	mu      sync.Mutex
	rows    map[ota.RetentionItem][]time.Time
	deleted map[ota.RetentionItem]map[int64]bool
	calls   []ota.DeleteExpiredInput
	fail    map[ota.RetentionItem]bool
}

func (f *fakeTables) deleteExpired(_ context.Context, in ota.DeleteExpiredInput) (ota.DeleteExpiredResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, in)
	if f.fail[in.Item] {
		return ota.DeleteExpiredResult{}, temporal.NewNonRetryableApplicationError("disk full", "Injected", nil)
	}
	res := ota.DeleteExpiredResult{Cursor: in.Cursor}
	rows := f.rows[in.Item]
	for range 2 {
		n := 0
		id := res.Cursor.ID
		for ; id < int64(len(rows)) && n < in.BatchSize && rows[id].Before(in.Before); id++ {
			f.deleted[in.Item][id] = true
			n++
		}
		if n > 0 {
			res.Cursor = ota.CleanupCursor{At: rows[id-1], ID: id}
			res.Deleted += int64(n)
			res.Batches++
			res.Largest = max(res.Largest, n)
		}
		if n < in.BatchSize {
			res.Done = true
			return res, nil
		}
	}
	return res, nil
}

func newCleanupEnv(t *testing.T, policy ota.RetentionPolicy, f *fakeTables) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(RetentionCleanupWorkflow, workflow.RegisterOptions{Name: ota.RetentionCleanupWorkflowName})
	var a *activities.Activities
	env.RegisterActivity(a)
	env.OnActivity(a.ReadRetentionPolicy, mock.Anything).Return(policy, nil)
	env.OnActivity(a.DeleteExpired, mock.Anything, mock.Anything).Return(f.deleteExpired)
	return env
}

func TestRetentionCleanup(t *testing.T) {
	start := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	policy := ota.DefaultRetentionPolicy()
	policy.BatchSize = 10
	// Rows a day apart, the oldest 100 days before the start.
	series := func(n int) []time.Time {
		var ts []time.Time
		for i := range n {
			ts = append(ts, start.Add(-100*day+time.Duration(i)*day))
		}
		return ts
	}
	tests := []struct {
		name string
		// fail makes an item's deletes fail.
		fail        ota.RetentionItem
		wantDeleted map[ota.RetentionItem]int64
		wantCalls   map[ota.RetentionItem]int
	}{
		// progress_events: 70 of 100 rows are older than 30 days: batches of 10, two a call,
		// so four calls (the last finds the seventh batch and nothing after it).
		{"every item", "", map[ota.RetentionItem]int64{ota.RetainProgressEvents: 70, ota.RetainRejectedMessages: 70,
			ota.RetainShedReports: 10, ota.RetainTargetLists: 70}, map[ota.RetentionItem]int{ota.RetainProgressEvents: 4,
			ota.RetainRejectedMessages: 4, ota.RetainShedReports: 1, ota.RetainTargetLists: 4}},
		{"an item fails", ota.RetainRejectedMessages, map[ota.RetentionItem]int64{ota.RetainProgressEvents: 70,
			ota.RetainShedReports: 10, ota.RetainTargetLists: 70}, map[ota.RetentionItem]int{ota.RetainProgressEvents: 4,
			ota.RetainRejectedMessages: 1, ota.RetainShedReports: 1, ota.RetainTargetLists: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTables{rows: map[ota.RetentionItem][]time.Time{}, deleted: map[ota.RetentionItem]map[int64]bool{},
				fail: map[ota.RetentionItem]bool{tt.fail: true}}
			for _, item := range ota.RetentionItems {
				f.rows[item] = series(100)
				f.deleted[item] = map[int64]bool{}
			}
			env := newCleanupEnv(t, policy, f)
			env.SetStartTime(start)
			env.ExecuteWorkflow(ota.RetentionCleanupWorkflowName, ota.CleanupInput{})
			if !env.IsWorkflowCompleted() {
				t.Fatal("the cleanup did not end")
			}
			var r ota.CleanupReport
			err := env.GetWorkflowError()
			if tt.fail != "" {
				var appErr *temporal.ApplicationError
				if !errors.As(err, &appErr) || appErr.Type() != ErrTypeCleanupIncomplete || appErr.Details(&r) != nil {
					t.Fatalf("error %v, want %s with the report", err, ErrTypeCleanupIncomplete)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if err := env.GetWorkflowResult(&r); err != nil {
					t.Fatal(err)
				}
			}
			if !r.StartedAt.Equal(start) || r.Policy != policy || len(r.Items) != len(ota.RetentionItems) {
				t.Fatalf("report %+v", r)
			}
			for i, res := range r.Items {
				item := ota.RetentionItems[i]
				keep := policy.Keep(item)
				switch {
				case res.Item != item:
					t.Errorf("item %d is %s, want %s", i, res.Item, item)
				case keep == 0:
					if !res.Kept || res.Calls != 0 || len(f.deleted[item]) != 0 {
						t.Errorf("%s is kept forever, but the cleanup touched it: %+v", item, res)
					}
				case !res.Before.Equal(start.Add(-keep)):
					t.Errorf("%s: cutoff %s, want %s", item, res.Before, start.Add(-keep))
				case res.Deleted != tt.wantDeleted[item] || int64(len(f.deleted[item])) != tt.wantDeleted[item] || res.Calls != tt.wantCalls[item]:
					t.Errorf("%s: %+v (%d rows gone), want %d deleted in %d calls", item, res, len(f.deleted[item]), tt.wantDeleted[item], tt.wantCalls[item])
				case (res.Error != "") != (item == tt.fail):
					t.Errorf("%s: error %q", item, res.Error)
				case res.Largest > policy.BatchSize:
					t.Errorf("%s: a batch of %d, more than %d", item, res.Largest, policy.BatchSize)
				}
				for id := range f.deleted[item] {
					if !f.rows[item][id].Before(start.Add(-keep)) {
						t.Errorf("%s: row %d of %s deleted, not older than %s", item, id, f.rows[item][id], keep)
					}
				}
			}
			// Every call after an item's first starts where the previous one stopped.
			var last ota.DeleteExpiredInput
			for _, in := range f.calls {
				if in.Item == last.Item && in.Cursor == (ota.CleanupCursor{}) {
					t.Errorf("a later call of %s started from the beginning", in.Item)
				}
				if in.Item != last.Item && in.Cursor != (ota.CleanupCursor{}) {
					t.Errorf("the first call of %s started at %+v", in.Item, in.Cursor)
				}
				if in.BatchSize != policy.BatchSize || in.BatchPause != policy.BatchPause || in.Budget != cleanupCallBudget {
					t.Errorf("call %+v does not follow the policy", in)
				}
				last = in
			}
		})
	}
}

// TestRetentionCleanupCarriesOn: a run continued as new starts at the item and cursor it was
// given, with the report so far, and reads no policy again.
func TestRetentionCleanupCarriesOn(t *testing.T) {
	start := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	policy := ota.DefaultRetentionPolicy()
	policy.BatchSize = 10
	f := &fakeTables{rows: map[ota.RetentionItem][]time.Time{}, deleted: map[ota.RetentionItem]map[int64]bool{}}
	for _, item := range ota.RetentionItems {
		f.deleted[item] = map[int64]bool{}
		for i := range 40 {
			f.rows[item] = append(f.rows[item], start.Add(-100*24*time.Hour+time.Duration(i)*time.Hour))
		}
	}
	carry := ota.CleanupReport{StartedAt: start, Policy: policy, Next: 1,
		Items:  []ota.CleanupResult{{Item: ota.RetainProgressEvents, Deleted: 5}, {Item: ota.RetainRejectedMessages, Deleted: 20, Batches: 2, Calls: 1}},
		Cursor: ota.CleanupCursor{At: f.rows[ota.RetainRejectedMessages][19], ID: 20}}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(RetentionCleanupWorkflow, workflow.RegisterOptions{Name: ota.RetentionCleanupWorkflowName})
	var a *activities.Activities
	env.RegisterActivity(a)
	env.OnActivity(a.DeleteExpired, mock.Anything, mock.Anything).Return(f.deleteExpired)
	env.SetStartTime(start.Add(2 * time.Hour))
	env.ExecuteWorkflow(ota.RetentionCleanupWorkflowName, ota.CleanupInput{Carry: &carry})
	var r ota.CleanupReport
	if err := env.GetWorkflowResult(&r); err != nil {
		t.Fatal(err)
	}
	if f.calls[0].Item != ota.RetainRejectedMessages || f.calls[0].Cursor != carry.Cursor {
		t.Errorf("first call %+v, want rejected messages from %+v", f.calls[0], carry.Cursor)
	}
	if got := r.Items[1]; got.Deleted != 40 || got.Calls != 3 || len(f.deleted[ota.RetainRejectedMessages]) != 20 {
		t.Errorf("rejected messages: %+v (%d rows deleted by this run), want 40 deleted in all, 20 by this run",
			got, len(f.deleted[ota.RetainRejectedMessages]))
	}
	if got := r.Items[0]; got.Deleted != 5 || len(f.deleted[ota.RetainProgressEvents]) != 0 {
		t.Errorf("progress events, done by the earlier run: %+v", got)
	}
	if !r.Items[1].Before.Equal(start.Add(-policy.RejectedMessages)) {
		t.Errorf("cutoff %s, want it counted from the first run's start", r.Items[1].Before)
	}
}

func TestRetentionCleanupWithoutPolicy(t *testing.T) {
	f := &fakeTables{}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(RetentionCleanupWorkflow, workflow.RegisterOptions{Name: ota.RetentionCleanupWorkflowName})
	var a *activities.Activities
	env.RegisterActivity(a)
	env.OnActivity(a.ReadRetentionPolicy, mock.Anything).Return(ota.RetentionPolicy{},
		temporal.NewNonRetryableApplicationError("no policy", ota.ErrTypeNoCleanupStore, nil))
	env.OnActivity(a.DeleteExpired, mock.Anything, mock.Anything).Return(f.deleteExpired)
	env.ExecuteWorkflow(ota.RetentionCleanupWorkflowName, ota.CleanupInput{})
	if err := env.GetWorkflowError(); err == nil || len(f.calls) != 0 {
		t.Errorf("error %v after %d deletes, want a failure and no delete", err, len(f.calls))
	}
}
