package workflows

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/protocol"
)

// Register registers OTAflow's workflows and activities with a worker.
func Register(r worker.Registry, a *activities.Activities) {
	r.RegisterWorkflowWithOptions(DeviceUpgradeWorkflow, workflow.RegisterOptions{Name: DeviceUpgradeWorkflowName})
	r.RegisterWorkflowWithOptions(RolloutWorkflow, workflow.RegisterOptions{Name: RolloutWorkflowName})
	r.RegisterWorkflowWithOptions(ScheduledRolloutWorkflow, workflow.RegisterOptions{Name: ScheduledRolloutWorkflowName})
	r.RegisterActivity(a)
}

// upgradeSearchAttributes are the search attributes a device upgrade starts with. The state
// starts as sent: the workflow's first task sends the command, and starting there saves an
// upsert in every upgrade's history.
func upgradeSearchAttributes(req UpgradeRequest) temporal.SearchAttributes {
	updates := []temporal.SearchAttributeUpdate{
		SearchDevice.ValueSet(req.DeviceID),
		SearchTargetVersion.ValueSet(req.Version),
		SearchType.ValueSet(req.Type),
		SearchState.ValueSet(string(protocol.StateSent)),
	}
	if req.Rollout != "" {
		updates = append(updates, SearchRollout.ValueSet(req.Rollout))
	}
	return temporal.NewSearchAttributes(updates...)
}

// upgradeSummary is the one line the Web UI shows for a device upgrade.
func upgradeSummary(req UpgradeRequest) string {
	s := fmt.Sprintf("Upgrade %s to %s %s", req.DeviceID, req.Type, req.Version)
	if req.Rollout != "" {
		s += " (rollout " + req.Rollout + ")"
	}
	return s
}

// upgradeMemo is what the Web UI shows of the package.
func upgradeMemo(req UpgradeRequest) map[string]any {
	return map[string]any{"url": req.URL, "md5": req.MD5, "size": req.Size, "versionKey": req.VersionKey}
}

// StartOptions are the options to start a device upgrade with a Temporal client.
func StartOptions(req UpgradeRequest) client.StartWorkflowOptions {
	return client.StartWorkflowOptions{
		ID:        DeviceWorkflowID(req.DeviceID),
		TaskQueue: TaskQueue,
		// A device has at most one upgrade running: a second start is refused, not joined.
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes:                    upgradeSearchAttributes(req),
		Memo:                                     upgradeMemo(req),
		StaticSummary:                            upgradeSummary(req),
	}
}

// ChildOptions are the options to start a device upgrade as a child workflow.
func ChildOptions(req UpgradeRequest) workflow.ChildWorkflowOptions {
	return workflow.ChildWorkflowOptions{
		WorkflowID:            DeviceWorkflowID(req.DeviceID),
		TaskQueue:             TaskQueue,
		TypedSearchAttributes: upgradeSearchAttributes(req),
		Memo:                  upgradeMemo(req),
		StaticSummary:         upgradeSummary(req),
	}
}

// AlreadyRunningError is returned when a device already has an upgrade running.
type AlreadyRunningError struct {
	DeviceID   string
	WorkflowID string
	RunID      string
}

func (e *AlreadyRunningError) Error() string {
	return fmt.Sprintf("device %s already has an upgrade running (workflow %s, run %s): wait for it, or cancel it first",
		e.DeviceID, e.WorkflowID, e.RunID)
}

// StartDeviceUpgrade validates req and starts its DeviceUpgradeWorkflow. A device with an
// upgrade already running gets an *AlreadyRunningError naming that run.
func StartDeviceUpgrade(ctx context.Context, c client.Client, req UpgradeRequest) (client.WorkflowRun, error) {
	req = req.WithDefaults()
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("invalid upgrade request: %w", err)
	}
	run, err := c.ExecuteWorkflow(ctx, StartOptions(req), DeviceUpgradeWorkflowName, req)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return nil, &AlreadyRunningError{DeviceID: req.DeviceID, WorkflowID: DeviceWorkflowID(req.DeviceID), RunID: started.RunId}
	}
	if err != nil {
		return nil, fmt.Errorf("start upgrade of %s: %w", req.DeviceID, err)
	}
	return run, nil
}

// UpgradeResult waits for a device upgrade run to end and returns its final status: for a
// failed, timed-out or canceled upgrade too, with the workflow's error.
func UpgradeResult(ctx context.Context, run client.WorkflowRun) (UpgradeStatus, error) {
	var st UpgradeStatus
	err := run.Get(ctx, &st)
	if err == nil {
		return st, nil
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.HasDetails() {
		if derr := appErr.Details(&st); derr == nil {
			return st, err
		}
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) && canceled.HasDetails() {
		if derr := canceled.Details(&st); derr == nil {
			return st, err
		}
	}
	return st, err
}

// NewWorker returns a worker on TaskQueue with OTAflow's workflows and activities registered.
func NewWorker(c client.Client, a *activities.Activities) worker.Worker {
	w := worker.New(c, TaskQueue, worker.Options{
		MaxConcurrentLocalActivityExecutionSize: 200,
		MaxConcurrentWorkflowTaskExecutionSize:  200,
		WorkerStopTimeout:                       10 * time.Second,
	})
	Register(w, a)
	return w
}

// rolloutSearchAttributes are the search attributes a rollout starts with.
func rolloutSearchAttributes(req RolloutRequest) temporal.SearchAttributes {
	return temporal.NewSearchAttributes(
		SearchRollout.ValueSet(req.Name),
		SearchTargetVersion.ValueSet(req.Upgrade.Version),
		SearchType.ValueSet(req.Upgrade.Type),
		SearchState.ValueSet(string(RolloutPreflight)),
	)
}

// rolloutMemo is what the Web UI shows of a rollout's package and targets.
func rolloutMemo(req RolloutRequest) map[string]any {
	return map[string]any{"url": req.Upgrade.URL, "md5": req.Upgrade.MD5, "size": req.Upgrade.Size, "targets": req.Targets}
}

// rolloutSummary is the one line the Web UI shows for a rollout.
func rolloutSummary(req RolloutRequest) string {
	return fmt.Sprintf("Rollout %s: %s %s", req.Name, req.Upgrade.Type, req.Upgrade.Version)
}

// RolloutStartOptions are the options to start a rollout with a Temporal client.
func RolloutStartOptions(req RolloutRequest) client.StartWorkflowOptions {
	return client.StartWorkflowOptions{
		ID:                                       RolloutWorkflowID(req.Name),
		TaskQueue:                                TaskQueue,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes:                    rolloutSearchAttributes(req),
		Memo:                                     rolloutMemo(req),
		StaticSummary:                            rolloutSummary(req),
	}
}

// RolloutRunningError is returned when a rollout of the name is already running.
type RolloutRunningError struct {
	Name       string
	WorkflowID string
	RunID      string
}

func (e *RolloutRunningError) Error() string {
	return fmt.Sprintf("rollout %s is already running (workflow %s, run %s)", e.Name, e.WorkflowID, e.RunID)
}

// StartRollout validates req and starts its RolloutWorkflow. A rollout of the same name that
// is still running gives a *RolloutRunningError naming it: of two starts of one name, exactly
// one starts a rollout.
func StartRollout(ctx context.Context, c client.Client, req RolloutRequest) (client.WorkflowRun, error) {
	req = req.WithDefaults()
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("invalid rollout request: %w", err)
	}
	run, err := c.ExecuteWorkflow(ctx, RolloutStartOptions(req), RolloutWorkflowName, RolloutInput{Request: req})
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return nil, &RolloutRunningError{Name: req.Name, WorkflowID: RolloutWorkflowID(req.Name), RunID: started.RunId}
	}
	if err != nil {
		return nil, fmt.Errorf("start rollout %s: %w", req.Name, err)
	}
	return run, nil
}
