package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// outageNotice is what the commands that follow a workflow to its end (--watch, --wait)
// print, once per outage, while the Temporal server does not answer.
const outageNotice = "Temporal unreachable, retrying ..."

// outageProbeTimeout bounds one look at whether the server answers.
const outageProbeTimeout = 5 * time.Second

// outageWatch tells, once per outage, that the Temporal server does not answer, and when it
// answers again. It is safe for concurrent use.
type outageWatch struct {
	w io.Writer
	// probe is a call that the server answers by itself, without a worker.
	probe func(ctx context.Context) error

	mu     sync.Mutex
	down   bool
	since  time.Time
	notes  int // messages printed, for a terminal drawing to start anew below them
	outage int // outages seen
}

// newOutageWatch watches the server c talks to, through the description of workflowID, and
// writes its messages to w.
func newOutageWatch(w io.Writer, c client.Client, workflowID string) *outageWatch {
	return &outageWatch{w: w, probe: func(ctx context.Context) error {
		_, err := c.DescribeWorkflow(ctx, workflowID, "")
		return err
	}}
}

// check asks the server whether it answers and says so when that changed. An answer that is
// an error (such as the workflow not found) is an answer.
func (o *outageWatch) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, outageProbeTimeout)
	err := o.probe(pctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if unreachable(err) {
		o.failed(err)
	} else {
		o.answered()
	}
}

// failed records that the server did not answer: the first time in an outage it says so.
func (o *outageWatch) failed(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down {
		return
	}
	o.down, o.since = true, time.Now()
	o.outage++
	o.notes++
	fmt.Fprintf(o.w, "starter: %s (%s)\n", outageNotice, briefError(err))
}

// answered records that the server answered: after an outage it says so.
func (o *outageWatch) answered() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.down {
		return
	}
	o.down = false
	o.notes++
	fmt.Fprintf(o.w, "starter: Temporal answers again, after %s.\n", time.Since(o.since).Round(time.Second))
}

// printed returns how many messages the watch printed so far.
func (o *outageWatch) printed() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.notes
}

// unreachable reports whether err is the server not answering (down, restarting, or out of
// reach), as opposed to an answer or a workflow's own end.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	var ended *temporal.WorkflowExecutionError
	if errors.As(err, &ended) {
		return false
	}
	var unavailable *serviceerror.Unavailable
	var deadline *serviceerror.DeadlineExceeded
	var canceled *serviceerror.Canceled
	if errors.As(err, &unavailable) || errors.As(err, &deadline) || errors.As(err, &canceled) ||
		errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// briefError is the first line of err, at most 120 characters: enough to tell what failed.
func briefError(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

// awaitEnd waits for a workflow to end with wait (a run's Get), riding out outages of the
// Temporal server: a wait that fails because the server does not answer is started again,
// after o has looked and said so, until the workflow ends, ctx is done, or the wait fails in
// another way. Backoff grows from a second to ten between attempts.
func awaitEnd[T any](ctx context.Context, o *outageWatch, wait func(context.Context) (T, error)) (T, error) {
	backoff := time.Second
	for {
		v, err := wait(ctx)
		if err == nil || ctx.Err() != nil || !unreachable(err) {
			return v, err
		}
		o.check(ctx)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}
