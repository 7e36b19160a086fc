package broker

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/protocol"
)

// TestSessionsSurviveRestart: with a StorePath, a broker that stops and starts again on the
// same file still holds what its persistent sessions held: the command queued for an offline
// device and the device report not yet taken by an offline bridge are delivered after the
// restart, to clients that do not subscribe again, and what was acknowledged is not.
func TestSessionsSurviveRestart(t *testing.T) {
	tests := []struct {
		name string
		// receiver is the persistent client that subscribes and goes offline; sender then
		// publishes topic to it.
		receiver, sender func(secret string) clientConfig
		filter, topic    string
	}{
		{
			name:     "command queued for an offline device",
			receiver: func(secret string) clientConfig { return deviceConfig("dev-p", secret) },
			sender:   func(string) clientConfig { return serviceConfig("worker-p") },
			filter:   protocol.CommandTopic("dev-p"),
			topic:    protocol.CommandTopic("dev-p"),
		},
		{
			name:     "report queued for an offline bridge",
			receiver: func(string) clientConfig { return persistentService("bridge-p", nil) },
			sender:   func(secret string) clientConfig { return deviceConfig("dev-p", secret) },
			filter:   protocol.ProgressFilter,
			topic:    protocol.ProgressTopic("dev-p"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds := newMemCreds()
			secret := creds.add(t, "dev-p")
			path := filepath.Join(t.TempDir(), "sessions.db")
			withStore := func(o *Options) { o.StorePath = path }
			b, _ := startBroker(t, creds, withStore)

			recv := tt.receiver(secret)
			before := newCollector()
			rc := mustDial(t, b, recv)
			subscribe(t, rc, tt.filter, before.handler)
			sender := mustDial(t, b, tt.sender(secret))
			// A message acknowledged before the restart must not come back after it.
			publish(t, sender, tt.topic, 1, "acknowledged")
			if m := before.next(t); m.payload != "acknowledged" {
				t.Fatalf("got %+v before the restart", m)
			}
			rc.Disconnect(50)
			require.Eventually(t, func() bool {
				cl, ok := b.server.Clients.Get(recv.clientID)
				return ok && cl.Closed()
			}, 10*time.Second, 10*time.Millisecond, "broker to see the receiver offline")
			publish(t, sender, tt.topic, 1, "kept")

			addr := b.Addr()
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			b2, _ := startBroker(t, creds, withStore, func(o *Options) { o.Addr = addr })

			got := newCollector()
			recv.defaultHandler = got.handler
			mustDial(t, b2, recv)
			if m := got.next(t); m.topic != tt.topic || m.payload != "kept" {
				t.Fatalf("got %+v after the restart, want the message queued before it", m)
			}
		})
	}
}

// TestClientInfo checks what Client reports of a session: connected with its subscription,
// then disconnected holding a queued command, and nothing for an unknown client.
func TestClientInfo(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-i")
	b, _ := startBroker(t, creds)
	if _, ok := b.Client("dev-i"); ok {
		t.Fatal("a session before the device connected")
	}
	dev := mustDial(t, b, deviceConfig("dev-i", secret))
	subscribe(t, dev, protocol.CommandTopic("dev-i"), nil)
	if info, ok := b.Client("dev-i"); !ok || !info.Connected || info.Held != 0 ||
		len(info.Subscriptions) != 1 || info.Subscriptions[0] != protocol.CommandTopic("dev-i") {
		t.Fatalf("connected device: %+v, %v", info, ok)
	}
	dev.Disconnect(50)
	require.Eventually(t, func() bool {
		info, _ := b.Client("dev-i")
		return !info.Connected
	}, 10*time.Second, 10*time.Millisecond, "broker to see the device offline")
	publish(t, mustDial(t, b, serviceConfig("worker-i")), protocol.CommandTopic("dev-i"), 1, "queued")
	// mochi acknowledges a publish before it routes it.
	require.Eventually(t, func() bool {
		info, _ := b.Client("dev-i")
		return info.Held == 1
	}, 10*time.Second, 10*time.Millisecond, "the command held")
	if info, ok := b.Client("dev-i"); !ok || info.Connected || info.Held != 1 || len(info.Subscriptions) != 1 {
		t.Fatalf("offline device with a queued command: %+v, %v", info, ok)
	}
}

// blockFirst holds the first credentials lookup until release is closed, as a connection
// waits behind thousands of others in a connection storm.
type blockFirst struct {
	*memCreds
	once    sync.Once
	blocked chan struct{}
	release chan struct{}
}

func (c *blockFirst) DeviceCredentials(ctx context.Context, id string) (string, bool, error) {
	first := false
	c.once.Do(func() { first = true })
	if first {
		close(c.blocked)
		<-c.release
	}
	return c.memCreds.DeviceCredentials(ctx, id)
}

// TestStaleConnectDoesNotTakeOver: a device whose first connection waits too long for its
// authentication gives up and connects again; the first connection's authentication, ending
// after the second was accepted, must not take the session over from it.
func TestStaleConnectDoesNotTakeOver(t *testing.T) {
	creds := &blockFirst{memCreds: newMemCreds(), blocked: make(chan struct{}), release: make(chan struct{})}
	secret := creds.add(t, "dev-s")
	b, logs := startBroker(t, creds)

	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(creds.release) }) }
	t.Cleanup(release) // before the broker closes, should the test fail first

	// The first connection sends its CONNECT and, its authentication held, gives up.
	conn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "dev-s", Keepalive: 30,
			UsernameFlag: true, Username: []byte("dev-s"), PasswordFlag: true, Password: []byte(secret)}}
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	<-creds.blocked
	conn.Close()

	// The second connection is accepted and subscribes.
	got := newCollector()
	live := mustDial(t, b, clientConfig{clientID: "dev-s", username: "dev-s", password: secret, defaultHandler: got.handler})
	subscribe(t, live, protocol.CommandTopic("dev-s"), got.handler)

	release()
	// The stale connection is done once the broker has closed it (mochi returned from its
	// establishment, which is where a takeover would have happened): the live connection is
	// the only one left.
	require.Eventually(t, func() bool {
		b.tcp.mu.Lock()
		defer b.tcp.mu.Unlock()
		return len(b.tcp.conns) == 1
	}, 10*time.Second, 10*time.Millisecond, "the stale connection to end")
	if !strings.Contains(logs.String(), "a newer connection of this client was accepted") {
		t.Error("the stale connection was not refused as such")
	}
	if info, _ := b.Client("dev-s"); !info.Connected || len(info.Subscriptions) != 1 || !live.IsConnectionOpen() {
		t.Fatalf("after the stale connection: session %+v, live connection open %v", info, live.IsConnectionOpen())
	}
	publish(t, mustDial(t, b, serviceConfig("worker-s")), protocol.CommandTopic("dev-s"), 1, "command")
	if m := got.next(t); m.payload != "command" {
		t.Fatalf("the live connection got %+v, want the command", m)
	}
}

// TestConcurrentConnectionsOfOneClient connects one device many times at once: session
// establishment is serialized per client ID, every connection's hold is released, and the
// device's session, taken over again and again, still delivers a command to its last
// connection.
func TestConcurrentConnectionsOfOneClient(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-c")
	b, _ := startBroker(t, creds)
	mustDial(t, b, deviceConfig("dev-c", secret)).Disconnect(50) // verification cached

	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if c, err := dial(t, b, deviceConfig("dev-c", secret)); err == nil {
				c.Disconnect(0)
			}
		})
	}
	wg.Wait()
	require.Eventually(t, func() bool {
		b.establish.mu.Lock()
		defer b.establish.mu.Unlock()
		return len(b.establish.held) == 0
	}, 10*time.Second, 10*time.Millisecond, "every hold released")

	got := newCollector()
	last := mustDial(t, b, clientConfig{clientID: "dev-c", username: "dev-c", password: secret, defaultHandler: got.handler})
	subscribe(t, last, protocol.CommandTopic("dev-c"), got.handler)
	publish(t, mustDial(t, b, serviceConfig("worker-c")), protocol.CommandTopic("dev-c"), 1, "command")
	if m := got.next(t); m.payload != "command" {
		t.Fatalf("got %+v, want the command", m)
	}
}
