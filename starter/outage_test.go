package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
)

// TestRolloutWatchRidesOutTemporalOutages follows a rollout with `rollout status --watch`
// on a Temporal server of its own, which it stops and starts again twice while the rollout
// waits for approval: the watch says once per outage that Temporal is unreachable and that it
// answers again, keeps going, and ends with exit code 0 when the approved rollout completes.
func TestRolloutWatchRidesOutTemporalOutages(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cli := os.Getenv(testenv.EnvTemporalCLI)
	if cli == "" {
		var err error
		if cli, err = localstack.EnsureTemporalCLI(ctx, t.Logf); err != nil {
			t.Fatal(err)
		}
	}
	port, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tOpts := localstack.TemporalOptions{CLIPath: cli, DBFile: filepath.Join(dir, "temporal.db"), Port: port, LogLevel: "error"}
	tp, err := localstack.StartTemporal(ctx, tOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Stop() })

	dbURL := testenv.DatabaseURL(t)
	sys, _ := startSystem(t, ctx, tp.Address(), dbURL, 4, "outage")

	servers := []string{"--temporal-address", tp.Address(), "--database-url", dbURL}
	pkg := sys.Package
	start := runCLI(t, ctx, append(servers, "rollout", "start", "--name", "outage", "--type", "firmware", "--version", "1.1",
		"--url", pkg.URL, "--md5", pkg.MD5, "--size", fmt.Sprint(pkg.Size),
		"--prefix", "outage-", "--waves", "50%,100%", "--approve-waves")...)
	start.check(t, 0)

	var out, errOut testenv.Buffer
	watched := make(chan int, 1)
	go func() {
		watched <- run(ctx, append([]string{"starter"}, append(servers, "rollout", "status", "outage", "--watch")...), &out, &errOut)
	}()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), string(ota.RolloutWaitingApproval)) },
		time.Minute, 20*time.Millisecond, "the watch to show the rollout waiting for approval")

	for outage := 1; outage <= 2; outage++ {
		if err := tp.Stop(); err != nil {
			t.Fatal(err)
		}
		require.Eventually(t, func() bool { return strings.Count(errOut.String(), outageNotice) == outage },
			time.Minute, 20*time.Millisecond, fmt.Sprintf("the watch to notice outage %d", outage))
		select {
		case code := <-watched:
			t.Fatalf("the watch ended (code %d) during outage %d:\n%s\n%s", code, outage, out.String(), errOut.String())
		default:
		}
		if tp, err = localstack.StartTemporal(ctx, tOpts); err != nil {
			t.Fatal(err)
		}
		require.Eventually(t, func() bool { return strings.Count(errOut.String(), "Temporal answers again") == outage },
			time.Minute, 20*time.Millisecond, fmt.Sprintf("the watch to see Temporal back after outage %d", outage))
	}

	// The worker too has reconnected: the approval goes through, and the rollout completes.
	require.Eventually(t, func() bool {
		return runCLI(t, ctx, append(servers, "rollout", "approve", "outage")...).code == 0
	}, time.Minute, 20*time.Millisecond, "the approval")
	select {
	case code := <-watched:
		if code != 0 {
			t.Fatalf("the watch ended with code %d, want 0:\n%s\n%s", code, out.String(), errOut.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the watch goes on 2 minutes after the approval:\n%s\n%s", out.String(), errOut.String())
	}
	t.Logf("the watch's messages:\n%s", errOut.String())
	if !strings.Contains(out.String(), "State     "+string(ota.RolloutCompleted)) {
		t.Errorf("the watch did not show the rollout completed:\n%s", out.String())
	}
	if n := strings.Count(errOut.String(), outageNotice); n != 2 {
		t.Errorf("the watch said %q %d times over two outages, want once per outage:\n%s", outageNotice, n, errOut.String())
	}
}

// TestUnreachable tells the server not answering from answers and from a workflow's end.
func TestUnreachable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"unavailable", serviceerror.NewUnavailable("connection refused"), true},
		{"deadline (service)", serviceerror.NewDeadlineExceeded("no answer"), true},
		{"deadline (context)", fmt.Errorf("get result: %w", context.DeadlineExceeded), true},
		{"not found", serviceerror.NewNotFound("workflow not found"), false},
		{"namespace not found", serviceerror.NewNamespaceNotFound("fleet"), false},
		{"workflow failed", temporal.NewApplicationError("rollout failed", "x"), false},
		{"other", errors.New("cannot decode"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unreachable(tt.err); got != tt.want {
				t.Errorf("unreachable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
