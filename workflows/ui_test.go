package workflows

import (
	"slices"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// timerLog records the summaries of the timers the workflows of one type start, as the Web
// UI shows them, through a worker interceptor.
type timerLog struct {
	interceptor.WorkerInterceptorBase
	workflowType string

	mu        sync.Mutex
	summaries []string
}

func logTimers(env *testsuite.TestWorkflowEnvironment, workflowType string) *timerLog {
	l := &timerLog{workflowType: workflowType}
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{l}})
	return l
}

func (l *timerLog) InterceptWorkflow(_ workflow.Context, next interceptor.WorkflowInboundInterceptor) interceptor.WorkflowInboundInterceptor {
	return &timerInbound{WorkflowInboundInterceptorBase: interceptor.WorkflowInboundInterceptorBase{Next: next}, log: l}
}

func (l *timerLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.summaries)
}

type timerInbound struct {
	interceptor.WorkflowInboundInterceptorBase
	log *timerLog
}

func (i *timerInbound) Init(outbound interceptor.WorkflowOutboundInterceptor) error {
	return i.Next.Init(&timerOutbound{WorkflowOutboundInterceptorBase: interceptor.WorkflowOutboundInterceptorBase{Next: outbound}, log: i.log})
}

type timerOutbound struct {
	interceptor.WorkflowOutboundInterceptorBase
	log *timerLog
}

func (o *timerOutbound) NewTimerWithOptions(ctx workflow.Context, d time.Duration, opts workflow.TimerOptions) workflow.Future {
	if workflow.GetInfo(ctx).WorkflowType.Name == o.log.workflowType {
		o.log.mu.Lock()
		o.log.summaries = append(o.log.summaries, opts.Summary)
		o.log.mu.Unlock()
	}
	return o.Next.NewTimerWithOptions(ctx, d, opts)
}

// TestDeviceUpgradeTimerSummaries: each timer says which deadline it guards.
func TestDeviceUpgradeTimerSummaries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		req   func(*ota.UpgradeRequest)
		steps []step
		want  []string
	}{
		{"a retry after an error", nil,
			[]step{{at: time.Second, progress: 45}, {at: 2 * time.Second, progress: protocol.CodeDownloadFailed},
				{at: 40 * time.Second, progress: 100}, {at: 50 * time.Second, status: "1.1"}},
			[]string{"start timeout", "retry backoff before attempt 2", "start timeout"}},
		// The first timer fires at the shortest timeout, 5 min, before the device's deadline;
		// the next guards the deadline of where the attempt then stands.
		{"silence", func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			[]step{{at: time.Second, progress: 45}},
			[]string{"start timeout", "silence timeout"}},
		// A timer fires at most the shortest timeout after it was set: the 15 min install
		// timeout takes three.
		{"install", func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			[]step{{at: time.Second, progress: 100}},
			[]string{"start timeout", "install timeout", "install timeout", "install timeout"}},
		{"soak", func(r *ota.UpgradeRequest) { r.Soak = ota.Duration(10 * time.Minute) },
			[]step{{at: time.Second, status: "1.1"}},
			[]string{"start timeout", "soak"}},
		{"overall deadline", func(r *ota.UpgradeRequest) {
			r.Deadline = ota.Duration(3 * time.Minute)
			r.StartTimeout, r.SilenceTimeout = ota.Duration(time.Hour), ota.Duration(time.Hour)
		}, nil, []string{"overall deadline"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
			timers := logTimers(h.env, ota.DeviceUpgradeWorkflowName)
			h.env.RegisterWorkflowWithOptions(DeviceUpgradeWorkflow, workflow.RegisterOptions{Name: ota.DeviceUpgradeWorkflowName})
			h.schedule(tc.steps)
			req := testRequest()
			if tc.req != nil {
				tc.req(&req)
			}
			h.env.ExecuteWorkflow(ota.DeviceUpgradeWorkflowName, req)
			if !h.env.IsWorkflowCompleted() {
				t.Fatal("workflow did not complete")
			}
			if got := timers.list(); !slices.Equal(got, tc.want) {
				t.Errorf("timer summaries = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRolloutTimerSummaries: the rollout's timers say what it waits for: a bake, the
// maintenance window, the rate limit.
func TestRolloutTimerSummaries(t *testing.T) {
	h := newFleetHarness(t, 4)
	timers := logTimers(h.env, ota.RolloutWorkflowName)
	h.env.SetStartTime(time.Date(2026, 11, 26, 23, 30, 0, 0, time.UTC)) // 00:30 in Berlin
	req := rolloutRequest(ota.Wave{Count: 2, Bake: ota.Duration(time.Hour)}, ota.Wave{Percent: 100})
	req.Window = &ota.Window{Start: "01:00", End: "05:00", TimeZone: "Europe/Berlin"}
	req.MaxPerMinute = 1
	p, err := h.run(t, ota.RolloutInput{Request: req})
	if err != nil || p.State != ota.RolloutCompleted {
		t.Fatalf("progress %+v, err %v; want completed", p, err)
	}
	got := timers.list()
	for _, want := range []string{"waiting for the maintenance window", "rate limit", "bake after wave 1"} {
		if !slices.Contains(got, want) {
			t.Errorf("timer summaries %q lack %q", got, want)
		}
	}
	for _, s := range got {
		if s == "" || s == "AwaitWithTimeout" {
			t.Errorf("a timer has the generic summary %q (all: %q)", s, got)
		}
	}
}
