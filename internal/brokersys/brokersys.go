// Package brokersys exports the production broker's figures as Prometheus metrics: it
// subscribes to Mosquitto's $SYS/broker/# topics, which the broker publishes (retained) every
// sys_interval seconds (10, Mosquitto's default, which deploy/mosquitto/mosquitto.conf keeps),
// and exports them under the names and with the meanings of the embedded broker's metrics
// (internal/dev/broker, internal/metrics):
//
//   - otaflow_broker_clients_connected{kind="all"}: $SYS/broker/clients/connected, every client
//     (devices and services; Mosquitto does not tell them apart, so the label is "all", not
//     the embedded broker's device and service);
//   - otaflow_broker_sessions_disconnected: $SYS/broker/clients/disconnected, the persistent
//     sessions of clients not connected;
//   - otaflow_broker_messages_queued: $SYS/broker/store/messages/count less
//     "$SYS/broker/retained messages/count": the messages held for sessions (in flight or
//     queued), each counted once however many sessions hold it, without the retained
//     messages (Mosquitto's own $SYS values; OTAflow retains nothing);
//   - otaflow_broker_messages_dropped_total: $SYS/broker/publish/messages/dropped, messages
//     dropped because a session's queue was at max_queued_messages or max_queued_bytes;
//   - otaflow_broker_messages_received_total and otaflow_broker_messages_sent_total:
//     $SYS/broker/publish/messages/received and .../sent, PUBLISH packets;
//   - otaflow_broker_sys_last_update_timestamp_seconds: when the last $SYS message arrived
//     (Unix time; 0 before the first), so that a stale reading shows: the broker publishes
//     its uptime at every interval, so in normal running this is never older than
//     sys_interval.
//
// A figure is exported once the broker has published it (at the subscription: the topics
// are retained). Counters restart from 0 when the broker restarts, which Prometheus' rate and
// increase take as a counter reset.
//
// Mosquitto keeps no count of the connections it refuses, by reason or at all: they are only
// in its log ("not authorised", "bad username or password"), so there is no
// otaflow_broker_connections_refused_total here; the embedded broker counts its refusals
// itself.
//
// The collector reads $SYS on a connection of its own (clean session, QoS 0), not on the
// bridge's: the bridge stops reading from the broker while its queues are full, which is
// when the broker's queue figures matter most, and its persistent session would hand $SYS
// messages to its report handler. The account needs read access to $SYS/broker/#: the
// bridge's role has it (internal/brokeraccounts); a refused subscription is logged and leaves
// the last-update gauge at 0.
package brokersys

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/mqttconn"
)

// Filter is the topic filter the collector subscribes to; the account it connects with needs
// read access to it.
const Filter = "$SYS/broker/#"

// Mosquitto's $SYS topics the collector reads.
const (
	TopicClientsConnected    = "$SYS/broker/clients/connected"
	TopicClientsDisconnected = "$SYS/broker/clients/disconnected"
	TopicStoreCount          = "$SYS/broker/store/messages/count"
	TopicRetainedCount       = "$SYS/broker/retained messages/count"
	TopicDropped             = "$SYS/broker/publish/messages/dropped"
	TopicReceived            = "$SYS/broker/publish/messages/received"
	TopicSent                = "$SYS/broker/publish/messages/sent"
)

// LastUpdate is the name of the gauge of when the last $SYS message arrived.
const LastUpdate = "otaflow_broker_sys_last_update_timestamp_seconds"

// ClientIDSuffix is appended to the bridge's client ID to make the collector's.
const ClientIDSuffix = "-sys"

var (
	clientsDesc = prometheus.NewDesc(metrics.BrokerClientsConnected,
		"Clients connected to the broker, by kind; from Mosquitto's $SYS/broker/clients/connected, kind=\"all\" (devices and services: Mosquitto does not tell them apart).",
		[]string{metrics.LabelKind}, nil)
	sessionsDesc = prometheus.NewDesc(metrics.BrokerSessionsDisconnected,
		"Persistent sessions the broker keeps for disconnected clients ($SYS/broker/clients/disconnected).", nil, nil)
	queuedDesc = prometheus.NewDesc(metrics.BrokerMessagesQueued,
		"QoS 1 and 2 messages held for sessions, in flight or queued, each once ($SYS/broker/store/messages/count less the retained messages).", nil, nil)
	droppedDesc = prometheus.NewDesc(metrics.BrokerMessagesDropped,
		"Messages the broker dropped: a session's queue at max_queued_messages or max_queued_bytes ($SYS/broker/publish/messages/dropped). Refused connections are not counted by Mosquitto: see its log.", nil, nil)
	receivedDesc = prometheus.NewDesc(metrics.BrokerMessagesReceived,
		"PUBLISH packets received ($SYS/broker/publish/messages/received).", nil, nil)
	sentDesc = prometheus.NewDesc(metrics.BrokerMessagesSent,
		"PUBLISH packets sent ($SYS/broker/publish/messages/sent).", nil, nil)
	lastUpdateDesc = prometheus.NewDesc(LastUpdate,
		"When the last $SYS message from the broker arrived, in seconds since the Unix epoch; 0 before the first. The broker publishes every sys_interval (10 s by default).", nil, nil)
)

// Config says where the collector connects.
type Config struct {
	// URL is the broker, with the credentials of an account that may read $SYS/broker/#
	// (the bridge's MQTT_URL); see mqttconn.Options for the schemes.
	URL string
	// TLS secures the connection (nil: none, or the system's roots for a TLS URL).
	TLS *tls.Config
	// ClientID is the collector's client ID; the bridge's with ClientIDSuffix.
	ClientID string
	// Logger receives connections and refusals. Default slog.Default().
	Logger *slog.Logger
}

// Collector reads the broker's $SYS topics and exports them (see the package comment). Make
// it with New, register it, and Start it; Close disconnects.
type Collector struct {
	cfg    Config
	log    *slog.Logger
	client mqtt.Client

	mu     sync.Mutex
	values map[string]float64 // by topic, those read so far
	last   time.Time          // when the last $SYS message arrived
}

// New checks cfg and returns a collector that has not connected yet.
func New(cfg Config) (*Collector, error) {
	if cfg.ClientID == "" {
		return nil, errors.New("broker $SYS metrics: a client ID is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Collector{cfg: cfg, log: cfg.Logger, values: map[string]float64{}}
	opts, err := mqttconn.Options(cfg.URL, cfg.ClientID, mqttconn.WithTLS(cfg.TLS))
	if err != nil {
		return nil, fmt.Errorf("broker $SYS metrics: %w", err)
	}
	opts.SetProtocolVersion(4)
	// Nothing to keep: the topics are retained, a new subscription gets them all again.
	opts.SetCleanSession(true)
	opts.SetOrderMatters(false)
	opts.SetOnConnectHandler(c.subscribe)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		c.log.Warn("lost the connection reading the broker's $SYS figures, reconnecting", "error", err)
	})
	c.client = mqtt.NewClient(opts)
	return c, nil
}

// Start connects in the background; the connection is retried, and renewed when lost, until
// Close.
func (c *Collector) Start() { c.client.Connect() }

// Close disconnects. The figures read stay exported, and the last-update gauge says how old
// they are.
func (c *Collector) Close() { c.client.Disconnect(250) }

// subscribe subscribes to Filter after each connection.
func (c *Collector) subscribe(client mqtt.Client) {
	tok := client.Subscribe(Filter, 0, func(_ mqtt.Client, m mqtt.Message) { c.handle(m.Topic(), m.Payload()) })
	if !tok.WaitTimeout(30 * time.Second) {
		c.log.Warn("subscribing to the broker's $SYS figures timed out; trying again at the next connection", "filter", Filter)
		return
	}
	if err := tok.Error(); err != nil {
		c.log.Warn("subscribe to the broker's $SYS figures", "filter", Filter, "error", err)
		return
	}
	if code := tok.(*mqtt.SubscribeToken).Result()[Filter]; code > 2 {
		c.log.Error("the broker refused the subscription to its $SYS figures: the account needs read access to "+Filter+
			" (on Mosquitto, `starter setup` gives it to the bridge's role); no broker metrics until then",
			"broker", credential.RedactURL(c.cfg.URL), "filter", Filter, "code", fmt.Sprintf("%#x", code))
		return
	}
	c.log.Info("reading the broker's $SYS figures", "broker", credential.RedactURL(c.cfg.URL), "client_id", c.cfg.ClientID)
}

// exported are the topics whose values the collector keeps.
var exported = map[string]bool{
	TopicClientsConnected: true, TopicClientsDisconnected: true, TopicStoreCount: true, TopicRetainedCount: true,
	TopicDropped: true, TopicReceived: true, TopicSent: true,
}

// handle records one $SYS message: its value if it is a figure the collector exports, and
// the time.
func (c *Collector) handle(topic string, payload []byte) {
	now := time.Now()
	var v float64
	keep := exported[topic]
	if keep {
		var err error
		if v, err = strconv.ParseFloat(strings.TrimSpace(string(payload)), 64); err != nil {
			c.log.Warn("a $SYS figure is not a number; ignored", "topic", topic, "payload", string(payload))
			keep = false
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = now
	if keep {
		c.values[topic] = v
	}
}

// Describe sends the descriptions of the metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{clientsDesc, sessionsDesc, queuedDesc, droppedDesc, receivedDesc, sentDesc, lastUpdateDesc} {
		ch <- d
	}
}

// Collect sends the figures read so far and the time of the last update.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	values := make(map[string]float64, len(c.values))
	for k, v := range c.values {
		values[k] = v
	}
	last := c.last
	c.mu.Unlock()

	send := func(d *prometheus.Desc, typ prometheus.ValueType, topic string, labels ...string) {
		if v, ok := values[topic]; ok {
			ch <- prometheus.MustNewConstMetric(d, typ, v, labels...)
		}
	}
	send(clientsDesc, prometheus.GaugeValue, TopicClientsConnected, metrics.KindAll)
	send(sessionsDesc, prometheus.GaugeValue, TopicClientsDisconnected)
	if stored, ok := values[TopicStoreCount]; ok {
		ch <- prometheus.MustNewConstMetric(queuedDesc, prometheus.GaugeValue, max(0, stored-values[TopicRetainedCount]))
	}
	send(droppedDesc, prometheus.CounterValue, TopicDropped)
	send(receivedDesc, prometheus.CounterValue, TopicReceived)
	send(sentDesc, prometheus.CounterValue, TopicSent)
	at := 0.0
	if !last.IsZero() {
		at = float64(last.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(lastUpdateDesc, prometheus.GaugeValue, at)
}
