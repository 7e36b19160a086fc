package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// WorkflowResults reads the results of workflow executions. Temporal's client.Client
// satisfies it.
type WorkflowResults interface {
	GetWorkflow(ctx context.Context, workflowID, runID string) client.WorkflowRun
}

// awaitHeartbeat is how often AwaitWorkflows heartbeats while it waits: well within the
// rollout's heartbeat timeout (15 s), so that a lost worker is noticed soon.
const awaitHeartbeat = 5 * time.Second

// AwaitWorkflows waits until at least one of the executions has ended and returns the
// outcomes of those that ended (in the order given). A rollout that continued as new uses it
// to follow the device upgrades its earlier run started. It heartbeats while it waits; call
// it with a heartbeat timeout so that a lost worker is noticed.
func (a *Activities) AwaitWorkflows(ctx context.Context, in ota.AwaitWorkflowsInput) ([]ota.Outcome, error) {
	if a.Temporal == nil {
		return nil, temporal.NewNonRetryableApplicationError("await workflows: the worker's activities have no Temporal client",
			ota.ErrTypeNoTemporalClient, nil)
	}
	if len(in.Executions) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type ended struct {
		i int
		o ota.Outcome
	}
	ch := make(chan ended, len(in.Executions))
	for i, e := range in.Executions {
		go func() {
			ch <- ended{i, a.outcome(ctx, e)}
		}()
	}
	got := map[int]ota.Outcome{}
	tick := time.NewTicker(awaitHeartbeat)
	defer tick.Stop()
	var gather <-chan time.Time
	for len(got) < len(in.Executions) {
		select {
		case e := <-ch:
			if ctx.Err() != nil {
				return nil, fmt.Errorf("await workflows: %w", ctx.Err())
			}
			got[e.i] = e.o
			if gather == nil {
				t := time.NewTimer(max(in.Gather.Std(), 0))
				defer t.Stop()
				gather = t.C
			}
		case <-gather:
			return collect(in.Executions, got), nil
		case <-tick.C:
			activity.RecordHeartbeat(ctx, len(got))
		case <-ctx.Done():
			return nil, fmt.Errorf("await workflows: %w", ctx.Err())
		}
	}
	return collect(in.Executions, got), nil
}

func collect(execs []ota.Execution, got map[int]ota.Outcome) []ota.Outcome {
	out := make([]ota.Outcome, 0, len(got))
	for i := range execs {
		if o, ok := got[i]; ok {
			out = append(out, o)
		}
	}
	return out
}

// outcome waits for one execution to end.
func (a *Activities) outcome(ctx context.Context, e ota.Execution) ota.Outcome {
	o := ota.Outcome{WorkflowID: e.WorkflowID}
	var st ota.UpgradeStatus
	err := a.Temporal.GetWorkflow(ctx, e.WorkflowID, e.RunID).Get(ctx, &st)
	if err == nil {
		o.Result = &st
		return o
	}
	o.Failed, o.Error = true, err.Error()
	var appErr *temporal.ApplicationError
	var canceled *temporal.CanceledError
	switch {
	case errors.As(err, &appErr):
		o.ErrorType = appErr.Type()
		// A failed upgrade's details hold its final status, which tells a revert.
		if appErr.HasDetails() && appErr.Details(&st) == nil && st.State != "" {
			o.Result = &st
		}
	case errors.As(err, &canceled):
		o.Canceled = true
	}
	return o
}
