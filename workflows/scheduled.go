package workflows

import (
	"errors"
	"fmt"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// ScheduledRolloutWorkflowName is the registered name of ScheduledRolloutWorkflow.
const ScheduledRolloutWorkflowName = "ScheduledRollout"

// ErrTypeRolloutRunning is the error type of a ScheduledRolloutWorkflow that found a rollout
// of its name running, and so started none.
const ErrTypeRolloutRunning = "RolloutAlreadyRunning"

const scheduledRolloutPrefix = "scheduled-rollout-"

// ScheduledRolloutWorkflowID is the workflow ID a rollout's schedule gives the
// ScheduledRolloutWorkflow it starts; Temporal appends the scheduled time, e.g.
// scheduled-rollout-fw-1.1-2026-11-27T01:00:00Z. No rollout's ID starts so.
func ScheduledRolloutWorkflowID(name string) string { return scheduledRolloutPrefix + name }

// ScheduledStart is the result of ScheduledRolloutWorkflow: the rollout it started.
type ScheduledStart struct {
	Name       string `json:"name"`
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
}

// ScheduleAction is the action of a rollout's Temporal Schedule: start a
// ScheduledRolloutWorkflow with the request.
func ScheduleAction(req RolloutRequest) *client.ScheduleWorkflowAction {
	return &client.ScheduleWorkflowAction{
		ID:                    ScheduledRolloutWorkflowID(req.Name),
		Workflow:              ScheduledRolloutWorkflowName,
		Args:                  []any{RolloutInput{Request: req}},
		TaskQueue:             TaskQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(SearchRollout.ValueSet(req.Name)),
		Memo:                  rolloutMemo(req),
		StaticSummary:         fmt.Sprintf("Scheduled start of rollout %s: %s %s", req.Name, req.Upgrade.Type, req.Upgrade.Version),
	}
}

// ScheduledRolloutWorkflow is what a rollout's schedule starts. Temporal gives every workflow a
// schedule starts the schedule's workflow ID with the scheduled time appended, so a schedule
// that started RolloutWorkflow itself would start a second rollout of a name that is already
// running, under another ID, which `rollout pause` and `status` would then not tell apart.
// This workflow starts the RolloutWorkflow as a child under the rollout's own ID,
// RolloutWorkflowID(name), which Temporal refuses while a rollout of that name runs, and ends
// once the rollout has started; the rollout goes on alone (ParentClosePolicy ABANDON). When a
// rollout of the name is running, it starts nothing and fails with ErrTypeRolloutRunning,
// "rollout NAME is already running; this scheduled start was skipped" (not retried).
func ScheduledRolloutWorkflow(ctx workflow.Context, in RolloutInput) (ScheduledStart, error) {
	req := in.Request.WithDefaults()
	if err := req.Validate(); err != nil {
		return ScheduledStart{}, temporal.NewNonRetryableApplicationError("invalid rollout request: "+err.Error(), ErrTypeInvalidRequest, err)
	}
	if in.Carry != nil {
		return ScheduledStart{}, temporal.NewNonRetryableApplicationError("a scheduled rollout starts from the beginning: its input carries no state",
			ErrTypeInvalidRequest, nil)
	}
	id := RolloutWorkflowID(req.Name)
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            id,
		TaskQueue:             TaskQueue,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_ABANDON,
		TypedSearchAttributes: rolloutSearchAttributes(req),
		Memo:                  rolloutMemo(req),
		StaticSummary:         rolloutSummary(req),
	})
	var started workflow.Execution
	err := workflow.ExecuteChildWorkflow(cctx, RolloutWorkflowName, RolloutInput{Request: req}).GetChildWorkflowExecution().Get(ctx, &started)
	var running *temporal.ChildWorkflowExecutionAlreadyStartedError
	if errors.As(err, &running) {
		return ScheduledStart{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("rollout %s is already running (workflow %s); this scheduled start was skipped", req.Name, id),
			ErrTypeRolloutRunning, nil)
	}
	if err != nil {
		return ScheduledStart{}, fmt.Errorf("start rollout %s (workflow %s): %w", req.Name, id, err)
	}
	workflow.GetLogger(ctx).Info("Scheduled rollout started", "rollout", req.Name, "workflowID", started.ID, "runID", started.RunID)
	return ScheduledStart{Name: req.Name, WorkflowID: started.ID, RunID: started.RunID}, nil
}
