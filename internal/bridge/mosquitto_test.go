package bridge_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// fleetOnMosquitto is a test's production broker (Mosquitto from deploy/mosquitto,
// provisioned), its registry and a fleet of registered devices with their accounts.
type fleetOnMosquitto struct {
	t       *testing.T
	ctx     context.Context
	m       *localstack.Mosquitto
	st      *store.Store
	devices []string
	secrets map[string]string
}

const mosquittoBridgePassword = "bridge-pw"

func newFleetOnMosquitto(t *testing.T, devices int) *fleetOnMosquitto {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	f := &fleetOnMosquitto{t: t, ctx: ctx, m: testenv.Mosquitto(t), secrets: map[string]string{}}
	f.st, _ = openStore(t)
	admin, err := brokeraccounts.Dial(ctx, f.m.AdminURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := brokeraccounts.Provision(ctx, admin, brokeraccounts.Setup{WorkerPassword: "worker-pw",
		BridgePassword: mosquittoBridgePassword, Registry: f.st}); err != nil {
		t.Fatal(err)
	}
	for i := range devices {
		id := fmt.Sprintf("mq%s-%03d", randomHex(2), i)
		secret := randomHex(16)
		if err := f.st.AddDeviceThen(ctx, id, "unused-hash", nil, func(ctx context.Context) error {
			return admin.AddDevice(ctx, id, secret)
		}); err != nil {
			t.Fatal(err)
		}
		f.devices = append(f.devices, id)
		f.secrets[id] = secret
	}
	return f
}

// runBridges runs bridges with the given client IDs on the shared subscription until stop is
// called, once each has subscribed.
func (f *fleetOnMosquitto) runBridges(clientIDs ...string) (stop func()) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(f.ctx)
	var g errgroup.Group
	for _, id := range clientIDs {
		b, err := bridge.New(bridge.Config{
			BrokerURL: f.m.URL(brokeraccounts.BridgeAccount, mosquittoBridgePassword),
			ClientID:  id, Shared: true,
			RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond,
			Logger: quietLogger(),
		}, temporalClient(f.t), f.st)
		if err != nil {
			f.t.Fatal(err)
		}
		g.Go(func() error { return b.Run(ctx) })
		select {
		case <-b.Ready():
		case <-time.After(15 * time.Second):
			f.t.Fatalf("bridge %s not ready after 15 s", id)
		}
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := g.Wait(); err != nil {
				f.t.Errorf("bridge Run: %v", err)
			}
		})
	}
	f.t.Cleanup(stop)
	return stop
}

// report publishes n progress reports (1..n) from every device, each through its own
// connection, and returns once the broker acknowledged all of them.
func (f *fleetOnMosquitto) report(n int) {
	f.t.Helper()
	var g errgroup.Group
	g.SetLimit(20)
	for _, id := range f.devices {
		g.Go(func() error {
			c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + f.m.Addr()).SetClientID(id).
				SetUsername(id).SetPassword(f.secrets[id]).SetCleanSession(false).SetAutoReconnect(false))
			if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				return fmt.Errorf("connect %s: %v", id, tok.Error())
			}
			defer c.Disconnect(100)
			for p := 1; p <= n; p++ {
				tok := c.Publish(protocol.ProgressTopic(id), 1, false, progressJSON("c-"+id, p))
				if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					return fmt.Errorf("publish from %s: %v", id, tok.Error())
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		f.t.Fatal(err)
	}
}

// stored returns the progress values stored for each device, in the order received.
func (f *fleetOnMosquitto) stored() (map[string][]int, int) {
	f.t.Helper()
	got, total := map[string][]int{}, 0
	for _, id := range f.devices {
		ev, err := f.st.ProgressEvents(f.ctx, id, 100000)
		if err != nil {
			f.t.Fatal(err)
		}
		got[id] = progressValues(ev)
		total += len(ev)
	}
	return got, total
}

// storesEverything waits until every device's n reports are stored, then checks each one is
// there exactly once.
func (f *fleetOnMosquitto) storesEverything(n int) {
	f.t.Helper()
	want := len(f.devices) * n
	var total int
	require.Eventually(f.t, func() bool {
		_, total = f.stored()
		return total >= want
	}, 2*time.Minute, 100*time.Millisecond, "reports stored: want %d", want)
	got, total := f.stored()
	if total != want {
		f.t.Errorf("%d reports stored, want %d", total, want)
	}
	for id, values := range got {
		slices.Sort(values)
		for p := 1; p <= n; p++ {
			if i := p - 1; i >= len(values) || values[i] != p {
				f.t.Fatalf("device %s: stored progress %v, want 1..%d once each", id, values, n)
			}
		}
	}
}

// TestBridgeOutageOnMosquitto: the bridges are stopped, the fleet sends 2,100 reports, which
// the production broker keeps in the bridges' sessions; restarted, the bridges store every
// one of them, once.
func TestBridgeOutageOnMosquitto(t *testing.T) {
	const devices, reports = 50, 42
	f := newFleetOnMosquitto(t, devices)
	bridges := []string{"bridge-a-" + randomHex(2), "bridge-b-" + randomHex(2)}
	f.runBridges(bridges...)() // subscribe, then stop

	start := time.Now()
	f.report(reports)
	t.Logf("%d reports acknowledged by the broker in %s with the bridges down", devices*reports, time.Since(start).Round(time.Millisecond))
	if _, total := f.stored(); total != 0 {
		t.Fatalf("%d reports stored with the bridges down", total)
	}

	start = time.Now()
	f.runBridges(bridges...)
	f.storesEverything(reports)
	t.Logf("stored %d reports %s after the bridges came back", devices*reports, time.Since(start).Round(time.Millisecond))
}

// TestBrokerCrashKeepsSavedBacklog: with the bridges down, the fleet reports; once the broker
// has saved its state (autosave_interval), it is killed with SIGKILL and started again on its
// persistence. The bridges then store every report.
func TestBrokerCrashKeepsSavedBacklog(t *testing.T) {
	const devices, reports = 20, 10
	f := newFleetOnMosquitto(t, devices)
	bridges := []string{"bridge-a-" + randomHex(2), "bridge-b-" + randomHex(2)}
	f.runBridges(bridges...)()

	f.report(reports)
	acked := time.Now()
	db := filepath.Join(f.m.Dir(), "mosquitto.db")
	require.Eventually(t, func() bool {
		fi, err := os.Stat(db)
		return err == nil && fi.ModTime().After(acked)
	}, 30*time.Second, 50*time.Millisecond, "the broker did not save its state after the reports")
	t.Logf("saved %s after the last report", time.Since(acked).Round(time.Millisecond))

	if err := f.m.Kill(); err != nil {
		t.Fatal(err)
	}
	f.m = testenv.RestartMosquitto(t, f.m)
	f.runBridges(bridges...)
	f.storesEverything(reports)
}
