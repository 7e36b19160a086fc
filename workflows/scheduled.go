package workflows

import (
	"errors"
	"fmt"

	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/ota"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// ScheduledRolloutWorkflow is what a rollout's schedule starts. Temporal gives every workflow a
// schedule starts the schedule's workflow ID with the scheduled time appended, so a schedule
// that started RolloutWorkflow itself would start a second rollout of a name that is already
// running, under another ID, which `rollout pause` and `status` would then not tell apart.
// This workflow starts the RolloutWorkflow as a child under the rollout's own ID,
// ota.RolloutWorkflowID(name), which Temporal refuses while a rollout of that name runs, and ends
// once the rollout has started; the rollout goes on alone (ParentClosePolicy ABANDON). When a
// rollout of the name is running, it starts nothing and fails with ota.ErrTypeRolloutRunning,
// "rollout NAME is already running; this scheduled start was skipped" (not retried).
func ScheduledRolloutWorkflow(ctx workflow.Context, in ota.RolloutInput) (ota.ScheduledStart, error) {
	req := in.Request.WithDefaults()
	if err := req.Validate(); err != nil {
		return ota.ScheduledStart{}, temporal.NewNonRetryableApplicationError("invalid rollout request: "+err.Error(), ota.ErrTypeInvalidRequest, err)
	}
	if in.Carry != nil {
		return ota.ScheduledStart{}, temporal.NewNonRetryableApplicationError("a scheduled rollout starts from the beginning: its input carries no state",
			ota.ErrTypeInvalidRequest, nil)
	}
	id := ota.RolloutWorkflowID(req.Name)
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            id,
		TaskQueue:             ota.TaskQueue,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_ABANDON,
		TypedSearchAttributes: ota.RolloutSearchAttributes(req),
		Memo:                  ota.RolloutMemo(req),
		StaticSummary:         ota.RolloutSummary(req),
		StaticDetails:         ota.RolloutDetails(req),
	})
	var started workflow.Execution
	err := workflow.ExecuteChildWorkflow(cctx, ota.RolloutWorkflowName, ota.RolloutInput{Request: req}).GetChildWorkflowExecution().Get(ctx, &started)
	var running *temporal.ChildWorkflowExecutionAlreadyStartedError
	if errors.As(err, &running) {
		return ota.ScheduledStart{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("rollout %s is already running (workflow %s); this scheduled start was skipped", req.Name, id),
			ota.ErrTypeRolloutRunning, nil)
	}
	if err != nil {
		// In plain words: `rollout schedule list` shows this message (a string, replay-safe).
		return ota.ScheduledStart{}, fmt.Errorf("start rollout %s (workflow %s): %s", req.Name, id, errtext.Plain(err))
	}
	workflow.GetLogger(ctx).Info("Scheduled rollout started", "rollout", req.Name, "workflowID", started.ID, "runID", started.RunID)
	return ota.ScheduledStart{Name: req.Name, WorkflowID: started.ID, RunID: started.RunID}, nil
}
