package brokeraccounts_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

// Service passwords of the tests.
const (
	workerPassword = "worker-pw"
	bridgePassword = "bridge-pw"
)

// env is one test's production broker, provisioned, with its administrator connected, and
// its device registry.
type env struct {
	t     *testing.T
	ctx   context.Context
	m     *localstack.Mosquitto
	admin *brokeraccounts.Admin
	reg   *store.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, m: testenv.Mosquitto(t)}
	var err error
	if e.reg, err = store.Open(ctx, testenv.DatabaseURL(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.reg.Close)
	if e.admin, err = brokeraccounts.Dial(ctx, e.m.AdminURL(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.admin.Close)
	if _, err := brokeraccounts.Provision(ctx, e.admin, e.setup()); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) setup() brokeraccounts.Setup {
	return brokeraccounts.Setup{WorkerPassword: workerPassword, BridgePassword: bridgePassword, Registry: e.reg}
}

// device registers a device with a new secret and creates its account, as `starter devices
// add` does, and returns the secret.
func (e *env) device(id string) string {
	e.t.Helper()
	secret := e.register(id)
	if err := e.admin.AddDevice(e.ctx, id, secret); err != nil {
		e.t.Fatal(err)
	}
	return secret
}

// register registers a device without a broker account, as before the production broker.
func (e *env) register(id string) string {
	e.t.Helper()
	secret, err := credential.NewSecret()
	if err != nil {
		e.t.Fatal(err)
	}
	hash, err := credential.Hash(secret)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.reg.AddDevice(e.ctx, id, hash, nil); err != nil {
		e.t.Fatal(err)
	}
	return secret
}

// dial connects with MQTT 3.1.1 and a persistent session; it returns the broker's refusal.
func (e *env) dial(clientID, username, password string, onLost func()) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker("tcp://" + e.m.Addr()).SetClientID(clientID).
		SetUsername(username).SetPassword(password).SetCleanSession(false).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(true)
	if onLost != nil {
		opts.SetConnectionLostHandler(func(paho.Client, error) { onLost() })
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("no CONNACK within 10 s")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

func (e *env) mustDial(clientID, username, password string) paho.Client {
	e.t.Helper()
	c, err := e.dial(clientID, username, password, nil)
	if err != nil {
		e.t.Fatalf("connect %s as %s: %v", clientID, username, err)
	}
	return c
}

// refused asserts that the broker refuses the login as not authorised.
func (e *env) refused(what, clientID, username, password string) {
	e.t.Helper()
	_, err := e.dial(clientID, username, password, nil)
	if !errors.Is(err, packets.ErrorRefusedNotAuthorised) && !errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
		e.t.Errorf("%s: connect answered %v, want refused as not authorised", what, err)
	}
}

// messages subscribes c to filter and returns the channel of what it receives, with the SUBACK
// code.
func messages(t *testing.T, c paho.Client, filter string) (<-chan paho.Message, byte) {
	t.Helper()
	ch := make(chan paho.Message, 100)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { ch <- m })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	// One filter, one code (paho keys a shared subscription's code by its topic alone).
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		return ch, code
	}
	t.Fatalf("subscribe %s: no code in the SUBACK", filter)
	return nil, 0
}

func publish(t *testing.T, c paho.Client, topic, payload string) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// next returns the next message of ch, failing after 10 s.
func next(t *testing.T, ch <-chan paho.Message, what string) paho.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no message: %s", what)
		return nil
	}
}

// TestDeviceLogins: only a registered, enabled device with an account logs in, with its own
// secret and its own client ID. Every refusal leaves the device's own connection alone.
func TestDeviceLogins(t *testing.T) {
	e := newEnv(t)
	secretA, secretB := e.device("dev-a"), e.device("dev-b")
	secretOff := e.device("dev-off")
	legacy := e.register("dev-legacy")
	if err := e.admin.SetDeviceDisabled(e.ctx, "dev-off", true); err != nil {
		t.Fatal(err)
	}

	lost := make(chan struct{})
	if _, err := e.dial("dev-a", "dev-a", secretA, func() { close(lost) }); err != nil {
		t.Fatalf("device with its own credentials and client ID: %v", err)
	}
	e.refused("another device's client ID", "dev-a", "dev-b", secretB)
	e.refused("another device's client ID, with a suffix", "dev-a-2", "dev-b", secretB)
	e.refused("a device with a client ID of its choosing", "anything", "dev-b", secretB)
	e.refused("a wrong secret", "dev-a", "dev-a", secretB)
	e.refused("no password", "dev-a", "dev-a", "")
	e.refused("an unknown device", "dev-unknown", "dev-unknown", secretA)
	e.refused("a disabled device", "dev-off", "dev-off", secretOff)
	e.refused("a device registered before its broker account", "dev-legacy", "dev-legacy", legacy)
	e.refused("a device posing as the worker", "otaflow-worker", "otaflow-worker", secretA)
	e.refused("anonymous", "dev-a", "", "")
	select {
	case <-lost:
		t.Fatal("a refused login took the device's connection over")
	default:
	}
	e.mustDial("dev-b", "dev-b", secretB)
}

// TestSpoofingDevice: a device with valid credentials tries another device's topics. Nothing
// it publishes there reaches a service, nothing sent to the other device reaches it, and it
// cannot reach the broker's administration. Its own topics work.
func TestSpoofingDevice(t *testing.T) {
	e := newEnv(t)
	victimSecret, attackerSecret := e.device("victim"), e.device("attacker")
	victim := e.mustDial("victim", "victim", victimSecret)
	attacker := e.mustDial("attacker", "attacker", attackerSecret)
	bridge := e.mustDial("bridge-1", brokeraccounts.BridgeAccount, bridgePassword)
	worker := e.mustDial("worker-1", brokeraccounts.WorkerAccount, workerPassword)
	reports := make(chan paho.Message, 100)
	tok := bridge.SubscribeMultiple(map[string]byte{protocol.ProgressFilter: 1, protocol.StatusFilter: 1},
		func(_ paho.Client, m paho.Message) { reports <- m })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe the bridge: %v", tok.Error())
	}
	for f, code := range tok.(*paho.SubscribeToken).Result() {
		if code != 1 {
			t.Fatalf("the bridge subscribing to %s: SUBACK %#x", f, code)
		}
	}

	// The attacker subscribes to the victim's commands and to everything. Mosquitto grants
	// subscriptions an acl file does not cover; what matters is that nothing is delivered.
	stolen, _ := messages(t, attacker, protocol.CommandTopic("victim"))
	everything, _ := messages(t, attacker, "#")
	own, code := messages(t, attacker, protocol.CommandTopic("attacker"))
	if code != 1 {
		t.Fatalf("a device subscribing to its own commands: SUBACK %#x, want 1", code)
	}
	victimCommands, code := messages(t, victim, protocol.CommandTopic("victim"))
	if code != 1 {
		t.Fatalf("a device subscribing to its own commands: SUBACK %#x, want 1", code)
	}
	victimCancels, code := messages(t, victim, protocol.CancelTopic("victim"))
	if code != 1 {
		t.Fatalf("a device subscribing to its own cancellations: SUBACK %#x, want 1", code)
	}

	// The worker sends the victim a command and a cancellation, then the attacker one: the
	// attacker gets only its own (the broker keeps one publisher's order).
	publish(t, worker, protocol.CommandTopic("victim"), `{"id":"for-victim"}`)
	publish(t, worker, protocol.CancelTopic("victim"), `{"id":"for-victim"}`)
	publish(t, worker, protocol.CommandTopic("attacker"), `{"id":"for-attacker"}`)
	if m := next(t, victimCommands, "the victim's command"); string(m.Payload()) != `{"id":"for-victim"}` {
		t.Fatalf("the victim got %s", m.Payload())
	}
	next(t, victimCancels, "the victim's cancellation")
	if m := next(t, own, "the attacker's own command"); string(m.Payload()) != `{"id":"for-attacker"}` {
		t.Fatalf("the attacker got %s on its own topic", m.Payload())
	}
	if m := next(t, everything, "the attacker's own command through #"); m.Topic() != protocol.CommandTopic("attacker") {
		t.Fatalf("the attacker received %s (%s) through #", m.Topic(), m.Payload())
	}
	select {
	case m := <-stolen:
		t.Fatalf("the attacker received the victim's %s", m.Topic())
	case m := <-everything:
		t.Fatalf("the attacker received %s through #", m.Topic())
	default:
	}

	// The attacker publishes as the victim, a command to the victim and a command to create
	// an account, then its own report: the bridge sees only the last.
	publish(t, attacker, protocol.ProgressTopic("victim"), `{"type":"firmware","version":"1.1","progress":-3}`)
	publish(t, attacker, protocol.StatusTopic("victim"), `{"firmware_ver":"1.1"}`)
	publish(t, attacker, protocol.CommandTopic("victim"), `{"id":"forged"}`)
	publish(t, attacker, "$CONTROL/dynamic-security/v1",
		`{"commands":[{"command":"createClient","username":"evil","password":"evil"}]}`)
	publish(t, attacker, protocol.ProgressTopic("attacker"), `{"type":"firmware","version":"1.1","progress":5}`)
	if m := next(t, reports, "the attacker's own report"); m.Topic() != protocol.ProgressTopic("attacker") {
		t.Fatalf("the bridge received %s (%s) from the attacker", m.Topic(), m.Payload())
	}
	publish(t, worker, protocol.CommandTopic("victim"), `{"id":"second"}`)
	if m := next(t, victimCommands, "the victim's second command"); string(m.Payload()) != `{"id":"second"}` {
		t.Fatalf("the victim received %s: the attacker's forged command went through", m.Payload())
	}
	e.refused("an account the attacker tried to create", "evil", "evil", "evil")

	// The victim's own reports go through.
	publish(t, victim, protocol.StatusTopic("victim"), `{"firmware_ver":"1.0"}`)
	if m := next(t, reports, "the victim's own report"); m.Topic() != protocol.StatusTopic("victim") {
		t.Fatalf("the bridge received %s", m.Topic())
	}
}

// TestServiceAccounts: the services use their topics from as many connections as they like,
// and nothing else.
func TestServiceAccounts(t *testing.T) {
	e := newEnv(t)
	for i := range 2 {
		b := e.mustDial(fmt.Sprintf("otaflow-bridge-%d", i), brokeraccounts.BridgeAccount, bridgePassword)
		for _, f := range []string{protocol.SharedFilter(protocol.ProgressFilter), protocol.SharedFilter(protocol.StatusFilter),
			protocol.ProgressFilter, protocol.StatusFilter} {
			if _, code := messages(t, b, f); code != 1 {
				t.Errorf("bridge %d subscribing to %s: SUBACK %#x, want 1", i, f, code)
			}
		}
		if _, code := messages(t, b, protocol.CommandTopic("+")); code != 0x80 {
			t.Errorf("the bridge subscribing to commands: SUBACK %#x, want 0x80", code)
		}
	}
	w1 := e.mustDial("otaflow-worker-1", brokeraccounts.WorkerAccount, workerPassword)
	e.mustDial("otaflow-worker-2", brokeraccounts.WorkerAccount, workerPassword)
	if _, code := messages(t, w1, protocol.ProgressFilter); code != 0x80 {
		t.Errorf("the worker subscribing to reports: SUBACK %#x, want 0x80", code)
	}
	e.refused("the worker with the bridge's password", "w", brokeraccounts.WorkerAccount, bridgePassword)
	if err := e.admin.AddDevice(e.ctx, brokeraccounts.WorkerAccount, "x"); !errors.Is(err, brokeraccounts.ErrNotDevice) {
		t.Errorf("a device named like the worker's account: %v, want ErrNotDevice", err)
	}
	adminUser, _ := e.m.Admin()
	if _, err := e.admin.SetDeviceSecret(e.ctx, adminUser, "x"); !errors.Is(err, brokeraccounts.ErrNotDevice) {
		t.Errorf("a device named like the administrator: %v, want ErrNotDevice", err)
	}
	e.refused("the administrator's password changed by a device operation", "a", adminUser, "x")
}

// TestDisableAndRotate: disabling closes the device's connection and refuses it until it is
// enabled; a new secret closes it too, and only the new secret logs in; a device registered
// before its account gets one with a new secret.
func TestDisableAndRotate(t *testing.T) {
	e := newEnv(t)
	secret := e.device("dev-1")
	lost := make(chan struct{})
	if _, err := e.dial("dev-1", "dev-1", secret, func() { close(lost) }); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.SetDeviceDisabled(e.ctx, "dev-1", true); err != nil {
		t.Fatal(err)
	}
	require.Eventually(t, func() bool {
		select {
		case <-lost:
			return true
		default:
			return false
		}
	}, 5*time.Second, 10*time.Millisecond, "the disabled device is still connected")
	e.refused("the disabled device", "dev-1", "dev-1", secret)
	if err := e.admin.SetDeviceDisabled(e.ctx, "dev-1", false); err != nil {
		t.Fatal(err)
	}
	lost = make(chan struct{})
	if _, err := e.dial("dev-1", "dev-1", secret, func() { close(lost) }); err != nil {
		t.Fatalf("the enabled device: %v", err)
	}

	created, err := e.admin.SetDeviceSecret(e.ctx, "dev-1", "new-secret")
	if err != nil || created {
		t.Fatalf("SetDeviceSecret: created %v, %v", created, err)
	}
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the device is still connected with its old secret")
	}
	e.refused("the old secret", "dev-1", "dev-1", secret)
	e.mustDial("dev-1", "dev-1", "new-secret")

	legacy := e.register("dev-legacy")
	e.refused("a device without an account", "dev-legacy", "dev-legacy", legacy)
	if created, err := e.admin.SetDeviceSecret(e.ctx, "dev-legacy", "legacy-new"); err != nil || !created {
		t.Fatalf("SetDeviceSecret of a device without an account: created %v, %v", created, err)
	}
	e.mustDial("dev-legacy", "dev-legacy", "legacy-new")

	if err := e.admin.SetDeviceDisabled(e.ctx, "dev-none", true); !errors.Is(err, brokeraccounts.ErrNoAccount) {
		t.Errorf("disable a device without an account: %v, want ErrNoAccount", err)
	}
	if err := e.admin.RemoveDevice(e.ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	e.refused("a removed device", "dev-1", "dev-1", "new-secret")
	if err := e.admin.RemoveDevice(e.ctx, "dev-1"); err != nil {
		t.Errorf("removing it again: %v", err)
	}
}

// TestProvision: the setup step creates what is missing, follows the registry's disabled
// flags, reports devices without an account, and run again changes nothing.
func TestProvision(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := testenv.Mosquitto(t)
	reg, err := store.Open(ctx, testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	admin, err := brokeraccounts.Dial(ctx, m.AdminURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	e := &env{t: t, ctx: ctx, m: m, admin: admin, reg: reg}

	// Before the first setup: accounts of devices (made by `devices add`), one disabled in
	// the registry only, one device without an account, an account of no registered device.
	e.device("dev-on")
	e.device("dev-off")
	if err := reg.SetDisabled(ctx, "dev-off", true); err != nil {
		t.Fatal(err)
	}
	e.register("dev-legacy")
	if err := admin.AddDevice(ctx, "dev-gone", "x"); err != nil {
		t.Fatal(err)
	}
	e.refused("the worker before the setup", "w", brokeraccounts.WorkerAccount, workerPassword)

	rep, err := brokeraccounts.Provision(ctx, admin, e.setup())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first: %s", rep.Summary())
	wantChanges := []string{"set the default access (only what a role allows)", "created role otaflow-worker",
		"created role otaflow-bridge", "created account otaflow-worker", "created account otaflow-bridge",
		"disabled 1 device accounts of disabled devices"}
	if !slices.Equal(rep.Changes, wantChanges) {
		t.Errorf("first setup changed %q, want %q", rep.Changes, wantChanges)
	}
	if rep.Registered != 3 || rep.WithAccount != 2 || !slices.Equal(rep.Missing, []string{"dev-legacy"}) ||
		!slices.Equal(rep.Unregistered, []string{"dev-gone"}) {
		t.Errorf("first setup found %d registered, %d with an account, missing %v, unregistered %v; want 3, 2, [dev-legacy], [dev-gone]",
			rep.Registered, rep.WithAccount, rep.Missing, rep.Unregistered)
	}
	e.mustDial("w", brokeraccounts.WorkerAccount, workerPassword)
	e.refused("a device disabled in the registry", "dev-off", "dev-off", "x")

	rep, err = brokeraccounts.Provision(ctx, admin, e.setup())
	if err != nil || rep.Changed() {
		t.Fatalf("second setup changed %q, err %v; want nothing", rep.Changes, err)
	}

	// The registry moves on: dev-off enabled, dev-on disabled, a new bridge password; the
	// worker's role lost a topic.
	if err := reg.SetDisabled(ctx, "dev-off", false); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetDisabled(ctx, "dev-on", true); err != nil {
		t.Fatal(err)
	}
	s := e.setup()
	s.BridgePassword = "bridge-pw-2"
	rep, err = brokeraccounts.Provision(ctx, admin, s)
	if err != nil {
		t.Fatal(err)
	}
	wantChanges = []string{"set the password of account otaflow-bridge", "disabled 1 device accounts of disabled devices",
		"enabled 1 device accounts of enabled devices"}
	if !slices.Equal(rep.Changes, wantChanges) {
		t.Errorf("third setup changed %q, want %q", rep.Changes, wantChanges)
	}
	e.mustDial("b", brokeraccounts.BridgeAccount, "bridge-pw-2")
	e.refused("the bridge's old password", "b", brokeraccounts.BridgeAccount, bridgePassword)

	if _, err := brokeraccounts.Provision(ctx, admin, brokeraccounts.Setup{Registry: reg}); err == nil {
		t.Error("Provision without the service passwords succeeded")
	}
}

// TestAdminBrokerGone: a broker that goes away fails the command at once, saying so, rather
// than at the command's timeout.
func TestAdminBrokerGone(t *testing.T) {
	m := testenv.Mosquitto(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, err := brokeraccounts.Dial(ctx, m.AdminURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := admin.AddDevice(ctx, "dev-1", "s"); !errors.Is(err, mqttconn.ErrNotConnected) {
		t.Fatalf("AddDevice with the broker gone: %v, want mqttconn.ErrNotConnected", err)
	}
}
