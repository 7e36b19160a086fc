package setup_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/setup"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

// TestRunTwice runs the setup on a namespace and a database that do not exist yet, then
// again: the first run creates and registers everything, the second changes nothing and
// says so.
func TestRunTwice(t *testing.T) {
	ctx := context.Background()
	ns := fmt.Sprintf("setup-twice-%d", time.Now().UnixNano())
	var extra atomic.Int32
	steps := append(setup.DefaultSteps(), setup.Step{Name: "extension", Run: func(ctx context.Context, e *setup.Env) (setup.Outcome, error) {
		// A step added to the list gets the connections the others opened.
		if _, err := e.Store(ctx); err != nil {
			return setup.Outcome{}, err
		}
		if _, err := e.Temporal(ctx); err != nil {
			return setup.Outcome{}, err
		}
		extra.Add(1)
		return setup.Outcome{Detail: "ran"}, nil
	}})
	cfg := setup.Config{TemporalAddress: testenv.TemporalAddress(), TemporalNamespace: ns, Retention: 48 * time.Hour,
		DatabaseURL: testenv.DatabaseURL(t)}

	var first testenv.Buffer
	cfg.Out = &first
	rep, err := setup.Run(ctx, cfg, steps)
	if err != nil {
		t.Fatalf("first run: %v\n%s", err, first.String())
	}
	t.Logf("first run:\n%s", first.String())
	wantChanged := map[string]bool{"namespace": true, "search attributes": true, "database": true, "retention cleanup": true, "extension": false}
	for _, r := range rep {
		if r.Changed != wantChanged[r.Step] {
			t.Errorf("first run, step %s: changed %v, want %v (%s)", r.Step, r.Changed, wantChanged[r.Step], r.Detail)
		}
	}
	for _, want := range []string{"created namespace " + ns + " (retention 48h0m0s)", "registered OtaDevice", "applied migrations 001_init.sql",
		"created schedule retention-cleanup: workflow RetentionCleanup every 1h0m0s"} {
		if !strings.Contains(first.String(), want) {
			t.Errorf("first run's output lacks %q", want)
		}
	}

	c := testenv.TemporalClient()
	desc, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	if got := desc.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration(); got != 48*time.Hour {
		t.Errorf("namespace retention %s, want 48h", got)
	}
	list, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range ota.SearchAttributeNames {
		if typ := list.GetCustomAttributes()[name]; typ != enums.INDEXED_VALUE_TYPE_KEYWORD {
			t.Errorf("search attribute %s: %s, want Keyword", name, typ)
		}
	}

	var second testenv.Buffer
	cfg.Out = &second
	cfg.Retention = 96 * time.Hour // an existing namespace keeps its own
	rep, err = setup.Run(ctx, cfg, steps)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, second.String())
	}
	t.Logf("second run:\n%s", second.String())
	if rep.Changed() || len(rep) != len(steps) {
		t.Errorf("second run: %+v; want every step run, none changing anything", rep)
	}
	if !strings.Contains(second.String(), "nothing changed") || !strings.Contains(second.String(), "namespace "+ns+" exists (retention 48h0m0s)") {
		t.Errorf("second run's output does not say that nothing changed:\n%s", second.String())
	}
	if extra.Load() != 2 {
		t.Errorf("the added step ran %d times, want 2", extra.Load())
	}

	// Given explicitly, the retention is set on the existing namespace; a new cleanup interval
	// updates the schedule.
	var third testenv.Buffer
	cfg.Out, cfg.SetRetention, cfg.CleanupInterval = &third, true, 30*time.Minute
	rep, err = setup.Run(ctx, cfg, steps)
	if err != nil {
		t.Fatalf("third run: %v\n%s", err, third.String())
	}
	t.Logf("third run:\n%s", third.String())
	wantChanged = map[string]bool{"namespace": true, "retention cleanup": true}
	for _, r := range rep {
		if r.Changed != wantChanged[r.Step] {
			t.Errorf("third run, step %s: changed %v, want %v (%s)", r.Step, r.Changed, wantChanged[r.Step], r.Detail)
		}
	}
	if desc, err = c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: ns}); err != nil {
		t.Fatal(err)
	}
	if got := desc.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration(); got != 96*time.Hour {
		t.Errorf("namespace retention %s after --retention 96h, want 96h", got)
	}
	sc, err := temporalClient(t, ns).ScheduleClient().GetHandle(ctx, ota.RetentionCleanupScheduleID).Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if iv := sc.Schedule.Spec.Intervals; len(iv) != 1 || iv[0].Every != 30*time.Minute {
		t.Errorf("schedule intervals %+v, want every 30m", iv)
	}
	if a, ok := sc.Schedule.Action.(*client.ScheduleWorkflowAction); !ok || a.Workflow != ota.RetentionCleanupWorkflowName || a.TaskQueue != ota.TaskQueue {
		t.Errorf("schedule action %+v, want %s on %s", sc.Schedule.Action, ota.RetentionCleanupWorkflowName, ota.TaskQueue)
	}
}

// temporalClient is a client of the test server in namespace ns.
func temporalClient(t *testing.T, ns string) client.Client {
	t.Helper()
	c, err := client.Dial(client.Options{HostPort: testenv.TemporalAddress(), Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestRunWaitsForTheFrontend starts the setup against a Temporal server that is not running
// yet: it says it waits, and finishes once the server is up.
func TestRunWaitsForTheFrontend(t *testing.T) {
	ctx := context.Background()
	port, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	var out testenv.Buffer
	done := make(chan error, 1)
	go func() {
		_, err := setup.Run(ctx, setup.Config{TemporalAddress: "127.0.0.1:" + strconv.Itoa(port), TemporalNamespace: "late",
			DatabaseURL: testenv.DatabaseURL(t), Wait: 2 * time.Minute, Out: &out}, setup.DefaultSteps())
		done <- err
	}()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "Waiting for the Temporal frontend") },
		time.Minute, 50*time.Millisecond, "the setup to say it waits")
	select {
	case err := <-done:
		t.Fatalf("the setup ended before the server started: %v\n%s", err, out.String())
	default:
	}
	cli := os.Getenv(testenv.EnvTemporalCLI)
	if cli == "" {
		if cli, err = localstack.EnsureTemporalCLI(ctx, t.Logf); err != nil {
			t.Fatal(err)
		}
	}
	tp, err := localstack.StartTemporal(ctx, localstack.TemporalOptions{CLIPath: cli, Port: port, Namespace: "other", LogLevel: "error"})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("setup: %v\n%s", err, out.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the setup did not finish after the server started:\n%s", out.String())
	}
	t.Logf("output:\n%s", out.String())
	for _, want := range []string{"answers", "created namespace late"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestRunGivesUp fails clearly when the frontend never answers.
func TestRunGivesUp(t *testing.T) {
	port, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	var out testenv.Buffer
	addr := "127.0.0.1:" + strconv.Itoa(port)
	rep, err := setup.Run(context.Background(), setup.Config{TemporalAddress: addr, DatabaseURL: testenv.DatabaseURL(t),
		Wait: 2 * time.Second, Out: &out}, setup.DefaultSteps())
	if err == nil {
		t.Fatalf("setup succeeded without a server: %+v", rep)
	}
	for _, want := range []string{`setup step "namespace"`, addr, "did not answer within 2s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if len(rep) != 0 {
		t.Errorf("report %+v, want no step done", rep)
	}
}

// TestRunStopsAtFailingStep stops at the first failing step, naming it, and runs none after.
func TestRunStopsAtFailingStep(t *testing.T) {
	var after bool
	steps := []setup.Step{
		{Name: "fine", Run: func(context.Context, *setup.Env) (setup.Outcome, error) { return setup.Outcome{Detail: "ok"}, nil }},
		{Name: "broken", Run: func(context.Context, *setup.Env) (setup.Outcome, error) {
			return setup.Outcome{}, errors.New("disk on fire")
		}},
		{Name: "after", Run: func(context.Context, *setup.Env) (setup.Outcome, error) { after = true; return setup.Outcome{}, nil }},
	}
	rep, err := setup.Run(context.Background(), setup.Config{}, steps)
	if err == nil || !strings.Contains(err.Error(), `setup step "broken": disk on fire`) {
		t.Fatalf("error %v, want the broken step named", err)
	}
	if len(rep) != 1 || rep[0].Step != "fine" || after {
		t.Errorf("report %+v, step after ran %v; want only the first step", rep, after)
	}
}
