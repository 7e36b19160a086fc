package activities_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true}))
}

// Workflows whose ends AwaitWorkflows reports.
func succeeds(workflow.Context) (map[string]string, error) {
	return map[string]string{"state": "succeeded"}, nil
}

func fails(workflow.Context) error {
	return temporal.NewNonRetryableApplicationError("device timed out", ota.ErrTypeUpgradeTimedOut, nil)
}

// reverts fails as a device upgrade whose device went back to its old version does, with
// its final status in the failure's details.
func reverts(workflow.Context) error {
	st := ota.UpgradeStatus{DeviceID: "d", State: ota.StateReverted}
	return temporal.NewNonRetryableApplicationError("device reverted", ota.ErrTypeUpgradeFailed, nil, st)
}

func waits(ctx workflow.Context) error {
	return workflow.Await(ctx, func() bool { return false })
}

// TestAwaitWorkflows runs AwaitWorkflows against executions of the real Temporal server.
func TestAwaitWorkflows(t *testing.T) {
	c := testenv.TemporalClient()
	queue := "await-test"
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(succeeds, workflow.RegisterOptions{Name: "succeeds"})
	w.RegisterWorkflowWithOptions(fails, workflow.RegisterOptions{Name: "fails"})
	w.RegisterWorkflowWithOptions(waits, workflow.RegisterOptions{Name: "waits"})
	w.RegisterWorkflowWithOptions(reverts, workflow.RegisterOptions{Name: "reverts"})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	ctx := context.Background()
	start := func(t *testing.T, name string) ota.Execution {
		t.Helper()
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: t.Name() + "/" + name, TaskQueue: queue}, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.TerminateWorkflow(ctx, run.GetID(), run.GetRunID(), "test over") })
		return ota.Execution{WorkflowID: run.GetID(), RunID: run.GetRunID()}
	}

	tests := []struct {
		name   string
		run    []string // workflows to start, in order
		cancel int      // index of one to cancel, or -1
		want   []ota.Outcome
	}{
		{"completed and failed", []string{"succeeds", "fails"}, -1, []ota.Outcome{
			{Result: &ota.UpgradeStatus{State: ota.StateSucceeded}},
			{Failed: true, ErrorType: ota.ErrTypeUpgradeTimedOut},
		}},
		{"only the ended are returned", []string{"waits", "succeeds"}, -1, []ota.Outcome{
			{Result: &ota.UpgradeStatus{State: ota.StateSucceeded}},
		}},
		{"canceled", []string{"waits"}, 0, []ota.Outcome{{Failed: true, Canceled: true}}},
		{"failed with its status", []string{"reverts"}, -1, []ota.Outcome{
			{Failed: true, ErrorType: ota.ErrTypeUpgradeFailed, Result: &ota.UpgradeStatus{State: ota.StateReverted}},
		}},
		{"unknown execution", []string{""}, -1, []ota.Outcome{{Failed: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var execs []ota.Execution
			for i, name := range tt.run {
				if name == "" {
					execs = append(execs, ota.Execution{WorkflowID: t.Name() + "/never-started"})
					continue
				}
				e := start(t, name)
				if i == tt.cancel {
					if err := c.CancelWorkflow(ctx, e.WorkflowID, e.RunID); err != nil {
						t.Fatal(err)
					}
				}
				execs = append(execs, e)
			}
			var s testsuite.WorkflowTestSuite
			env := s.NewTestActivityEnvironment()
			env.RegisterActivity(&activities.Activities{Temporal: c})
			var a *activities.Activities
			v, err := env.ExecuteActivity(a.AwaitWorkflows, ota.AwaitWorkflowsInput{Executions: execs, Gather: ota.Duration(500 * time.Millisecond)})
			if err != nil {
				t.Fatal(err)
			}
			var got []ota.Outcome
			if err := v.Get(&got); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d outcomes %+v, want %d", len(got), got, len(tt.want))
			}
			for i, o := range got {
				w := tt.want[i]
				if o.Failed != w.Failed || o.ErrorType != w.ErrorType || o.Canceled != w.Canceled ||
					(w.Result != nil && (o.Result == nil || o.Result.State != w.Result.State)) || (o.Failed && o.Error == "") {
					t.Errorf("outcome %d = %+v, want %+v", i, o, w)
				}
				if o.WorkflowID == "" || (len(execs) == len(got) && o.WorkflowID != execs[i].WorkflowID) {
					t.Errorf("outcome %d is for %q", i, o.WorkflowID)
				}
			}
		})
	}

	t.Run("no Temporal client", func(t *testing.T) {
		var s testsuite.WorkflowTestSuite
		env := s.NewTestActivityEnvironment()
		env.RegisterActivity(&activities.Activities{})
		var a *activities.Activities
		_, err := env.ExecuteActivity(a.AwaitWorkflows, ota.AwaitWorkflowsInput{Executions: []ota.Execution{{WorkflowID: "x"}}})
		var appErr *temporal.ApplicationError
		if !errors.As(err, &appErr) || appErr.Type() != ota.ErrTypeNoTemporalClient {
			t.Errorf("error %v, want %s", err, ota.ErrTypeNoTemporalClient)
		}
	})
}
