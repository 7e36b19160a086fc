package workflows

import (
	"errors"
	"testing"

	"github.com/otaflow/otaflow/internal/ota"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// scheduledRequest is a rollout request as `rollout schedule` makes one.
func scheduledRequest() ota.RolloutRequest {
	return ota.RolloutRequest{Name: "sched-1", Targets: ota.Targets{List: "sched-1/00112233aabbccdd"}, SkipPreflight: true,
		Upgrade: ota.UpgradeRequest{Type: "firmware", Version: "1.1", URL: "http://files.local/fw-1.1.bin",
			MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1024}}
}

func TestScheduledRolloutStartsTheRollout(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(ScheduledRolloutWorkflow, workflow.RegisterOptions{Name: ota.ScheduledRolloutWorkflowName})
	// The rollout, as far as the test needs it: it notes what it was started with.
	type startedChild struct {
		id, rollout, state string
		req                ota.RolloutRequest
	}
	var child startedChild
	env.RegisterWorkflowWithOptions(func(ctx workflow.Context, in ota.RolloutInput) (ota.RolloutProgress, error) {
		sa := workflow.GetTypedSearchAttributes(ctx)
		child.id = workflow.GetInfo(ctx).WorkflowExecution.ID
		child.rollout, _ = sa.GetKeyword(ota.SearchRollout)
		child.state, _ = sa.GetKeyword(ota.SearchState)
		child.req = in.Request
		return ota.RolloutProgress{Name: in.Request.Name, State: ota.RolloutCompleted}, nil
	}, workflow.RegisterOptions{Name: ota.RolloutWorkflowName})

	env.ExecuteWorkflow(ota.ScheduledRolloutWorkflowName, ota.RolloutInput{Request: scheduledRequest()})
	if !env.IsWorkflowCompleted() {
		t.Fatal("the scheduled start did not end")
	}
	var res ota.ScheduledStart
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if res.Name != "sched-1" || res.WorkflowID != ota.RolloutWorkflowID("sched-1") || res.RunID == "" {
		t.Errorf("result = %+v, want the rollout %s", res, ota.RolloutWorkflowID("sched-1"))
	}
	if child.id != ota.RolloutWorkflowID("sched-1") || child.rollout != "sched-1" || child.state != string(ota.RolloutPreflight) {
		t.Errorf("the rollout ran as %+v, want ID %s with its search attributes", child, ota.RolloutWorkflowID("sched-1"))
	}
	if child.req.Targets.List != "sched-1/00112233aabbccdd" || child.req.Upgrade.Version != "1.1" {
		t.Errorf("the rollout got request %+v", child.req)
	}
}

func TestScheduledRolloutRefusesBadInput(t *testing.T) {
	tests := []struct {
		name string
		in   func() ota.RolloutInput
	}{
		{"invalid request", func() ota.RolloutInput {
			req := scheduledRequest()
			req.Targets = ota.Targets{}
			return ota.RolloutInput{Request: req}
		}},
		{"carried state", func() ota.RolloutInput {
			return ota.RolloutInput{Request: scheduledRequest(), Carry: &ota.RolloutCarry{}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s testsuite.WorkflowTestSuite
			env := s.NewTestWorkflowEnvironment()
			env.RegisterWorkflowWithOptions(ScheduledRolloutWorkflow, workflow.RegisterOptions{Name: ota.ScheduledRolloutWorkflowName})
			env.ExecuteWorkflow(ota.ScheduledRolloutWorkflowName, tt.in())
			var appErr *temporal.ApplicationError
			if err := env.GetWorkflowError(); !errors.As(err, &appErr) || appErr.Type() != ota.ErrTypeInvalidRequest || !appErr.NonRetryable() {
				t.Errorf("error = %v, want a non-retryable %s", err, ota.ErrTypeInvalidRequest)
			}
		})
	}
}

func TestScheduleAction(t *testing.T) {
	req := scheduledRequest()
	a := ota.ScheduleAction(req)
	if a.ID != ota.ScheduledRolloutWorkflowID(req.Name) || a.Workflow != ota.ScheduledRolloutWorkflowName || a.TaskQueue != ota.TaskQueue {
		t.Errorf("action = %+v", a)
	}
	if v, _ := a.TypedSearchAttributes.GetKeyword(ota.SearchRollout); v != req.Name {
		t.Errorf("action search attribute %s = %q, want %q", ota.SearchRollout.GetName(), v, req.Name)
	}
	if len(a.Args) != 1 {
		t.Fatalf("action args = %v", a.Args)
	}
	p, err := converter.GetDefaultDataConverter().ToPayload(a.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	var in ota.RolloutInput
	if err := converter.GetDefaultDataConverter().FromPayload(p, &in); err != nil || in.Request.Targets.List != req.Targets.List || in.Request.Name != req.Name || in.Carry != nil {
		t.Errorf("action input = %+v (%v), want the request", in, err)
	}
}

// TestReplayScheduledRollout replays ScheduledRolloutWorkflow over histories recorded on a
// Temporal server (see TestScheduleFiresWhileRolloutRuns in ./starter, which records them
// with OTAFLOW_RECORD_HISTORIES set): one that started its rollout, one that found the
// rollout running and skipped.
func TestReplayScheduledRollout(t *testing.T) {
	for _, file := range []string{"testdata/scheduled-rollout-started.json", "testdata/scheduled-rollout-skipped.json"} {
		t.Run(file, func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(ScheduledRolloutWorkflow, workflow.RegisterOptions{Name: ota.ScheduledRolloutWorkflowName})
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, file); err != nil {
				t.Fatal(err)
			}
		})
	}
}
