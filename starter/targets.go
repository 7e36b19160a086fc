package main

import (
	"context"
	"fmt"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/urfave/cli/v2"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
)

// Explicit target lists (--devices, --devices-file) are stored in PostgreSQL, each under a key
// of its own, "<rollout name>/<random>", which the rollout request names (Targets.List). Two
// starts of one name therefore never share a list: the one Temporal refuses (a rollout of the
// name already runs) deletes its own list and exits 3, and the rollout that runs upgrades
// exactly the devices it was given. Lists nothing uses any more are pruned by the next start,
// schedule or schedule delete of the name (pruneTargetLists).

// targetListGrace is how old a list must be before pruneTargetLists may delete it: a younger
// one may belong to a start or a schedule of the name under way in another process, which has
// stored its list but not yet started its rollout or created its schedule.
var targetListGrace = time.Hour

// storeTargets stores the explicit device list of a rollout under a new key and warns about
// the IDs that are not registered; it fails when none is.
func (e *appEnv) storeTargets(cCtx *cli.Context, name string, ids []string) (key string, unknown []string, err error) {
	st, err := e.openStore(cCtx)
	if err != nil {
		return "", nil, err
	}
	key, unknown, err = st.CreateTargetList(cCtx.Context, name, ids)
	if err != nil {
		return "", nil, err
	}
	if key == "" {
		return "", nil, cli.Exit(fmt.Sprintf("none of the %d listed devices is registered (%s): nothing to roll out",
			len(ids), abbreviate(unknown, 10)), exitFailure)
	}
	if len(unknown) > 0 {
		fmt.Fprintf(e.errOut, "starter: warning: %d of the %d listed devices are not registered and are left out: %s\n",
			len(unknown), len(ids), abbreviate(unknown, 20))
	}
	return key, unknown, nil
}

// dropTargets deletes the list of a start that did not happen. Only a definite refusal calls
// it: after an error that leaves open whether the rollout started, the list stays (and is
// pruned once nothing uses it).
func (e *appEnv) dropTargets(cCtx *cli.Context, key string) {
	st, err := e.openStore(cCtx)
	if err == nil {
		// The command may be ending because its context ended: the clean-up gets its own.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(cCtx.Context), 10*time.Second)
		defer cancel()
		err = st.DeleteTargetLists(ctx, []string{key})
	}
	if err != nil {
		fmt.Fprintf(e.errOut, "starter: warning: the device list %s stays stored (it is pruned later): %v\n", key, err)
	}
}

// pruneTargetLists deletes the stored target lists of a rollout name that nothing can use any
// more, keeping those in keep, the list of the name's schedule, and every list stored in the
// last targetListGrace. While a rollout of the name runs other than ownRunID (the run this
// command started, if any), it deletes nothing: which list that rollout reads is not known
// here. It is best effort: a failure is a warning, and the next start tries again.
func (e *appEnv) pruneTargetLists(cCtx *cli.Context, c client.Client, name, ownRunID string, keep ...string) {
	if cCtx.String(flagDatabaseURL) == "" {
		return // no lists without a database
	}
	ctx := cCtx.Context
	err := func() error {
		busy, err := otherRolloutRunning(ctx, c, name, ownRunID)
		if err != nil || busy {
			return err
		}
		scheduled, err := scheduleTargetList(ctx, c, name)
		if err != nil {
			return err
		}
		if scheduled != "" {
			keep = append(keep, scheduled)
		}
		st, err := e.openStore(cCtx)
		if err != nil {
			return err
		}
		_, err = st.PruneTargetLists(ctx, name, keep, targetListGrace)
		return err
	}()
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(e.errOut, "starter: warning: the unused device lists of rollout %s stay stored for now: %v\n", name, err)
	}
}

// otherRolloutRunning reports whether a rollout of the name runs other than the run ownRunID:
// the rollout's own workflow (read from Temporal directly), or one started under another ID
// by a schedule of an earlier version (from the visibility store, which lags by a moment: a
// rollout that has just ended may still count as running, which only delays a prune).
func otherRolloutRunning(ctx context.Context, c client.Client, name, ownRunID string) (bool, error) {
	id := ota.RolloutWorkflowID(name)
	desc, err := c.DescribeWorkflow(ctx, id, "")
	switch {
	case isNotFound(err):
	case err != nil:
		return false, fmt.Errorf("describe workflow %s: %w", id, err)
	case desc.Status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING && desc.WorkflowExecution.RunID != ownRunID:
		return true, nil
	}
	refs, err := listRollouts(ctx, c, fmt.Sprintf("%s AND ExecutionStatus = '%s'", rolloutQuery(name, ""), enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING))
	if err != nil {
		return false, err
	}
	for _, r := range refs {
		if r.WorkflowID != id {
			return true, nil
		}
	}
	return false, nil
}

// scheduleTargetList returns the key of the target list the rollout's schedule starts its
// rollouts with; "" when there is no schedule or its rollouts have no explicit list.
func scheduleTargetList(ctx context.Context, c client.Client, name string) (string, error) {
	id := rolloutScheduleID(name)
	desc, err := c.ScheduleClient().GetHandle(ctx, id).Describe(ctx)
	if isNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("describe schedule %s: %w", id, err)
	}
	in, err := scheduledInput(desc.Schedule.Action)
	if err != nil {
		return "", fmt.Errorf("schedule %s: %w", id, err)
	}
	return in.Request.Targets.List, nil
}

// scheduledInput decodes the input of a rollout schedule's action: the RolloutInput of the
// ScheduledRolloutWorkflow it starts (or, for a schedule of an earlier version, of the
// RolloutWorkflow).
func scheduledInput(action client.ScheduleAction) (ota.RolloutInput, error) {
	var in ota.RolloutInput
	a, ok := action.(*client.ScheduleWorkflowAction)
	if !ok || len(a.Args) != 1 {
		return in, fmt.Errorf("its action is not a rollout start (%T)", action)
	}
	p, ok := a.Args[0].(*commonpb.Payload)
	if !ok {
		return in, fmt.Errorf("its action's input is %T, not a payload", a.Args[0])
	}
	if err := converter.GetDefaultDataConverter().FromPayload(p, &in); err != nil {
		return in, fmt.Errorf("decode its rollout request: %w", err)
	}
	return in, nil
}
