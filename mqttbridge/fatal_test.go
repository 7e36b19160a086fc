package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/store"
)

// TestMainFailsWhenTemporalRefusesTheNamespace runs the command on a Temporal namespace that
// does not exist: once a device report cannot be signalled for --fatal-after, the command
// ends with an error naming the namespace (main exits 1 with it) instead of living on.
func TestMainFailsWhenTemporalRefusesTheNamespace(t *testing.T) {
	dbURL := databaseURL(t)
	ctx := context.Background()
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	device, secret := registerDevice(t, ctx, st, "fatal-test")
	br, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Credentials: st,
		Services: map[string]string{"otaflow-bridge": "bridge-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer br.Close()

	done := make(chan error, 1)
	go func() {
		done <- newApp().RunContext(ctx, []string{"mqttbridge",
			"--mqtt-url", "tcp://otaflow-bridge:bridge-secret@" + br.Addr(),
			"--mqtt-client-id", "bridge-fatal-test",
			"--database-url", dbURL,
			"--temporal-address", testenv.TemporalAddress(),
			"--temporal-namespace", "no-such-namespace",
			"--fatal-after", "1s",
		})
	}()
	// The report is stored (PostgreSQL works), then its signal is refused.
	reportUntilRecorded(t, ctx, st, br.URL(), device, secret, "5.0", done)
	select {
	case err := <-done:
		if !errors.Is(err, bridge.ErrTemporalRefused) || !strings.Contains(err.Error(), "no-such-namespace") {
			t.Fatalf("mqttbridge ended with %v, want ErrTemporalRefused naming the namespace", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("mqttbridge still runs 30 s after Temporal refused its namespace (--fatal-after 1s)")
	}
}
