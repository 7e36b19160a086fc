package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// TestMainRunsBridge runs the command against a real broker, PostgreSQL and Temporal: a
// device's status report ends up in the database, and cancelling the context (Ctrl-C) stops
// the command cleanly.
func TestMainRunsBridge(t *testing.T) {
	dbURL, temporalAddr, namespace := databaseURL(t), testenv.TemporalAddress(), testenv.TemporalNamespace()
	ctx := context.Background()
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	device, secret := registerDevice(t, ctx, st, "main-test")
	br, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Credentials: st,
		Services: map[string]string{"otaflow-bridge": "bridge-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer br.Close()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- newApp().RunContext(runCtx, []string{"mqttbridge",
			"--mqtt-url", "tcp://otaflow-bridge:bridge-secret@" + br.Addr(),
			"--mqtt-client-id", "bridge-main-test",
			"--database-url", dbURL,
			"--temporal-address", temporalAddr,
			"--temporal-namespace", namespace,
			"--shards", "2", "--progress-interval", "10s", "--progress-merge", "2s",
		})
	}()

	reportUntilRecorded(t, ctx, st, br.URL(), device, secret, "4.2", done)
	stopApp(t, cancel, done)
}

// reportUntilRecorded makes device report firmware version until PostgreSQL has it (the bridge
// may not have subscribed yet); it fails the test if the bridge (done) stops first.
func reportUntilRecorded(t *testing.T, ctx context.Context, st *store.Store, brokerURL, device, secret, version string, done <-chan error) {
	t.Helper()
	dc := paho.NewClient(paho.NewClientOptions().AddBroker(brokerURL).SetClientID(device).
		SetUsername(device).SetPassword(secret).SetCleanSession(false))
	if tok := dc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect device: %v", tok.Error())
	}
	defer dc.Disconnect(50)
	stopped := false
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		select {
		case err := <-done:
			stopped = true
			t.Errorf("mqttbridge stopped: %v", err)
			return
		default:
		}
		tok := dc.Publish(protocol.StatusTopic(device), 1, false, `{"firmware_ver":"`+version+`"}`)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			c.Errorf("publish: %v", tok.Error())
			return
		}
		d, err := st.GetDevice(ctx, device)
		require.NoError(c, err)
		assert.Equal(c, version, d.Reported["firmware_ver"], "recorded firmware_ver")
	}, 30*time.Second, 50*time.Millisecond, "the status recorded")
	if stopped {
		t.FailNow()
	}
}

// stopApp cancels the running command, as Ctrl-C does, and checks it stops cleanly.
func stopApp(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("mqttbridge after Ctrl-C: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("mqttbridge did not stop within 20 s of Ctrl-C")
	}
}

// registerDevice registers a new device named prefix-<nanoseconds> and returns it with its
// secret.
func registerDevice(t *testing.T, ctx context.Context, st *store.Store, prefix string) (id, secret string) {
	t.Helper()
	id = fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	secret, err := credential.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := credential.Hash(secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddDevice(ctx, id, hash, nil); err != nil {
		t.Fatal(err)
	}
	return id, secret
}

func TestProgressMergeFlag(t *testing.T) {
	for _, tt := range []struct {
		flag, want time.Duration
	}{
		{0, -1}, // off
		{-time.Second, -1},
		{time.Second, time.Second},
		{bridge.DefaultProgressMerge, bridge.DefaultProgressMerge},
	} {
		if got := progressMerge(tt.flag); got != tt.want {
			t.Errorf("--progress-merge %s: Config.ProgressMerge %s, want %s", tt.flag, got, tt.want)
		}
	}
}
