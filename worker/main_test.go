package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

// workerProcess is the worker program running as a process of its own, on the test servers.
type workerProcess struct {
	cmd    *exec.Cmd
	output *testenv.Buffer
	done   chan error
}

// startWorker builds the worker and runs it on a namespace of its own (created here), the
// test PostgreSQL server and a broker of its own, and waits until it polls its task queue.
func startWorker(t *testing.T, namespace string) *workerProcess {
	t.Helper()
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "worker")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	c := testenv.TemporalClient()
	if _, err := c.WorkflowService().RegisterNamespace(ctx, &workflowservice.RegisterNamespaceRequest{
		Namespace: namespace, WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	dbURL := testenv.DatabaseURL(t)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	br, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Credentials: st, Services: map[string]string{"otaflow-worker": "worker-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })

	w := &workerProcess{output: &testenv.Buffer{}, done: make(chan error, 1)}
	w.cmd = exec.Command(bin)
	w.cmd.Env = append(os.Environ(),
		"TEMPORAL_ADDRESS="+testenv.TemporalAddress(), "TEMPORAL_NAMESPACE="+namespace,
		"DATABASE_URL="+dbURL, "MQTT_URL=tcp://otaflow-worker:worker-secret@"+br.Addr())
	w.cmd.Stdout, w.cmd.Stderr = w.output, w.output
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.done <- w.cmd.Wait() }()
	t.Cleanup(func() {
		_ = w.cmd.Process.Kill()
		<-w.done
	})

	// Polling: the task queue has a poller of this namespace.
	nc, err := client.NewClientFromExisting(c, client.Options{Namespace: namespace})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	exited := false
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		select {
		case err := <-w.done:
			exited = true
			t.Errorf("the worker exited before polling: %v\n%s", err, w.output.String())
			return
		default:
		}
		resp, err := nc.DescribeTaskQueue(ctx, ota.TaskQueue, enums.TASK_QUEUE_TYPE_WORKFLOW)
		require.NoError(c, err)
		assert.NotEmpty(c, resp.GetPollers(), "pollers of the task queue; the worker's output:\n%s", w.output.String())
	}, time.Minute, 100*time.Millisecond, "the worker to poll its task queue")
	if exited {
		t.FailNow()
	}
	return w
}

// exitCode waits up to timeout for the process to end and returns its exit code.
func (w *workerProcess) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-w.done:
		w.done <- err // for the cleanup
		var exit *exec.ExitError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &exit):
			return exit.ExitCode()
		default:
			t.Fatalf("wait for the worker: %v", err)
		}
	case <-time.After(timeout):
		t.Fatalf("the worker still runs after %s; its output:\n%s", timeout, w.output.String())
	}
	return -1
}

// TestWorkerExitsOnFatalError deletes the worker's namespace under it: the Temporal server then
// refuses its polls (NamespaceNotFound), which the SDK holds fatal once they have gone on for
// its grace period (2 minutes). The worker process must then exit non-zero, saying why, for a
// supervisor to see and restart it, instead of living on without polling.
func TestWorkerExitsOnFatalError(t *testing.T) {
	t.Parallel()
	ns := fmt.Sprintf("worker-fatal-%d", time.Now().UnixNano())
	w := startWorker(t, ns)
	if _, err := testenv.TemporalClient().OperatorService().DeleteNamespace(context.Background(),
		&operatorservice.DeleteNamespaceRequest{Namespace: ns}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	code := w.exitCode(t, 4*time.Minute)
	t.Logf("the worker exited with code %d %s after its namespace was deleted", code, time.Since(deleted).Round(time.Second))
	out := w.output.String()
	if code == 0 {
		t.Fatalf("the worker exited 0 after a fatal error; its output:\n%s", out)
	}
	if !strings.Contains(out, "worker: worker stopped:") || !strings.Contains(out, ns) {
		t.Errorf("the worker's last words do not say it stopped on its namespace %s:\n%s", ns, lastLines(out, 5))
	}
}

// TestWorkerExitsZeroOnSIGTERM: a stop asked for is not an error.
func TestWorkerExitsZeroOnSIGTERM(t *testing.T) {
	t.Parallel()
	w := startWorker(t, fmt.Sprintf("worker-sigterm-%d", time.Now().UnixNano()))
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w.exitCode(t, 30*time.Second); code != 0 {
		t.Fatalf("the worker exited %d after SIGTERM, want 0; its output:\n%s", code, w.output.String())
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestWorkerRefusesBadPackagePolicy: a package policy that cannot work stops the worker at
// start, before it dials anything, saying why.
func TestWorkerRefusesBadPackagePolicy(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "worker")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	withPrivate := t.TempDir()
	if _, err := pkgsig.WriteKeyPair(withPrivate, "release-1"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"signatures required without keys", []string{"--require-signatures"}, nil,
			"package policy: signatures are required but no trusted keys are configured: give the trusted keys directory too"},
		{"signatures required by the environment", nil, []string{pkgsig.EnvRequireSignatures + "=true"},
			"signatures are required but no trusted keys are configured"},
		{"a private key among the trusted keys", []string{"--trusted-keys", withPrivate}, nil, "looks like a private key"},
		{"no such directory", nil, []string{pkgsig.EnvTrustedKeys + "=" + filepath.Join(withPrivate, "none")}, "package policy: trusted keys: open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Nothing listens at these addresses: a worker that dialled first would fail otherwise.
			cmd := exec.Command(bin, append([]string{"--database-url", "postgres://otaflow@127.0.0.1:1/otaflow",
				"--mqtt-url", "tcp://127.0.0.1:1", "--temporal-address", "127.0.0.1:1"}, tt.args...)...)
			cmd.Env = append(os.Environ(), tt.env...)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), tt.want) {
				t.Fatalf("worker %v: %v\n%s\nwant exit 1 saying %q", tt.args, err, out, tt.want)
			}
		})
	}
}
