package workflows

import (
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
)

// Register registers OTAflow's workflows and activities with a worker.
func Register(r worker.Registry, a *activities.Activities) {
	r.RegisterWorkflowWithOptions(DeviceUpgradeWorkflow, workflow.RegisterOptions{Name: ota.DeviceUpgradeWorkflowName})
	r.RegisterWorkflowWithOptions(RolloutWorkflow, workflow.RegisterOptions{Name: ota.RolloutWorkflowName})
	r.RegisterWorkflowWithOptions(ScheduledRolloutWorkflow, workflow.RegisterOptions{Name: ota.ScheduledRolloutWorkflowName})
	r.RegisterWorkflowWithOptions(NotifierWorkflow, workflow.RegisterOptions{Name: ota.NotifierWorkflowName})
	r.RegisterWorkflowWithOptions(RetentionCleanupWorkflow, workflow.RegisterOptions{Name: ota.RetentionCleanupWorkflowName})
	r.RegisterActivity(a)
}

// ChildOptions are the options to start a device upgrade as a child workflow.
func ChildOptions(req ota.UpgradeRequest) workflow.ChildWorkflowOptions {
	return workflow.ChildWorkflowOptions{
		WorkflowID:            ota.DeviceWorkflowID(req.DeviceID),
		TaskQueue:             ota.TaskQueue,
		TypedSearchAttributes: ota.UpgradeSearchAttributes(req),
		Memo:                  ota.UpgradeMemo(req),
		StaticSummary:         ota.UpgradeSummary(req),
	}
}

// NewWorker returns a worker on TaskQueue with OTAflow's workflows and activities registered.
func NewWorker(c client.Client, a *activities.Activities) worker.Worker {
	w := worker.New(c, ota.TaskQueue, worker.Options{
		MaxConcurrentLocalActivityExecutionSize: 200,
		MaxConcurrentWorkflowTaskExecutionSize:  200,
		WorkerStopTimeout:                       10 * time.Second,
	})
	Register(w, a)
	return w
}
