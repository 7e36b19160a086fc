package workflows

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sdkpb "go.temporal.io/api/sdk/v1"
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

// currentDetails are the details the Web UI shows of the workflow under test now: what the
// workflow metadata query returns, as the UI asks it.
func currentDetails(t *testing.T, env *testsuite.TestWorkflowEnvironment) string {
	t.Helper()
	v, err := env.QueryWorkflow("__temporal_workflow_metadata") // the SDK does not export the name
	if err != nil {
		t.Fatalf("metadata query: %v", err)
	}
	var md sdkpb.WorkflowMetadata
	if err := v.Get(&md); err != nil {
		t.Fatalf("decode metadata: %v", err)
	}
	return md.GetCurrentDetails()
}

// detailsCheck is what the details must show at a time after the start.
type detailsCheck struct {
	at   time.Duration
	want []string
}

// checkDetails reads the current details at each check's time and compares them once the
// workflow has run.
func checkDetails(t *testing.T, env *testsuite.TestWorkflowEnvironment, checks []detailsCheck) func() {
	got := make([]string, len(checks))
	for i, c := range checks {
		env.RegisterDelayedCallback(func() { got[i] = currentDetails(t, env) }, c.at)
	}
	return func() {
		t.Helper()
		for i, c := range checks {
			for _, w := range c.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("details at %s lack %q:\n%s", c.at, w, got[i])
				}
			}
		}
	}
}

// TestDeviceUpgradeDetails: the upgrade's details follow its state, attempt, progress and
// the device's last report, and say what it waits for.
func TestDeviceUpgradeDetails(t *testing.T) {
	h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
	h.schedule([]step{{at: time.Second, progress: 45}, {at: 2 * time.Second, progress: protocol.CodeDownloadFailed},
		{at: 40 * time.Second, progress: 100}, {at: 50 * time.Second, status: "1.1"}})
	verify := checkDetails(t, h.env, []detailsCheck{
		{500 * time.Millisecond, []string{"**sent** · attempt 1 of 3", "no report from the device yet (it reported firmware_ver=1.0 before)",
			"next: start timeout at "}},
		{1500 * time.Millisecond, []string{"**downloading** 45% · attempt 1 of 3", `last report: progress 45 "downloading" at `,
			"next: silence timeout at "}},
		{3 * time.Second, []string{"**pending** · attempt 1 of 3", "attempt 1 ended: downloading (code -1)", `last report: progress -1 "downloading"`,
			"next: retry backoff before attempt 2 at "}},
		{35 * time.Second, []string{"**sent** · attempt 2 of 3", "next: start timeout at "}},
		{45 * time.Second, []string{"**downloaded** 100% · attempt 2 of 3", `last report: progress 100 "downloading"`, "next: install timeout at "}},
	})
	st, err := h.run(t, testRequest())
	if err != nil || st.State != ota.StateSucceeded {
		t.Fatalf("state %s, err %v; want succeeded", st.State, err)
	}
	verify()
	final := currentDetails(t, h.env)
	for _, w := range []string{"**succeeded** after attempt 2 of 3", "last report: status firmware_ver=1.1 at ", "finished "} {
		if !strings.Contains(final, w) {
			t.Errorf("final details lack %q:\n%s", w, final)
		}
	}
	if strings.Contains(final, "next:") {
		t.Errorf("final details still name a deadline:\n%s", final)
	}
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

// TestRolloutDetails: the rollout's details show its state, wave and counts as it goes.
func TestRolloutDetails(t *testing.T) {
	h := newFleetHarness(t, 4)
	verify := checkDetails(t, h.env, []detailsCheck{
		{30 * time.Second, []string{"**running** · wave 1 of 2", "4 targets, 2 started: 2 running", "wave 1: 2 of 2 started: 2 running"}},
		{30 * time.Minute, []string{"**baking** · wave 1 of 2", "baking wave 1 for 1h0m0s", "4 targets, 2 started: 2 succeeded"}},
		{time.Hour + 90*time.Second, []string{"**running** · wave 2 of 2", "4 targets, 4 started: 2 running, 2 succeeded",
			"wave 2: 2 of 2 started: 2 running"}},
	})
	p, err := h.run(t, ota.RolloutInput{Request: rolloutRequest(ota.Wave{Count: 2, Bake: ota.Duration(time.Hour)}, ota.Wave{Percent: 100})})
	if err != nil || p.State != ota.RolloutCompleted {
		t.Fatalf("progress %+v, err %v; want completed", p, err)
	}
	verify()
	final := currentDetails(t, h.env)
	for _, w := range []string{"**completed** · wave 2 of 2", "4 targets, 4 started: 4 succeeded", "finished "} {
		if !strings.Contains(final, w) {
			t.Errorf("final details lack %q:\n%s", w, final)
		}
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
