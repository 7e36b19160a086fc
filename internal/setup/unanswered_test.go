package setup

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.temporal.io/api/serviceerror"
)

// TestUnanswered: the errors of a server that does not answer yet are waited out; others are
// answers, and so is anything once the caller's context has ended.
func TestUnanswered(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	noPoller := serviceerror.NewFailedPrecondition("no poller seen for task queue recently, worker may be down")
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"deadline", context.Background(), serviceerror.NewDeadlineExceeded("context deadline exceeded"), true},
		{"unavailable", context.Background(), serviceerror.NewUnavailable("Not enough hosts to serve the request"), true},
		{"context deadline", context.Background(), fmt.Errorf("describe: %w", context.DeadlineExceeded), true},
		{"no poller of the internal worker yet", context.Background(), fmt.Errorf("describe: %w", noPoller), true},
		{"another failed precondition", context.Background(), serviceerror.NewFailedPrecondition("schedule is paused"), false},
		{"not found", context.Background(), serviceerror.NewNotFound("schedule not found"), false},
		{"plain error", context.Background(), errors.New("boom"), false},
		{"the caller gave up", canceled, noPoller, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unanswered(tt.ctx, tt.err); got != tt.want {
				t.Errorf("unanswered(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
