package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

const (
	bridgeUser = "otaflow-bridge"
	bridgePass = "bridge-password"
	workerUser = "otaflow-worker"
	workerPass = "worker-password"
)

// memCreds is an in-memory Credentials source.
type memCreds struct {
	mu      sync.Mutex
	devices map[string]memDevice
	err     error
}

type memDevice struct {
	hash     string
	disabled bool
}

func newMemCreds() *memCreds { return &memCreds{devices: map[string]memDevice{}} }

func (m *memCreds) DeviceCredentials(_ context.Context, id string) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return "", false, m.err
	}
	d, ok := m.devices[id]
	if !ok {
		return "", false, fmt.Errorf("device %s: %w", id, store.ErrNotFound)
	}
	return d.hash, d.disabled, nil
}

func (m *memCreds) DisabledAmong(_ context.Context, ids []string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, m.err
	}
	var disabled []string
	for _, id := range ids {
		if m.devices[id].disabled {
			disabled = append(disabled, id)
		}
	}
	return disabled, nil
}

// add registers a device with a new secret and returns the secret.
func (m *memCreds) add(t testing.TB, id string) string {
	t.Helper()
	secret, err := credential.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	m.setSecret(t, id, secret)
	return secret
}

func (m *memCreds) setSecret(t testing.TB, id, secret string) {
	t.Helper()
	hash, err := credential.Hash(secret)
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.devices[id]
	d.hash = hash
	m.devices[id] = d
}

func (m *memCreds) setDisabled(id string, disabled bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.devices[id]
	d.disabled = disabled
	m.devices[id] = d
}

func (m *memCreds) setErr(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.err = err
}

// startBroker starts a broker on a free port with the test services, closed at the test's end.
func startBroker(t testing.TB, creds Credentials, configure ...func(*Options)) (*Broker, *testenv.Buffer) {
	t.Helper()
	logs := &testenv.Buffer{}
	opts := Options{
		Addr:        "127.0.0.1:0",
		Credentials: creds,
		Services:    map[string]string{bridgeUser: bridgePass, workerUser: workerPass},
		Logger:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	for _, f := range configure {
		f(&opts)
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	return b, logs
}

type clientConfig struct {
	clientID, username, password string
	clean                        bool
	onLost                       func()
	defaultHandler               paho.MessageHandler
}

// dial connects one paho client (no automatic reconnection) and disconnects it at the end.
func dial(t testing.TB, b *Broker, c clientConfig) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(b.URL()).
		SetClientID(c.clientID).SetUsername(c.username).SetPassword(c.password).
		SetCleanSession(c.clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetOrderMatters(false)
	if c.onLost != nil {
		opts.SetConnectionLostHandler(func(paho.Client, error) { c.onLost() })
	}
	if c.defaultHandler != nil {
		opts.SetDefaultPublishHandler(c.defaultHandler)
	}
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { cl.Disconnect(50) })
	return cl, nil
}

func mustDial(t testing.TB, b *Broker, c clientConfig) paho.Client {
	t.Helper()
	cl, err := dial(t, b, c)
	if err != nil {
		t.Fatalf("connect %s: %v", c.clientID, err)
	}
	return cl
}

func deviceConfig(id, secret string) clientConfig {
	return clientConfig{clientID: id, username: id, password: secret}
}

func serviceConfig(clientID string) clientConfig {
	return clientConfig{clientID: clientID, username: bridgeUser, password: bridgePass, clean: true}
}

// message is one received MQTT message.
type message struct {
	topic   string
	payload string
}

// collector gathers the messages a client receives.
type collector struct {
	ch chan message
}

func newCollector() *collector { return &collector{ch: make(chan message, 100)} }

func (c *collector) handler(_ paho.Client, m paho.Message) {
	c.ch <- message{m.Topic(), string(m.Payload())}
}

// next waits for the next message.
func (c *collector) next(t *testing.T) message {
	t.Helper()
	select {
	case m := <-c.ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
		return message{}
	}
}

func subscribe(t testing.TB, cl paho.Client, filter string, h paho.MessageHandler) byte {
	t.Helper()
	tok := cl.Subscribe(filter, 1, h)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	// paho keys the result by the filter without a "$share/group/" prefix; there is one entry.
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		return code
	}
	t.Fatalf("subscribe %s: no result", filter)
	return 0
}

func publish(t *testing.T, cl paho.Client, topic string, qos byte, payload string) {
	t.Helper()
	tok := cl.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("publish to %s timed out", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
}

func TestConnect(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-1")
	disabledSecret := creds.add(t, "dev-disabled")
	creds.setDisabled("dev-disabled", true)
	bridgeNamedSecret := creds.add(t, bridgeUser)
	creds.devices["dev-bad-hash"] = memDevice{hash: "not-a-hash"}
	b, logs := startBroker(t, creds)

	tests := []struct {
		name   string
		cfg    clientConfig
		ok     bool
		reason string
	}{
		{"device with right secret", deviceConfig("dev-1", secret), true, ""},
		{"device with wrong secret", deviceConfig("dev-1", secret[:63]+"x"), false, "wrong secret"},
		{"device with empty secret", deviceConfig("dev-1", ""), false, "no password"},
		{"unknown device", deviceConfig("dev-unknown", secret), false, "unknown device"},
		{"disabled device", deviceConfig("dev-disabled", disabledSecret), false, "device disabled"},
		{"client ID differs from username", clientConfig{clientID: "dev-2", username: "dev-1", password: secret},
			false, "client ID differs from username"},
		{"invalid device ID", deviceConfig("dev/1", secret), false, "invalid device ID"},
		{"no username", clientConfig{clientID: "dev-1"}, false, "no username"},
		{"service", serviceConfig("bridge-1"), true, ""},
		{"other service", clientConfig{clientID: "worker-1", username: workerUser, password: workerPass}, true, ""},
		{"service with wrong password", clientConfig{clientID: "bridge-2", username: bridgeUser, password: workerPass},
			false, "wrong service password"},
		{"device named like a service", deviceConfig(bridgeUser, bridgeNamedSecret), false, "wrong service password"},
		{"malformed registered hash", deviceConfig("dev-bad-hash", secret), false, "registered secret hash is malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := dial(t, b, tt.cfg)
			if tt.ok {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				cl.Disconnect(50)
				return
			}
			if err == nil {
				t.Fatal("connected, want refused")
			}
			if !strings.Contains(err.Error(), "not Authorized") && !strings.Contains(err.Error(), "bad user name or password") {
				t.Errorf("error = %v, want a bad credentials refusal", err)
			}
			require.Eventually(t, func() bool {
				return strings.Contains(logs.String(), "reason=\""+tt.reason)
			}, 10*time.Second, 10*time.Millisecond, "refusal logged with reason "+tt.reason)
		})
	}
	// Secrets never reach the logs.
	for _, s := range []string{secret, disabledSecret, bridgePass, workerPass, secret[:63] + "x"} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("logs contain a secret")
		}
	}
}

func TestConnectLookupError(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-1")
	b, logs := startBroker(t, creds)
	creds.setErr(errors.New("database is down"))
	_, err := dial(t, b, deviceConfig("dev-1", secret))
	if err == nil {
		t.Fatal("connected while the credentials source fails")
	}
	if !errors.Is(err, packets.ErrorRefusedServerUnavailable) {
		t.Errorf("error = %v, want server unavailable (the client should retry)", err)
	}
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "database is down") },
		10*time.Second, 10*time.Millisecond, "lookup failure logged")
	creds.setErr(nil)
	mustDial(t, b, deviceConfig("dev-1", secret))
}

func TestVerificationCache(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-1")
	b, _ := startBroker(t, creds)

	for range 3 {
		mustDial(t, b, deviceConfig("dev-1", secret)).Disconnect(50)
	}
	if n := b.hook.verifications.Load(); n != 1 {
		t.Errorf("3 connections with the same secret ran %d argon2 verifications, want 1", n)
	}
	if _, err := dial(t, b, deviceConfig("dev-1", secret+"0")); err == nil {
		t.Error("wrong secret accepted after a cached success")
	}

	// A changed secret invalidates the cached verification.
	newSecret, err := credential.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	creds.setSecret(t, "dev-1", newSecret)
	if _, err := dial(t, b, deviceConfig("dev-1", secret)); err == nil {
		t.Error("old secret accepted after the secret changed")
	}
	mustDial(t, b, deviceConfig("dev-1", newSecret)).Disconnect(50)

	// Simultaneous connections with one secret share one verification.
	secret2 := creds.add(t, "dev-2")
	before := b.hook.verifications.Load()
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			if cl, err := dial(t, b, deviceConfig("dev-2", secret2)); err == nil {
				cl.Disconnect(0)
			}
		})
	}
	wg.Wait()
	if n := b.hook.verifications.Load() - before; n != 1 {
		t.Errorf("5 simultaneous connections ran %d verifications, want 1", n)
	}

	// Disabling takes effect despite the cache.
	creds.setDisabled("dev-1", true)
	if _, err := dial(t, b, deviceConfig("dev-1", newSecret)); err == nil {
		t.Error("disabled device connected with a cached secret")
	}
}

func TestDeviceSubscribeACL(t *testing.T) {
	creds := newMemCreds()
	secretA := creds.add(t, "dev-a")
	secretB := creds.add(t, "dev-b")
	b, logs := startBroker(t, creds)

	msgsA := newCollector()
	a := mustDial(t, b, clientConfig{clientID: "dev-a", username: "dev-a", password: secretA, defaultHandler: msgsA.handler})
	tests := []struct {
		filter string
		want   byte
	}{
		{protocol.CommandTopic("dev-a"), 1},
		{protocol.CancelTopic("dev-a"), 1},
		{protocol.CommandTopic("dev-b"), 0x80},
		{protocol.CancelTopic("dev-b"), 0x80},
		{protocol.TopicPrefix + "+/" + protocol.KindCancel, 0x80},
		{protocol.TopicPrefix + "dev-a/ota/+", 0x80},
		{protocol.TopicPrefix + "dev-a/ota/#", 0x80},
		{"$share/" + protocol.SharedGroup + "/" + protocol.CancelTopic("dev-a"), 0x80},
		{protocol.TopicPrefix + "+/" + protocol.KindCommand, 0x80},
		{protocol.TopicPrefix + "dev-a/#", 0x80},
		{"#", 0x80},
		{protocol.ProgressTopic("dev-a"), 0x80},
		{protocol.StatusTopic("dev-b"), 0x80},
		{protocol.SharedFilter(protocol.ProgressFilter), 0x80},
		{"$share/" + protocol.SharedGroup + "/" + protocol.CommandTopic("dev-b"), 0x80},
	}
	for _, tt := range tests {
		t.Run(tt.filter, func(t *testing.T) {
			if got := subscribe(t, a, tt.filter, msgsA.handler); got != tt.want {
				t.Errorf("SUBACK code = %#x, want %#x", got, tt.want)
			}
		})
	}
	if !strings.Contains(logs.String(), "a device may subscribe only to its own command and cancel topics") {
		t.Error("subscription refusals are not logged with their reason")
	}
	if !a.IsConnected() {
		t.Fatal("a refused subscription disconnected the device")
	}

	// A service's command to B reaches B, never A; A's own command reaches A.
	msgsB := newCollector()
	devB := mustDial(t, b, deviceConfig("dev-b", secretB))
	subscribe(t, devB, protocol.CommandTopic("dev-b"), msgsB.handler)
	svc := mustDial(t, b, serviceConfig("worker-1"))
	publish(t, svc, protocol.CommandTopic("dev-b"), 1, "for-b")
	if m := msgsB.next(t); m.payload != "for-b" {
		t.Fatalf("B got %q", m.payload)
	}
	publish(t, svc, protocol.CommandTopic("dev-a"), 1, "for-a")
	if m := msgsA.next(t); m.topic != protocol.CommandTopic("dev-a") || m.payload != "for-a" {
		t.Fatalf("A got %q on %s, want its own command first (B's command leaked?)", m.payload, m.topic)
	}

	// The worker's cancel to B reaches B, never A; A's own cancel reaches A.
	subscribe(t, devB, protocol.CancelTopic("dev-b"), msgsB.handler)
	worker := mustDial(t, b, clientConfig{clientID: "worker-2", username: workerUser, password: workerPass, clean: true})
	publish(t, worker, protocol.CancelTopic("dev-b"), 1, `{"id":"b1"}`)
	if m := msgsB.next(t); m.topic != protocol.CancelTopic("dev-b") || m.payload != `{"id":"b1"}` {
		t.Fatalf("B got %q on %s, want its cancel", m.payload, m.topic)
	}
	publish(t, worker, protocol.CancelTopic("dev-a"), 1, `{"id":"a1"}`)
	// paho hands A's messages to the handler of every filter A asked for that matches, the
	// refused ones too: "for-a" comes several times. Nothing of B's may come.
	for {
		m := msgsA.next(t)
		if m.topic == protocol.CancelTopic("dev-a") && m.payload == `{"id":"a1"}` {
			break
		}
		if m.topic != protocol.CommandTopic("dev-a") || m.payload != "for-a" {
			t.Fatalf("A got %q on %s (B's cancel leaked?)", m.payload, m.topic)
		}
	}
}

func TestDevicePublishACL(t *testing.T) {
	creds := newMemCreds()
	secretA := creds.add(t, "dev-a")
	secretB := creds.add(t, "dev-b")
	b, logs := startBroker(t, creds)

	seen := newCollector()
	svc := mustDial(t, b, serviceConfig("bridge-1"))
	subscribe(t, svc, "#", seen.handler)
	devB := mustDial(t, b, deviceConfig("dev-b", secretB))

	tests := []struct {
		name       string
		topic      string
		qos        byte
		disconnect bool
	}{
		{"B's progress", protocol.ProgressTopic("dev-b"), 1, true},
		{"B's status", protocol.StatusTopic("dev-b"), 1, true},
		{"own command topic", protocol.CommandTopic("dev-a"), 1, true},
		{"B's command topic", protocol.CommandTopic("dev-b"), 1, true},
		{"own cancel topic", protocol.CancelTopic("dev-a"), 1, true},
		{"B's cancel topic", protocol.CancelTopic("dev-b"), 1, true},
		{"another topic", "otaflow/anything", 1, true},
		{"B's progress at QoS 0", protocol.ProgressTopic("dev-b"), 0, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lost := make(chan struct{})
			var once sync.Once
			a := mustDial(t, b, clientConfig{clientID: "dev-a", username: "dev-a", password: secretA,
				onLost: func() { once.Do(func() { close(lost) }) }})
			bad := fmt.Sprintf("forged-%d", i)
			tok := a.Publish(tt.topic, tt.qos, false, bad) // a QoS 1 forgery is never acknowledged
			if !tt.disconnect && (!tok.WaitTimeout(10*time.Second) || tok.Error() != nil) {
				t.Fatalf("QoS 0 publish not sent: %v", tok.Error())
			}
			if tt.disconnect {
				select {
				case <-lost:
				case <-time.After(10 * time.Second):
					t.Fatal("device not disconnected after publishing outside its topics")
				}
			}
			// Sentinel: B's own report arrives; the forgery must not have arrived before it.
			sentinel := fmt.Sprintf("sentinel-%d", i)
			publish(t, devB, protocol.ProgressTopic("dev-b"), 1, sentinel)
			for {
				m := seen.next(t)
				if m.payload == bad {
					t.Fatalf("service received the forged message on %s", m.topic)
				}
				if m.payload == sentinel {
					break
				}
			}
			if !tt.disconnect && !a.IsConnected() {
				t.Error("QoS 0 forgery disconnected the device; mochi drops it silently")
			}
			a.Disconnect(50)
		})
	}
	if !strings.Contains(logs.String(), "a device may publish only to its own progress and status topics") {
		t.Error("publish refusals are not logged with their reason")
	}
}

func TestServiceReceivesDeviceReports(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-a")
	b, _ := startBroker(t, creds)

	// Two bridges share the load through the shared subscription group.
	got := newCollector()
	for _, id := range []string{"bridge-1", "bridge-2"} {
		svc := mustDial(t, b, serviceConfig(id))
		subscribe(t, svc, protocol.SharedFilter(protocol.ProgressFilter), got.handler)
		subscribe(t, svc, protocol.SharedFilter(protocol.StatusFilter), got.handler)
	}
	dev := mustDial(t, b, deviceConfig("dev-a", secret))
	progress := `{"id":"c1","type":"firmware","version":"1.1","progress":70,"desc":"downloading"}`
	status := `{"firmware_ver":"1.1"}`
	publish(t, dev, protocol.ProgressTopic("dev-a"), 1, progress)
	publish(t, dev, protocol.StatusTopic("dev-a"), 1, status)

	want := map[message]bool{{protocol.ProgressTopic("dev-a"), progress}: true, {protocol.StatusTopic("dev-a"), status}: true}
	for range 2 {
		m := got.next(t)
		if !want[m] {
			t.Fatalf("unexpected message %+v", m)
		}
		delete(want, m)
	}
	select {
	case m := <-got.ch:
		t.Fatalf("message delivered twice to the shared group: %+v", m)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestOfflineCommandDelivered(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-a")
	b, _ := startBroker(t, creds)

	dev := mustDial(t, b, deviceConfig("dev-a", secret))
	subscribe(t, dev, protocol.CommandTopic("dev-a"), func(paho.Client, paho.Message) {})
	dev.Disconnect(50)
	require.Eventually(t, func() bool {
		cl, ok := b.server.Clients.Get("dev-a")
		return ok && cl.Closed()
	}, 10*time.Second, 10*time.Millisecond, "broker to see the device offline")

	svc := mustDial(t, b, serviceConfig("worker-1"))
	publish(t, svc, protocol.CommandTopic("dev-a"), 1, "queued-command")

	// A rebooted device: a new client on the persistent session; the queued command arrives
	// before it even subscribes again.
	got := newCollector()
	mustDial(t, b, clientConfig{clientID: "dev-a", username: "dev-a", password: secret, defaultHandler: got.handler})
	if m := got.next(t); m.topic != protocol.CommandTopic("dev-a") || m.payload != "queued-command" {
		t.Fatalf("got %+v, want the queued command", m)
	}
}

func TestSessionBelongsToItsUser(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-a")
	b, logs := startBroker(t, creds)

	mustDial(t, b, deviceConfig("dev-a", secret)).Disconnect(50)
	// A service may not take over a device's persisted session (and its queued commands)...
	if _, err := dial(t, b, clientConfig{clientID: "dev-a", username: bridgeUser, password: bridgePass}); err == nil {
		t.Error("service took over a device's session")
	}
	// ...nor a device a service's.
	mustDial(t, b, serviceConfig("svc-session"))
	creds.add(t, "svc-session")
	if _, err := dial(t, b, deviceConfig("svc-session", secret)); err == nil {
		t.Error("device took over a service's session")
	}
	if !strings.Contains(logs.String(), "client ID belongs to another user's session") {
		t.Error("session refusal not logged")
	}
}

func TestMaxPacketSize(t *testing.T) {
	creds := newMemCreds()
	secret := creds.add(t, "dev-a")
	b, _ := startBroker(t, creds, func(o *Options) { o.MaxPacketSize = 8 * 1024 })

	seen := newCollector()
	svc := mustDial(t, b, serviceConfig("bridge-1"))
	subscribe(t, svc, protocol.ProgressFilter, seen.handler)
	lost := make(chan struct{})
	var once sync.Once
	dev := mustDial(t, b, clientConfig{clientID: "dev-a", username: "dev-a", password: secret,
		onLost: func() { once.Do(func() { close(lost) }) }})
	dev.Publish(protocol.ProgressTopic("dev-a"), 1, false, strings.Repeat("x", 16*1024))
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("oversized packet did not disconnect the device")
	}
	dev = mustDial(t, b, deviceConfig("dev-a", secret))
	publish(t, dev, protocol.ProgressTopic("dev-a"), 1, "small")
	if m := seen.next(t); m.payload != "small" {
		t.Fatalf("service got a %d-byte message first, want the small one", len(m.payload))
	}
}

func TestLifecycle(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"no credentials", Options{}, "Credentials is required"},
		{"empty service password", Options{Credentials: newMemCreds(), Services: map[string]string{"svc": ""}}, "non-empty"},
		{"bad address", Options{Credentials: newMemCreds(), Addr: "localhost"}, "listen address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v, want %q", err, tt.wantErr)
			}
		})
	}

	t.Run("address in use", func(t *testing.T) {
		b1, _ := startBroker(t, newMemCreds())
		b2, err := New(Options{Addr: b1.Addr(), Credentials: newMemCreds(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if err := b2.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "listen on") {
			t.Fatalf("Start on a busy address: error = %v", err)
		}
		if err := b2.Close(); err != nil {
			t.Errorf("Close after a failed Start: %v", err)
		}
	})

	t.Run("free port and close", func(t *testing.T) {
		b, err := New(Options{Addr: ":0", Credentials: newMemCreds(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		_, port, err := net.SplitHostPort(b.Addr())
		if err != nil || port == "0" {
			t.Fatalf("Addr() = %q, want the real port", b.Addr())
		}
		if !strings.HasPrefix(b.URL(), "tcp://127.0.0.1:") {
			t.Errorf("URL() = %q", b.URL())
		}
		conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL(), "tcp://"))
		if err != nil {
			t.Fatalf("dial %s: %v", b.URL(), err)
		}
		conn.Close()
		cancel() // ctx ending closes the broker
		require.Eventually(t, func() bool {
			c, err := net.Dial("tcp", strings.TrimPrefix(b.URL(), "tcp://"))
			if err == nil {
				c.Close()
			}
			return err != nil
		}, 10*time.Second, 10*time.Millisecond, "listener closed")
		if err := b.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if err := b.Start(t.Context()); !errors.Is(err, ErrClosed) {
			t.Errorf("Start after Close = %v, want ErrClosed", err)
		}
	})
}

func TestHalfOpenConnections(t *testing.T) {
	b, _ := startBroker(t, newMemCreds(), func(o *Options) { o.ConnectTimeout = 200 * time.Millisecond })
	addr := strings.TrimPrefix(b.URL(), "tcp://")

	// A connection that never sends CONNECT is dropped after ConnectTimeout.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	_ = idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatal("read data from a connection that sent no CONNECT")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("broker kept a connection that sent no CONNECT")
	}

	// Close does not wait for connections still in their handshake.
	b2, _ := startBroker(t, newMemCreds())
	stuck, err := net.Dial("tcp", strings.TrimPrefix(b2.URL(), "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	if _, err := stuck.Write([]byte{0x10}); err != nil { // the first byte of a CONNECT, then nothing
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b2.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for a connection stuck in its handshake")
	}
}

func TestDisabledDeviceDisconnected(t *testing.T) {
	creds := newMemCreds()
	secret1, secret2 := creds.add(t, "dev-1"), creds.add(t, "dev-2")
	b, logs := startBroker(t, creds, func(o *Options) {
		o.Disabled = creds
		o.DisabledInterval = 20 * time.Millisecond
	})
	lost := make(chan struct{}, 1)
	cfg := deviceConfig("dev-1", secret1)
	cfg.onLost = func() { lost <- struct{}{} }
	mustDial(t, b, cfg)
	mustDial(t, b, deviceConfig("dev-2", secret2))
	mustDial(t, b, serviceConfig(bridgeUser))

	// A lookup that fails closes nothing, and is logged once.
	creds.setErr(errors.New("database down"))
	creds.setDisabled("dev-1", true)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "cannot look up disabled devices")
	}, 10*time.Second, 10*time.Millisecond, "the failed lookup to be logged")
	if info, _ := b.Client("dev-1"); !info.Connected {
		t.Fatal("dev-1 was disconnected though the lookup failed")
	}
	creds.setErr(nil)
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the disabled device is still connected after 10s")
	}
	// The poll logs the recovery once it has closed the connection.
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "looking up disabled devices works again")
	}, 10*time.Second, 10*time.Millisecond, "the recovery to be logged")
	if n := strings.Count(logs.String(), "cannot look up disabled devices"); n != 1 {
		t.Errorf("the failed lookup was logged %d times, want once", n)
	}
	if !strings.Contains(logs.String(), `msg="connection closed" component=broker device=dev-1`) {
		t.Errorf("logs do not tell:\n%s", logs.String())
	}
	for _, id := range []string{"dev-2", bridgeUser} {
		if info, ok := b.Client(id); !ok || !info.Connected {
			t.Errorf("%s was disconnected too", id)
		}
	}
	// dev-1's session stays, but it cannot connect while disabled...
	if _, ok := b.Client("dev-1"); !ok {
		t.Error("dev-1's session is gone")
	}
	if _, err := dial(t, b, deviceConfig("dev-1", secret1)); err == nil {
		t.Fatal("the disabled device connected again")
	}
	// ...and can once enabled.
	creds.setDisabled("dev-1", false)
	mustDial(t, b, deviceConfig("dev-1", secret1))
}
