package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/store"
)

// effectBound is the longest a devices command may take to change what the broker does.
const effectBound = 5 * time.Second

// productionBroker is a test's Mosquitto from deploy/mosquitto, provisioned by the setup step,
// with the starter's arguments that reach it and the test's registry.
type productionBroker struct {
	t   *testing.T
	ctx context.Context
	m   *localstack.Mosquitto
	db  string
}

func newProductionBroker(t *testing.T) *productionBroker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	b := &productionBroker{t: t, ctx: ctx, m: testenv.Mosquitto(t), db: testenv.DatabaseURL(t)}
	st, err := store.Open(ctx, b.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, _, err := brokeraccounts.Step(ctx, brokeraccounts.Config{AdminURL: b.m.AdminURL(), WorkerPassword: "w", BridgePassword: "b"}, st); err != nil {
		t.Fatal(err)
	}
	return b
}

// cli runs starter against the test's registry and broker.
func (b *productionBroker) cli(args ...string) result {
	b.t.Helper()
	return runCLI(b.t, b.ctx, append(servers(b.db, "--mqtt-admin-url", b.m.AdminURL()), args...)...)
}

// secret runs a devices command that prints a secret with --json, and returns it.
func (b *productionBroker) secret(args ...string) string {
	b.t.Helper()
	r := b.cli(append(args, "--json")...)
	r.check(b.t, 0)
	var rep secretReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.Secret == "" {
		b.t.Fatalf("%v printed %q (%v)", args, r.stdout, err)
	}
	return rep.Secret
}

// dial connects a device; onLost, if not nil, is closed when the connection is lost.
func (b *productionBroker) dial(clientID, username, password string, onLost chan struct{}) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker("tcp://" + b.m.Addr()).SetClientID(clientID).SetUsername(username).
		SetPassword(password).SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(2 * time.Second)
	if onLost != nil {
		opts.SetConnectionLostHandler(func(paho.Client, error) { close(onLost) })
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		return nil, errors.New("no CONNACK")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	b.t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

// connectsWithin asserts that the device logs in within effectBound of the command that
// allowed it, polling as a device retrying would, and returns its connection.
func (b *productionBroker) connectsWithin(since time.Time, id, secret string, onLost chan struct{}) {
	b.t.Helper()
	require.Eventually(b.t, func() bool {
		_, err := b.dial(id, id, secret, onLost)
		return err == nil
	}, effectBound-time.Since(since), 50*time.Millisecond, "device %s cannot connect within %s", id, effectBound)
	b.t.Logf("%s connected %s after the command", id, time.Since(since).Round(time.Millisecond))
}

func (b *productionBroker) refused(what, clientID, username, password string) {
	b.t.Helper()
	if _, err := b.dial(clientID, username, password, nil); err == nil {
		b.t.Errorf("%s: connected, want refused", what)
	}
}

// closedWithin asserts that a connection is lost within effectBound of since.
func (b *productionBroker) closedWithin(since time.Time, lost chan struct{}, what string) {
	b.t.Helper()
	require.Eventually(b.t, func() bool {
		select {
		case <-lost:
			return true
		default:
			return false
		}
	}, effectBound, 10*time.Millisecond, "%s: still connected %s later", what, effectBound)
	b.t.Logf("%s: connection closed %s after the command", what, time.Since(since).Round(time.Millisecond))
}

// TestDevicesOnProductionBroker: with MQTT_ADMIN_URL, the devices commands drive the broker
// within 5 seconds: a new device connects, a disabled one is disconnected and refused, a
// rotated secret replaces the old one, a device registered before the broker's accounts gets
// one with a new secret, imported devices connect; and the broker's refusals leave the
// registry unchanged.
func TestDevicesOnProductionBroker(t *testing.T) {
	b := newProductionBroker(t)

	start := time.Now()
	secret1 := b.secret("devices", "add", "--device", "dev-1")
	lost := make(chan struct{})
	b.connectsWithin(start, "dev-1", secret1, lost)
	secret2 := b.secret("devices", "add", "--device", "dev-2")
	b.refused("dev-2 with dev-1's client ID", "dev-1", "dev-2", secret2)
	b.refused("a wrong secret", "dev-2", "dev-2", secret1)

	start = time.Now()
	b.cli("devices", "disable", "--device", "dev-1").check(t, 0)
	b.closedWithin(start, lost, "disable")
	b.refused("the disabled device", "dev-1", "dev-1", secret1)
	start = time.Now()
	b.cli("devices", "enable", "--device", "dev-1").check(t, 0)
	lost = make(chan struct{})
	b.connectsWithin(start, "dev-1", secret1, lost)

	start = time.Now()
	newSecret := b.secret("devices", "rotate-secret", "--device", "dev-1")
	b.closedWithin(start, lost, "rotate-secret")
	b.refused("the old secret", "dev-1", "dev-1", secret1)
	b.connectsWithin(start, "dev-1", newSecret, nil)

	// A device registered before the broker's accounts: refused until rotate-secret.
	st, err := store.Open(b.ctx, b.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	hash, err := credential.Hash("old-secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AddDevice(b.ctx, "dev-legacy", hash, nil); err != nil {
		t.Fatal(err)
	}
	b.refused("a device without an account", "dev-legacy", "dev-legacy", "old-secret")
	r := b.cli("devices", "enable", "--device", "dev-legacy")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "has no broker account") {
		t.Errorf("enable of a device without an account says:\n%s", r.stdout)
	}
	start = time.Now()
	r = b.cli("devices", "rotate-secret", "--device", "dev-legacy")
	r.check(t, 0)
	if !strings.Contains(r.stdout, "it had no broker account, it has one now") {
		t.Errorf("rotate-secret of a device without an account says:\n%s", r.stdout)
	}
	secret := r.stdout[strings.Index(r.stdout, "MQTT secret: ")+len("MQTT secret: "):]
	b.connectsWithin(start, "dev-legacy", strings.TrimSpace(secret[:strings.Index(secret, "\n")]), nil)

	// Imported devices connect.
	importStdin = strings.NewReader("device\nimp-1\nimp-2\nimp-3\n")
	t.Cleanup(func() { importStdin = os.Stdin })
	start = time.Now()
	r = b.cli("devices", "import", "--file", "-")
	r.check(t, 0)
	rows, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
	if err != nil || len(rows) != 4 {
		t.Fatalf("import printed %q (%v)", r.stdout, err)
	}
	for _, row := range rows[1:] {
		b.connectsWithin(start, row[0], row[1], nil)
	}

	// Refusals change nothing: a device named like a service, an administrator login the
	// broker refuses.
	r = b.cli("devices", "add", "--device", brokeraccounts.WorkerAccount)
	r.check(t, exitFailure, "not a device's")
	user, _ := b.m.Admin()
	r = runCLI(t, b.ctx, "--database-url", b.db, "--mqtt-admin-url", b.m.URL(user, "wrong"), "devices", "add", "--device", "dev-x")
	r.check(t, exitFailure, "refused the administrator's login", "nothing was changed")
	if found, err := st.RegisteredDevices(b.ctx, []string{brokeraccounts.WorkerAccount, "dev-x"}); err != nil || len(found) != 0 {
		t.Errorf("refused devices registered anyway: %v (%v)", found, err)
	}
	importStdin = strings.NewReader("device\nimp-4\n" + brokeraccounts.BridgeAccount + "\n")
	r = b.cli("devices", "import", "--file", "-")
	r.check(t, exitFailure, "nothing was imported")
	if found, err := st.RegisteredDevices(b.ctx, []string{"imp-4", brokeraccounts.BridgeAccount}); err != nil || len(found) != 0 {
		t.Errorf("a refused import registered %v (%v)", found, err)
	}
	a, err := brokeraccounts.Dial(b.ctx, b.m.AdminURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	accounts, err := a.Devices(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, acc := range accounts {
		if acc.ID == "imp-4" {
			t.Error("a refused import left the account of imp-4 on the broker")
		}
	}
}
