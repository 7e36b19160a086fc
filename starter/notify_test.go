package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/stretchr/testify/require"
)

// TestRolloutStartNotify: `rollout start --notify URL` with the secret in a file sends the
// rollout's events to URL, signed with it, and never prints the secret; bad --notify input is
// refused before anything starts.
func TestRolloutStartNotify(t *testing.T) {
	ctx := context.Background()
	f := startWorkerWith(t, func(st *store.Store) *activities.Notifications {
		return &activities.Notifications{Events: st, Deliverer: &notify.Deliverer{Store: st,
			Settings: notify.Settings{MinBackoff: 100 * time.Millisecond, Poll: 100 * time.Millisecond}}}
	})
	t.Cleanup(func() { _ = testenv.TemporalClient().TerminateWorkflow(ctx, ota.NotifierWorkflowID, "", "test over") })
	devs := f.registerDevices(t, "ro-notify-", 3)
	f.answer(t, nil)
	const name = "ro-notify"
	endRollout(t, name)

	const secret = "rollout-secret-7f3a"
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []ota.Event
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !notify.Verify([]byte(secret), body, r.Header.Get(notify.HeaderSignature)) {
			t.Errorf("a delivery whose signature does not verify: %s", body)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev ota.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("a delivery that is not an event: %s", body)
		}
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}))
	defer srv.Close()
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }

	t.Setenv(notify.SecretEnv, "")
	cli(rolloutStart(name, "--prefix", "ro-notify-", "--notify", "ftp://example.com/x")...).check(t, exitUsage, "http:// or https://")
	cli(rolloutStart(name, "--prefix", "ro-notify-", "--notify", srv.URL)...).check(t, exitUsage, notify.SecretEnv)
	if _, err := findRollout(ctx, testenv.TemporalClient(), name); err == nil {
		t.Fatal("a rollout started despite bad --notify input")
	}

	r := cli(rolloutStart(name, "--prefix", "ro-notify-", "--notify", srv.URL+"/hook?token=abc", "--notify-secret-file", file, "--wait")...)
	r.check(t, 0)
	if !strings.Contains(r.stdout, "notify    "+srv.URL+"/hook (signed; the secret is not shown)") {
		t.Errorf("rollout start output does not name the receiver:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout+r.stderr, secret) || strings.Contains(r.stdout+r.stderr, "token=abc") {
		t.Errorf("rollout start printed the secret or the URL's query:\n%s\n%s", r.stdout, r.stderr)
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) == len(devs)+2 // each upgrade, the wave, the completion
	}, 30*time.Second, 50*time.Millisecond, "the rollout's events")
	n := map[string]int{}
	for _, ev := range events {
		n[ev.Type]++
		if ev.RolloutName() != name {
			t.Errorf("event of rollout %q: %+v", ev.RolloutName(), ev)
		}
	}
	if n[ota.EventUpgradeFinished] != 3 || n[ota.EventRolloutWaveFinished] != 1 || n[ota.EventRolloutCompleted] != 1 {
		t.Errorf("events by type: %v", n)
	}
}
