package bridge_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/protocol"
)

// TestRunEndsWhenTemporalRefusesTheNamespace runs a bridge whose Temporal namespace does not
// exist: the server refuses every signal. After FatalAfter, Run ends with ErrTemporalRefused
// (so that the program exits non-zero) instead of retrying forever, and the report it could
// not signal stays unacknowledged: a bridge on the right namespace then gets it.
func TestRunEndsWhenTemporalRefusesTheNamespace(t *testing.T) {
	s := newStack(t)
	dev := s.device("fatal")
	s.startWorkflow(dev)
	wrong, err := client.NewClientFromExisting(s.temporal, client.Options{Namespace: "no-such-namespace-" + randomHex(4)})
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	clientID := "bridge-fatal-" + randomHex(4)
	cfg := s.bridgeConfig(clientID)
	cfg.FatalAfter = time.Second
	b, err := bridge.New(cfg, wrong, s.store)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background()) }()
	select {
	case <-b.Ready():
	case err := <-done:
		t.Fatalf("bridge stopped before it was ready: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("bridge not ready after 15 s")
	}

	publish(t, s.connectDevice(dev), protocol.StatusTopic(dev), `{"firmware_ver":"1.1"}`)
	started := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, bridge.ErrTemporalRefused) {
			t.Fatalf("Run: %v, want ErrTemporalRefused", err)
		}
		t.Logf("Run ended after %s: %v", time.Since(started).Round(10*time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("Run goes on 30 s after Temporal started refusing the namespace (FatalAfter 1s)")
	}
	if st := b.Stats(); st.Acked != 0 || st.Signalled != 0 || st.Unfinished != 1 {
		t.Errorf("stats %+v: want the report neither signalled nor acknowledged, left unfinished", st)
	}

	// The next bridge, on the namespace that exists, gets the report from the session.
	next, _ := s.runBridge(s.bridgeConfig(clientID), nil)
	require.Eventually(t, func() bool { return next.Stats().Acked == 1 },
		30*time.Second, 20*time.Millisecond, "the report signalled by the next bridge")
	if got := s.signals(dev).Status; len(got) != 1 || got[0].Status["firmware_ver"] != "1.1" {
		t.Errorf("the workflow received the status signals %+v, want the one report", got)
	}
}
