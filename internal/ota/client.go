package ota

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// UpgradeSearchAttributes are the search attributes a device upgrade starts with. The state
// starts as sent: the workflow's first task sends the command, and starting there saves an
// upsert in every upgrade's history.
func UpgradeSearchAttributes(req UpgradeRequest) temporal.SearchAttributes {
	updates := []temporal.SearchAttributeUpdate{
		SearchDevice.ValueSet(req.DeviceID),
		SearchTargetVersion.ValueSet(req.Version),
		SearchType.ValueSet(req.Type),
		SearchState.ValueSet(string(StateSent)),
	}
	if req.Rollout != "" {
		updates = append(updates, SearchRollout.ValueSet(req.Rollout))
	}
	return temporal.NewSearchAttributes(updates...)
}

// UpgradeSummary is the one line the Web UI shows for a device upgrade.
func UpgradeSummary(req UpgradeRequest) string {
	s := fmt.Sprintf("Upgrade %s to %s %s", req.DeviceID, req.Type, req.Version)
	if req.Rollout != "" {
		s += " (rollout " + req.Rollout + ")"
	}
	return s
}

// UpgradeMemo is what the Web UI shows of the package, and of its signature, compatibility
// and soak time when the upgrade has them.
func UpgradeMemo(req UpgradeRequest) map[string]any {
	m := map[string]any{"url": req.URL, "md5": req.MD5, "size": req.Size, "versionKey": req.VersionKey}
	if req.SHA256 != "" {
		m["sha256"] = req.SHA256
	}
	if req.KeyID != "" {
		m["signedBy"] = req.KeyID
	}
	if req.Compat != nil {
		m["compatible"] = req.Compat
	}
	if req.Soak > 0 {
		m["soak"] = req.Soak.String()
	}
	return m
}

// StartOptions are the options to start a device upgrade with a Temporal client.
func StartOptions(req UpgradeRequest) client.StartWorkflowOptions {
	return client.StartWorkflowOptions{
		ID:        DeviceWorkflowID(req.DeviceID),
		TaskQueue: TaskQueue,
		// A device has at most one upgrade running: a second start is refused, not joined.
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes:                    UpgradeSearchAttributes(req),
		Memo:                                     UpgradeMemo(req),
		StaticSummary:                            UpgradeSummary(req),
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

// StartDeviceUpgrade validates req and starts its DeviceUpgradeWorkflow, of the current
// revision (UpgradeRevision). A device with an
// upgrade already running gets an *AlreadyRunningError naming that run.
func StartDeviceUpgrade(ctx context.Context, c client.Client, req UpgradeRequest) (client.WorkflowRun, error) {
	req = req.WithDefaults()
	req.Revision = UpgradeRevision
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

// RolloutSearchAttributes are the search attributes a rollout starts with.
func RolloutSearchAttributes(req RolloutRequest) temporal.SearchAttributes {
	return temporal.NewSearchAttributes(
		SearchRollout.ValueSet(req.Name),
		SearchTargetVersion.ValueSet(req.Upgrade.Version),
		SearchType.ValueSet(req.Upgrade.Type),
		SearchState.ValueSet(string(RolloutPreflight)),
	)
}

// RolloutMemo is what the Web UI shows of a rollout's package and targets.
func RolloutMemo(req RolloutRequest) map[string]any {
	return map[string]any{"url": req.Upgrade.URL, "md5": req.Upgrade.MD5, "size": req.Upgrade.Size, "targets": req.Targets}
}

// RolloutSummary is the one line the Web UI shows for a rollout.
func RolloutSummary(req RolloutRequest) string {
	return fmt.Sprintf("Rollout %s: %s %s", req.Name, req.Upgrade.Type, req.Upgrade.Version)
}

// RolloutDetails is what the Web UI shows under a rollout's summary (Temporal markdown): its
// waves, limits, failure rule and window, and what each device upgrade allows. A rollout
// has them once; a device upgrade has none, so that the start events of many children stay
// small (their inputs show their settings).
func RolloutDetails(req RolloutRequest) string {
	req = req.WithDefaults()
	var waves []string
	for i, w := range req.Waves {
		s := fmt.Sprintf("%d devices", w.Count)
		if w.Percent > 0 {
			s = fmt.Sprintf("%g%%", w.Percent)
		}
		if w.Approve {
			s = "approval, " + s
		}
		if w.SuccessThreshold > 0 {
			s += fmt.Sprintf(" (%g%% must succeed)", w.SuccessThreshold)
		}
		if w.Bake > 0 && i < len(req.Waves)-1 {
			s += ", bake " + w.Bake.String()
		}
		waves = append(waves, s)
	}
	rate := "no start rate limit"
	switch {
	case req.Ramp != nil:
		rate = fmt.Sprintf("starts ramp from %g a minute, times %g every %s", req.Ramp.StartPerMinute, req.Ramp.Factor, req.Ramp.Step)
		if req.MaxPerMinute > 0 {
			rate += fmt.Sprintf(", up to %g", req.MaxPerMinute)
		}
	case req.MaxPerMinute > 0:
		rate = fmt.Sprintf("at most %g starts a minute", req.MaxPerMinute)
	}
	lines := []string{
		"waves: " + strings.Join(waves, "; "),
		fmt.Sprintf("at most %d upgrades at once, %s", req.MaxInFlight, rate),
	}
	if req.FailurePercent > 0 {
		lines = append(lines, fmt.Sprintf("%s when %g%% of the finished upgrades fail (at least %d)", req.FailureAction, req.FailurePercent, req.FailureMinCount))
	}
	if w := req.Window; w != nil {
		lines = append(lines, fmt.Sprintf("starts only in the window %s-%s %s", w.Start, w.End, cmp.Or(w.TimeZone, "UTC")))
	}
	up := req.Upgrade
	each := fmt.Sprintf("each upgrade: start timeout %s, silence %s, install %s, deadline %s, %d attempts, backoff %s",
		up.StartTimeout, up.SilenceTimeout, up.InstallTimeout, up.Deadline, up.MaxAttempts, up.RetryBackoff)
	if up.Soak > 0 {
		each += ", soak " + up.Soak.String()
	}
	lines = append(lines, each)
	if req.Continuous {
		lines = append(lines, "continuous: stays open after its waves until closed")
	}
	return "- " + strings.Join(lines, "\n- ") + "\n"
}

// RolloutStartOptions are the options to start a rollout with a Temporal client.
func RolloutStartOptions(req RolloutRequest) client.StartWorkflowOptions {
	return client.StartWorkflowOptions{
		ID:                                       RolloutWorkflowID(req.Name),
		TaskQueue:                                TaskQueue,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes:                    RolloutSearchAttributes(req),
		Memo:                                     RolloutMemo(req),
		StaticSummary:                            RolloutSummary(req),
		StaticDetails:                            RolloutDetails(req),
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

// ScheduledRolloutWorkflowName is the registered name of the workflow a rollout's schedule
// starts (workflows.ScheduledRolloutWorkflow).
const ScheduledRolloutWorkflowName = "ScheduledRollout"

// ErrTypeRolloutRunning is the error type of a scheduled start that found a rollout of its
// name running, and so started none.
const ErrTypeRolloutRunning = "RolloutAlreadyRunning"

const scheduledRolloutPrefix = "scheduled-rollout-"

// ScheduledRolloutWorkflowID is the workflow ID a rollout's schedule gives the scheduled start
// it starts; Temporal appends the scheduled time, e.g.
// scheduled-rollout-fw-1.1-2026-11-27T01:00:00Z. No rollout's ID starts so.
func ScheduledRolloutWorkflowID(name string) string { return scheduledRolloutPrefix + name }

// ScheduledStart is the result of a scheduled start: the rollout it started.
type ScheduledStart struct {
	Name       string `json:"name"`
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
}

// ScheduleAction is the action of a rollout's Temporal Schedule: start the scheduled-start
// workflow with the request.
func ScheduleAction(req RolloutRequest) *client.ScheduleWorkflowAction {
	return &client.ScheduleWorkflowAction{
		ID:                    ScheduledRolloutWorkflowID(req.Name),
		Workflow:              ScheduledRolloutWorkflowName,
		Args:                  []any{RolloutInput{Request: req}},
		TaskQueue:             TaskQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(SearchRollout.ValueSet(req.Name)),
		Memo:                  RolloutMemo(req),
		StaticSummary:         fmt.Sprintf("Scheduled start of rollout %s: %s %s", req.Name, req.Upgrade.Type, req.Upgrade.Version),
		StaticDetails:         RolloutDetails(req),
	}
}
