package main

import (
	"context"
	"strings"

	"github.com/otaflow/otaflow/internal/dev/testenv"
)

// tester is what the helpers need of a test: a *testing.T, or the *assert.CollectT of a
// condition that require.EventuallyWithT retries (whose failures only fail that try).
type tester interface {
	Helper()
	Errorf(format string, args ...any)
	FailNow()
}

// result is what one in-process run of starter produced.
type result struct {
	code   int
	stdout string
	stderr string
}

// runCLI runs starter in-process with args (without the program name) and returns its exit
// code and output.
func runCLI(t tester, ctx context.Context, args ...string) result {
	t.Helper()
	var out, errOut testenv.Buffer
	code := run(ctx, append([]string{"starter"}, args...), &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// check fails the test unless the run ended with code and its stderr holds every one of want.
func (r result) check(t tester, code int, want ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
		t.FailNow()
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not mention %q:\n%s", w, r.stderr)
			t.FailNow()
		}
	}
}
