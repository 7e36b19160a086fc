package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/testenv"
)

// result is what one in-process run of starter produced.
type result struct {
	code   int
	stdout string
	stderr string
}

// runCLI runs starter in-process with args (without the program name) and returns its exit
// code and output.
func runCLI(t *testing.T, ctx context.Context, args ...string) result {
	t.Helper()
	var out, errOut testenv.Buffer
	code := run(ctx, append([]string{"starter"}, args...), &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// check fails the test unless the run ended with code and its stderr holds every one of want.
func (r result) check(t *testing.T, code int, want ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Fatalf("stderr does not mention %q:\n%s", w, r.stderr)
		}
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
