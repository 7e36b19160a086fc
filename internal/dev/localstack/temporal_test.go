package localstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/ota"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
)

// probeTaskQueue is polled by no worker: the workflows the tests start just wait there.
const probeTaskQueue = "localstack-test"

// temporalCLI returns the Temporal CLI the tests run: $OTAFLOW_TEST_TEMPORAL_CLI, else the one
// EnsureTemporalCLI finds or builds.
func temporalCLI(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("OTAFLOW_TEST_TEMPORAL_CLI"); p != "" {
		return p
	}
	p, err := EnsureTemporalCLI(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func startTemporal(t *testing.T, opts TemporalOptions) *Temporal {
	t.Helper()
	if opts.CLIPath == "" {
		opts.CLIPath = temporalCLI(t)
	}
	tp, err := StartTemporal(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tp.Stop(); err != nil {
			t.Errorf("stop Temporal: %v", err)
		}
	})
	return tp
}

func TestEnsureTemporalCLIFindsGoBin(t *testing.T) {
	goPath, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	goBin, err := goBinDir(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !isExecutable(filepath.Join(goBin, "temporal")) {
		t.Skipf("no Temporal CLI in %s to find", goBin)
	}
	// With only Go's own directory on PATH, `temporal` is not on PATH.
	t.Setenv("PATH", filepath.Dir(goPath))
	got, err := EnsureTemporalCLI(context.Background(), func(format string, args ...any) {
		t.Errorf("EnsureTemporalCLI wants to build: "+format, args...)
	})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(got) != "temporal" || !isExecutable(got) {
		t.Fatalf("EnsureTemporalCLI = %s, want an executable named temporal", got)
	}
}

func TestEnsureTemporalCLIBuilds(t *testing.T) {
	if os.Getenv("OTAFLOW_TEST_BUILD_TEMPORAL_CLI") == "" {
		t.Skip("building the Temporal CLI takes 2-3 minutes; set OTAFLOW_TEST_BUILD_TEMPORAL_CLI=1 to run this test")
	}
	goPath, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	gobin := t.TempDir()
	t.Setenv("PATH", filepath.Dir(goPath))
	t.Setenv("GOBIN", gobin)
	var logged bool
	got, err := EnsureTemporalCLI(context.Background(), func(format string, args ...any) { logged = true; t.Logf(format, args...) })
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(gobin, "temporal"); got != want || !logged {
		t.Fatalf("EnsureTemporalCLI = %s (logged %v), want %s built with a log line", got, logged, want)
	}
}

func TestStartTemporalInMemory(t *testing.T) {
	t.Parallel()
	tp := startTemporal(t, TemporalOptions{EnableUI: true})
	ctx := context.Background()

	host, _, err := net.SplitHostPort(tp.Address())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Address() = %q, want 127.0.0.1:port", tp.Address())
	}
	assertSearchAttributes(t, tp.Client(), tp.Namespace())
	run := startProbe(t, tp.Client(), "probe-memory", "dev-memory")
	desc, err := tp.Client().DescribeWorkflow(ctx, "probe-memory", run)
	if err != nil {
		t.Fatal(err)
	}
	if st := desc.Status; st != enums.WORKFLOW_EXECUTION_STATUS_RUNNING {
		t.Fatalf("probe workflow status %s, want running", st)
	}

	if !strings.HasPrefix(tp.UIURL(), "http://127.0.0.1:") {
		t.Fatalf("UIURL() = %q", tp.UIURL())
	}
	resp, err := http.Get(tp.UIURL())
	if err != nil {
		t.Fatalf("get the Web UI: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Web UI answered %s", resp.Status)
	}

	if err := tp.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tp.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	_, port, _ := net.SplitHostPort(tp.Address())
	if err := CheckPortFree(atoi(t, port)); err != nil {
		t.Fatalf("after Stop: %v", err)
	}
	if err := tp.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestStartTemporalHeadlessHasNoUI(t *testing.T) {
	t.Parallel()
	tp := startTemporal(t, TemporalOptions{Namespace: "otaflow-test"})
	if tp.UIURL() != "" {
		t.Fatalf("UIURL() = %q with the UI off", tp.UIURL())
	}
	if tp.Namespace() != "otaflow-test" {
		t.Fatalf("Namespace() = %q", tp.Namespace())
	}
	// The search attributes are registered in the namespace asked for, where the client works.
	assertSearchAttributes(t, tp.Client(), "otaflow-test")
	startProbe(t, tp.Client(), "probe-ns", "dev-ns")
}

func TestStartTemporalDBFileSurvivesRestart(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "temporal.db")
	ctx := context.Background()

	first := startTemporal(t, TemporalOptions{DBFile: db})
	run := startProbe(t, first.Client(), "probe-file", "dev-file")
	waitVisible(t, first.Client(), `OtaDevice = "dev-file"`, "probe-file")
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}

	// The file now holds the search attributes already; registering them again must work.
	second := startTemporal(t, TemporalOptions{DBFile: db})
	assertSearchAttributes(t, second.Client(), second.Namespace())
	desc, err := second.Client().DescribeWorkflow(ctx, "probe-file", run)
	if err != nil {
		t.Fatalf("the workflow started before the restart is gone: %v", err)
	}
	if st := desc.Status; st != enums.WORKFLOW_EXECUTION_STATUS_RUNNING {
		t.Fatalf("probe workflow status after restart %s, want running", st)
	}
	waitVisible(t, second.Client(), `OtaDevice = "dev-file"`, "probe-file")
}

func TestStartTemporalAddsSearchAttributesToOldDBFile(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "old.db")
	cli := temporalCLI(t)

	// A database file made by a dev server started without our search attributes.
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	proc, err := startProcess("old Temporal server", exec.Command(cli, "server", "start-dev", "--headless",
		"--ip", "127.0.0.1", "--port", fmt.Sprint(port), "--db-filename", db, "--log-level", "error"), nil, syscall.SIGKILL, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := &Temporal{proc: proc, address: fmt.Sprintf("127.0.0.1:%d", port), namespace: "default"}
	if err := old.waitReady(context.Background(), TemporalOptions{StartTimeout: time.Minute, Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	list, err := old.Client().OperatorService().ListSearchAttributes(context.Background(),
		&operatorservice.ListSearchAttributesRequest{Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := list.GetCustomAttributes()[ota.SearchAttributeNames[0]]; ok {
		t.Fatalf("the old server already has %s", ota.SearchAttributeNames[0])
	}
	if err := old.Stop(); err != nil {
		t.Fatal(err)
	}

	tp := startTemporal(t, TemporalOptions{CLIPath: cli, DBFile: db})
	assertSearchAttributes(t, tp.Client(), tp.Namespace())
	startProbe(t, tp.Client(), "probe-old", "dev-old")
	waitVisible(t, tp.Client(), `OtaDevice = "dev-old"`, "probe-old")
}

func TestStartTemporalErrors(t *testing.T) {
	t.Parallel()
	busy := listen(t).Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	failing := filepath.Join(dir, "failing-temporal")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho 'cannot start: disk on fire' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cli := temporalCLI(t)
	tests := []struct {
		name    string
		opts    TemporalOptions
		inUse   bool
		wantErr []string
	}{
		{name: "gRPC port in use", opts: TemporalOptions{CLIPath: cli, Port: busy}, inUse: true,
			wantErr: []string{fmt.Sprint(busy), "--temporal-port"}},
		{name: "UI port in use", opts: TemporalOptions{CLIPath: cli, EnableUI: true, UIPort: busy}, inUse: true,
			wantErr: []string{fmt.Sprint(busy), "--temporal-ui-port"}},
		{name: "CLI missing", opts: TemporalOptions{CLIPath: filepath.Join(dir, "nope")},
			wantErr: []string{"nope", "go install"}},
		{name: "server exits at once", opts: TemporalOptions{CLIPath: failing},
			wantErr: []string{"stopped during startup", "disk on fire"}},
		{name: "database directory missing", opts: TemporalOptions{CLIPath: cli, DBFile: filepath.Join(dir, "no", "such", "t.db")},
			wantErr: []string{"does not exist"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			tp, err := StartTemporal(context.Background(), tt.opts)
			if err == nil {
				tp.Stop()
				t.Fatal("StartTemporal succeeded, want an error")
			}
			t.Logf("error: %v", err)
			if got := errors.Is(err, ErrPortInUse); got != tt.inUse {
				t.Errorf("errors.Is(err, ErrPortInUse) = %v, want %v (%v)", got, tt.inUse, err)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			// A failure is reported when it happens, not after the start timeout.
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("the error took %s", d)
			}
		})
	}
}

// startProbe starts a workflow that no worker runs, with device as its OtaDevice search
// attribute, and returns its run ID.
func startProbe(t *testing.T, c client.Client, id, device string) string {
	t.Helper()
	run, err := startProbeErr(c, id, device)
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// startProbeErr is startProbe returning its error.
func startProbeErr(c client.Client, id, device string) (string, error) {
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID:                    id,
		TaskQueue:             probeTaskQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(ota.SearchDevice.ValueSet(device)),
	}, "LocalstackProbe")
	if err != nil {
		return "", fmt.Errorf("start workflow %s: %w", id, err)
	}
	return run.GetRunID(), nil
}

// waitVisible polls the visibility store until query lists workflow id.
func waitVisible(t *testing.T, c client.Client, query, id string) {
	t.Helper()
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		resp, err := c.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{Query: query})
		require.NoError(ct, err, "list workflows %q", query)
		var ids []string
		for _, e := range resp.GetExecutions() {
			ids = append(ids, e.GetExecution().GetWorkflowId())
		}
		assert.Contains(ct, ids, id)
	}, 20*time.Second, 100*time.Millisecond, "workflow %s listed by %q", id, query)
}

func assertSearchAttributes(t *testing.T, c client.Client, namespace string) {
	t.Helper()
	list, err := c.OperatorService().ListSearchAttributes(context.Background(),
		&operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range ota.SearchAttributeNames {
		if typ, ok := list.GetCustomAttributes()[name]; !ok || typ != enums.INDEXED_VALUE_TYPE_KEYWORD {
			t.Errorf("search attribute %s in namespace %s: registered %v, type %s; want Keyword", name, namespace, ok, typ)
		}
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

// quietLogger logs only the client's errors.
func quietLogger() log.Logger {
	return log.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
}
