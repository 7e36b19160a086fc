package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// ErrTypeNoTemporalClient is the failure of AwaitWorkflows on a worker whose Activities have
// no Temporal client.
const ErrTypeNoTemporalClient = "NoTemporalClient"

// WorkflowResults reads the results of workflow executions. Temporal's client.Client
// satisfies it.
type WorkflowResults interface {
	GetWorkflow(ctx context.Context, workflowID, runID string) client.WorkflowRun
}

// Execution names one workflow execution.
type Execution struct {
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
}

// AwaitWorkflowsInput lists the executions to wait for. Once one has ended, AwaitWorkflows
// waits at most Gather more for others before it returns, so that executions ending together
// come back together.
type AwaitWorkflowsInput struct {
	Executions []Execution   `json:"executions"`
	Gather     time.Duration `json:"gather"`
}

// Outcome is how one execution ended: its result, or the type of its failure.
type Outcome struct {
	WorkflowID string `json:"workflow_id"`
	// Result is the execution's result (JSON) when it completed.
	Result json.RawMessage `json:"result,omitempty"`
	// Failed is set when it did not complete; ErrorType is then the application error's type,
	// if any, Canceled tells a canceled execution, and Error says what happened.
	Failed    bool   `json:"failed,omitempty"`
	ErrorType string `json:"error_type,omitempty"`
	Canceled  bool   `json:"canceled,omitempty"`
	Error     string `json:"error,omitempty"`
}

// awaitHeartbeat is how often AwaitWorkflows heartbeats while it waits: well within the
// rollout's heartbeat timeout (15 s), so that a lost worker is noticed soon.
const awaitHeartbeat = 5 * time.Second

// AwaitWorkflows waits until at least one of the executions has ended and returns the
// outcomes of those that ended (in the order given). A rollout that continued as new uses it
// to follow the device upgrades its earlier run started. It heartbeats while it waits; call
// it with a heartbeat timeout so that a lost worker is noticed.
func (a *Activities) AwaitWorkflows(ctx context.Context, in AwaitWorkflowsInput) ([]Outcome, error) {
	if a.Temporal == nil {
		return nil, temporal.NewNonRetryableApplicationError("await workflows: the worker's activities have no Temporal client",
			ErrTypeNoTemporalClient, nil)
	}
	if len(in.Executions) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type ended struct {
		i int
		o Outcome
	}
	ch := make(chan ended, len(in.Executions))
	for i, e := range in.Executions {
		go func() {
			ch <- ended{i, a.outcome(ctx, e)}
		}()
	}
	got := map[int]Outcome{}
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
				t := time.NewTimer(max(in.Gather, 0))
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

func collect(execs []Execution, got map[int]Outcome) []Outcome {
	out := make([]Outcome, 0, len(got))
	for i := range execs {
		if o, ok := got[i]; ok {
			out = append(out, o)
		}
	}
	return out
}

// outcome waits for one execution to end.
func (a *Activities) outcome(ctx context.Context, e Execution) Outcome {
	o := Outcome{WorkflowID: e.WorkflowID}
	var raw json.RawMessage
	err := a.Temporal.GetWorkflow(ctx, e.WorkflowID, e.RunID).Get(ctx, &raw)
	if err == nil {
		o.Result = raw
		return o
	}
	o.Failed, o.Error = true, err.Error()
	var appErr *temporal.ApplicationError
	var canceled *temporal.CanceledError
	switch {
	case errors.As(err, &appErr):
		o.ErrorType = appErr.Type()
	case errors.As(err, &canceled):
		o.Canceled = true
	}
	return o
}
