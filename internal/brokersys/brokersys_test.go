package brokersys_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/brokersys"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	// PostgreSQL is the device registry the broker's accounts are provisioned from.
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

// sysWait bounds a wait for the broker's next $SYS update: it publishes every sys_interval,
// 10 s in deploy/mosquitto/mosquitto.conf (Mosquitto's default).
const sysWait = 30 * time.Second

// TestCollectorReadsMosquitto runs the collector against Mosquitto from deploy/mosquitto's
// configuration, provisioned as `starter setup` does, on the bridge's account: it exports
// the clients connected (kind="all": the devices, the collector itself and the
// administrator), and the PUBLISH counters grow with the devices' reports. On the worker's
// account, which may not read $SYS, the subscription is refused: the collector logs why and
// exports nothing but a last-update time of 0.
func TestCollectorReadsMosquitto(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := testenv.Mosquitto(t)
	st, err := store.Open(ctx, testenv.DatabaseURL(t))
	require.NoError(t, err)
	defer st.Close()
	admin, err := brokeraccounts.Dial(ctx, m.AdminURL(), nil)
	require.NoError(t, err)
	defer admin.Close()
	_, err = brokeraccounts.Provision(ctx, admin, brokeraccounts.Setup{WorkerPassword: "w", BridgePassword: "b", Registry: st})
	require.NoError(t, err)

	var logs testenv.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	start := func(url, clientID string) (*brokersys.Collector, *prometheus.Registry) {
		c, err := brokersys.New(brokersys.Config{URL: url, ClientID: clientID, Logger: logger})
		require.NoError(t, err)
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c)
		c.Start()
		t.Cleanup(c.Close)
		return c, reg
	}
	collector, reg := start(m.URL(brokeraccounts.BridgeAccount, "b"), "otaflow-bridge-1"+brokersys.ClientIDSuffix)
	require.Eventually(t, func() bool { return gauge(t, reg, brokersys.LastUpdate) > 0 }, sysWait, 50*time.Millisecond,
		"no $SYS message reached the collector; its log:\n%s", logs.String())

	// N devices connect: with the collector and the administrator, N+2 clients.
	const devices = 5
	clients := make([]paho.Client, devices)
	for i := range clients {
		id := fmt.Sprintf("sys-dev-%d", i+1)
		require.NoError(t, admin.AddDevice(ctx, id, "secret-"+id))
		clients[i] = connect(t, m.URL(id, "secret-"+id), id)
	}
	clientsConnected := func() float64 {
		return gauge(t, reg, metrics.BrokerClientsConnected, metrics.LabelKind, metrics.KindAll)
	}
	require.Eventually(t, func() bool { return clientsConnected() == devices+2 }, sysWait, 50*time.Millisecond,
		"otaflow_broker_clients_connected{kind=\"all\"} = %v, want %d", clientsConnected(), devices+2)

	// Each device reports once to a subscriber: received and sent grow by the N reports at
	// least (sent also counts the $SYS messages the collector gets).
	received0, sent0 := gauge(t, reg, metrics.BrokerMessagesReceived), gauge(t, reg, metrics.BrokerMessagesSent)
	got := make(chan struct{}, devices)
	sub := connect(t, m.URL(brokeraccounts.BridgeAccount, "b"), "sys-test-subscriber")
	if tok := sub.Subscribe(protocol.ProgressFilter, 1, func(paho.Client, paho.Message) { got <- struct{}{} }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	for i, c := range clients {
		id := fmt.Sprintf("sys-dev-%d", i+1)
		report := `{"id":"c1","type":"firmware","version":"1.1","progress":50,"desc":"downloading"}`
		if tok := c.Publish(protocol.ProgressTopic(id), 1, false, report); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	for range devices {
		select {
		case <-got:
		case <-ctx.Done():
			t.Fatal("the subscriber did not get every report")
		}
	}
	require.Eventually(t, func() bool {
		return gauge(t, reg, metrics.BrokerMessagesReceived) >= received0+devices && gauge(t, reg, metrics.BrokerMessagesSent) >= sent0+devices
	}, sysWait, 50*time.Millisecond, "received %v (was %v), sent %v (was %v), want each %d more",
		gauge(t, reg, metrics.BrokerMessagesReceived), received0, gauge(t, reg, metrics.BrokerMessagesSent), sent0, devices)
	for _, name := range []string{metrics.BrokerSessionsDisconnected, metrics.BrokerMessagesQueued, metrics.BrokerMessagesDropped} {
		if n := testutil.CollectAndCount(collector, name); n != 1 {
			t.Errorf("%s: %d series, want 1", name, n)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("metrics lint: %v %v", problems, err)
	}

	// The worker's account may not read $SYS: refused, logged, and nothing read.
	refusedCollector, refused := start(m.URL(brokeraccounts.WorkerAccount, "w"), "otaflow-worker-1"+brokersys.ClientIDSuffix)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "the broker refused the subscription to its $SYS figures")
	},
		sysWait, 50*time.Millisecond, "no refusal logged:\n%s", logs.String())
	require.Contains(t, logs.String(), "needs read access to "+brokersys.Filter)
	// Once the broker has published again, the refused collector still has nothing.
	after := float64(time.Now().UnixNano()) / 1e9
	require.Eventually(t, func() bool { return gauge(t, reg, brokersys.LastUpdate) > after }, sysWait, 50*time.Millisecond)
	require.Zero(t, gauge(t, refused, brokersys.LastUpdate), "the refused collector's last update")
	if n := testutil.CollectAndCount(refusedCollector, metrics.BrokerClientsConnected); n != 0 {
		t.Errorf("the refused collector exports %d series of %s, want none", n, metrics.BrokerClientsConnected)
	}
}

// TestCollect checks what Collect makes of $SYS messages: the queued messages are the stored
// less the retained, a figure that is not a number is left out, and nothing is exported
// before the broker says it.
func TestCollect(t *testing.T) {
	tests := []struct {
		name     string
		messages map[string]string
		want     string
	}{
		{name: "nothing yet", want: `
# HELP otaflow_broker_sys_last_update_timestamp_seconds When the last $SYS message from the broker arrived, in seconds since the Unix epoch; 0 before the first. The broker publishes every sys_interval (10 s by default).
# TYPE otaflow_broker_sys_last_update_timestamp_seconds gauge
otaflow_broker_sys_last_update_timestamp_seconds 0
`},
		{name: "figures", messages: map[string]string{
			brokersys.TopicClientsConnected: "7", brokersys.TopicStoreCount: "60", brokersys.TopicRetainedCount: "52", brokersys.TopicReceived: "1234",
			brokersys.TopicSent: "not a number", "$SYS/broker/uptime": "12 seconds",
		}, want: `
# HELP otaflow_broker_clients_connected Clients connected to the broker, by kind; from Mosquitto's $SYS/broker/clients/connected, kind="all" (devices and services: Mosquitto does not tell them apart).
# TYPE otaflow_broker_clients_connected gauge
otaflow_broker_clients_connected{kind="all"} 7
# HELP otaflow_broker_messages_queued QoS 1 and 2 messages held for sessions, in flight or queued, each once ($SYS/broker/store/messages/count less the retained messages).
# TYPE otaflow_broker_messages_queued gauge
otaflow_broker_messages_queued 8
# HELP otaflow_broker_messages_received_total PUBLISH packets received ($SYS/broker/publish/messages/received).
# TYPE otaflow_broker_messages_received_total counter
otaflow_broker_messages_received_total 1234
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := brokersys.New(brokersys.Config{URL: "tcp://127.0.0.1:1", ClientID: "test" + brokersys.ClientIDSuffix, Logger: slog.New(slog.NewTextHandler(&testenv.Buffer{}, nil))})
			require.NoError(t, err)
			for topic, payload := range tt.messages {
				c.Handle(topic, []byte(payload))
			}
			require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(tt.want), metrics.BrokerClientsConnected,
				metrics.BrokerMessagesQueued, metrics.BrokerMessagesReceived, metrics.BrokerMessagesSent, metrics.BrokerMessagesDropped))
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(c)
			last := gauge(t, reg, brokersys.LastUpdate)
			if (len(tt.messages) > 0) != (last > 0) {
				t.Errorf("last update %v after %d messages", last, len(tt.messages))
			}
		})
	}
	if _, err := brokersys.New(brokersys.Config{URL: "tcp://127.0.0.1:1"}); err == nil {
		t.Error("New without a client ID: no error")
	}
	if _, err := brokersys.New(brokersys.Config{URL: "http://127.0.0.1:1", ClientID: "x"}); err == nil {
		t.Error("New with an http URL: no error")
	}
}

// connect connects a client with a clean session, disconnected when the test ends.
func connect(t *testing.T, url, clientID string) paho.Client {
	t.Helper()
	u, user, password := splitURL(t, url)
	c := paho.NewClient(paho.NewClientOptions().AddBroker(u).SetClientID(clientID).SetUsername(user).SetPassword(password).
		SetCleanSession(true).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// splitURL splits tcp://user:password@host:port into the broker and the credentials.
func splitURL(t *testing.T, raw string) (broker, user, password string) {
	t.Helper()
	rest, ok := strings.CutPrefix(raw, "tcp://")
	creds, host, ok2 := strings.Cut(rest, "@")
	user, password, ok3 := strings.Cut(creds, ":")
	if !ok || !ok2 || !ok3 {
		t.Fatalf("not a tcp://user:password@host URL: %s", raw)
	}
	return "tcp://" + host, user, password
}

// gauge returns the value of the series name{labels} reg gathers, or -1 without it.
func gauge(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}
