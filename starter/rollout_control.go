package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/urfave/cli/v2"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// updateTimeout bounds a rollout update: a worker must run its validator and handler.
const updateTimeout = 30 * time.Second

func (e *appEnv) rolloutPauseAction(cCtx *cli.Context) error {
	name, err := nameArg(cCtx)
	if err != nil {
		return err
	}
	reason := cmp.Or(strings.TrimSpace(cCtx.String("reason")), "no reason given")
	ref, err := e.updateRollout(cCtx, name, ota.UpdatePause, "pause", reason)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "Paused rollout %s (workflow %s): the device upgrades running now finish, and none starts "+
		"until `starter rollout resume %s`.\n", name, ref.WorkflowID, name)
	return nil
}

func (e *appEnv) rolloutResumeAction(cCtx *cli.Context) error {
	name, err := nameArg(cCtx)
	if err != nil {
		return err
	}
	ref, err := e.updateRollout(cCtx, name, ota.UpdateResume, "resume")
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "Resumed rollout %s (workflow %s).\n", name, ref.WorkflowID)
	return nil
}

func (e *appEnv) rolloutApproveAction(cCtx *cli.Context) error {
	name, err := nameArg(cCtx)
	if err != nil {
		return err
	}
	wave := cCtx.Int("wave")
	if wave < 0 {
		return usageErrorf(cCtx, "--wave must be a wave number from 1, or 0 for whichever waits, not %d", wave)
	}
	ref, err := e.updateRollout(cCtx, name, ota.UpdateApprove, "approve", wave)
	if err != nil {
		return err
	}
	what := "the wave waiting for approval"
	if wave > 0 {
		what = fmt.Sprintf("wave %d", wave)
	}
	fmt.Fprintf(e.out, "Approved %s of rollout %s (workflow %s).\n", what, name, ref.WorkflowID)
	return nil
}

func (e *appEnv) rolloutCloseAction(cCtx *cli.Context) error {
	name, err := nameArg(cCtx)
	if err != nil {
		return err
	}
	ref, err := e.updateRollout(cCtx, name, ota.UpdateClose, "close", strings.TrimSpace(cCtx.String("reason")))
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "Closed rollout %s (workflow %s): it takes on no more devices, and completes once its running upgrades have ended.\n",
		name, ref.WorkflowID)
	return nil
}

func (e *appEnv) rolloutCancelAction(cCtx *cli.Context) error {
	name, err := nameArg(cCtx)
	if err != nil {
		return err
	}
	cr := ota.CancelRequest{CancelRunning: cCtx.Bool("cancel-running"), Reason: strings.TrimSpace(cCtx.String("reason"))}
	ref, err := e.updateRollout(cCtx, name, ota.UpdateCancel, "cancel", cr)
	if err != nil {
		return err
	}
	if cr.CancelRunning {
		fmt.Fprintf(e.out, "Canceling rollout %s (workflow %s) and the device upgrades running now.\n", name, ref.WorkflowID)
	} else {
		fmt.Fprintf(e.out, "Canceling rollout %s (workflow %s): no device upgrade starts any more; the running ones finish.\n", name, ref.WorkflowID)
	}
	if !cCtx.Bool("wait") {
		return nil
	}
	ctx := cCtx.Context
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	p, err := awaitEnd(ctx, newOutageWatch(e.errOut, c, ref.WorkflowID), func(ctx context.Context) (ota.RolloutProgress, error) {
		return rolloutResult(ctx, c.GetWorkflow(ctx, ref.WorkflowID, ""))
	})
	if ctx.Err() != nil {
		return cli.Exit("stopped waiting; the cancel stands", exitInterrupted)
	}
	if p.State == "" {
		return fmt.Errorf("rollout %s (workflow %s) ended without a result: %w", name, ref.WorkflowID, err)
	}
	fmt.Fprintf(e.out, "Rollout %s %s: %s\n", name, p.State, countsByState(p.Counts, false))
	if p.State != ota.RolloutCanceled {
		return cli.Exit(fmt.Sprintf("rollout %s ended %s before the cancel took effect", name, p.State), exitFailure)
	}
	return nil
}

// updateRollout sends the running rollout of a name an update and waits until the workflow
// has handled it. An update the workflow refuses (its validator says why) and a rollout that
// has ended are failures (exit code 1) that say so.
func (e *appEnv) updateRollout(cCtx *cli.Context, name, update, verb string, args ...any) (rolloutRef, error) {
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return rolloutRef{}, err
	}
	ctx := cCtx.Context
	ref, err := findRollout(ctx, c, name)
	if err != nil {
		return ref, err
	}
	ended := func() error {
		return cli.Exit(fmt.Sprintf("rollout %s has ended (%s, workflow %s): nothing to %s",
			name, cmp.Or(ref.State, ref.Status.String()), ref.WorkflowID, verb), exitFailure)
	}
	if !ref.running() {
		return ref, ended()
	}
	uctx, cancel := context.WithTimeout(ctx, updateTimeout)
	defer cancel()
	h, err := c.UpdateWorkflow(uctx, client.UpdateWorkflowOptions{
		WorkflowID:   ref.WorkflowID,
		UpdateName:   update,
		Args:         args,
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err == nil {
		err = h.Get(uctx, nil)
	}
	if err == nil {
		return ref, nil
	}
	var refused *temporal.ApplicationError
	var notFound *serviceerror.NotFound
	switch {
	case ctx.Err() != nil:
		return ref, cli.Exit(fmt.Sprintf("interrupted: the %s of rollout %s may or may not have taken effect; "+
			"see `starter rollout status %s`", verb, name, name), exitInterrupted)
	case errors.As(err, &refused):
		return ref, cli.Exit(fmt.Sprintf("rollout %s refused to %s: %s", name, verb, refused.Message()), exitFailure)
	case errors.As(err, &notFound):
		return ref, ended()
	case uctx.Err() != nil:
		return ref, fmt.Errorf("%s rollout %s (workflow %s): no answer within %s: is the OTAflow worker running?", verb, name, ref.WorkflowID, updateTimeout)
	}
	return ref, fmt.Errorf("%s rollout %s (workflow %s): %w", verb, name, ref.WorkflowID, err)
}
