package broker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/otaflow/otaflow/internal/metrics"
)

// Refusal reasons as metric labels (the log line says more).
var refusalLabels = map[string]string{
	"no username":            "no_username",
	"wrong service password": "bad_service_password",
	"client ID belongs to another user's session":                                               "session_of_another_user",
	"client ID differs from username (a device connects with client ID = username = device ID)": "client_id_mismatch",
	"invalid device ID":                   "invalid_device_id",
	"no password":                         "no_password",
	"unknown device":                      "unknown_device",
	"device disabled":                     "device_disabled",
	"registered secret hash is malformed": "malformed_hash",
	"wrong secret":                        "bad_secret",
	"credentials lookup failed":           "unavailable",
	"cannot verify secret":                "unavailable",
	reasonSuperseded:                      "superseded",
}

// reasonSuperseded is the refusal of a connection whose client connected again meanwhile.
const reasonSuperseded = "a newer connection of this client was accepted while this one waited for authentication"

func refusalLabel(reason string) string {
	if l, ok := refusalLabels[reason]; ok {
		return l
	}
	return "other"
}

func newRefusedCounter() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otaflow_broker_connections_refused_total",
		Help: "Connections the broker refused, by reason."}, []string{"reason"})
	for _, l := range refusalLabels {
		c.WithLabelValues(l)
	}
	return c
}

var (
	brokerClientsDesc = prometheus.NewDesc(metrics.BrokerClientsConnected,
		"Clients connected to the broker, by kind (device or service).", []string{metrics.LabelKind}, nil)
	brokerSessionsDesc = prometheus.NewDesc(metrics.BrokerSessionsDisconnected,
		"Persistent sessions the broker keeps for disconnected clients.", nil, nil)
	brokerHeldDesc = prometheus.NewDesc(metrics.BrokerMessagesQueued,
		"QoS 1 and 2 messages held in sessions: sent and not yet acknowledged, or queued for offline clients.", nil, nil)
	brokerDroppedDesc = prometheus.NewDesc(metrics.BrokerMessagesDropped,
		"Messages the broker dropped: a full write queue (QoS 0), or a session at its in-flight quota.", nil, nil)
	brokerInflightDroppedDesc = prometheus.NewDesc("otaflow_broker_inflight_dropped_total",
		"Held messages dropped because they expired or a session was at its quota.", nil, nil)
	brokerReceivedDesc = prometheus.NewDesc(metrics.BrokerMessagesReceived, "PUBLISH packets received.", nil, nil)
	brokerSentDesc     = prometheus.NewDesc(metrics.BrokerMessagesSent, "PUBLISH packets sent.", nil, nil)
)

// Collector returns the broker's metrics for a Prometheus registry: clients connected
// (devices and services), refused connections by reason, messages held in sessions, and
// messages received, sent and dropped.
func (b *Broker) Collector() prometheus.Collector { return brokerCollector{b} }

type brokerCollector struct{ b *Broker }

func (c brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{brokerClientsDesc, brokerSessionsDesc, brokerHeldDesc, brokerDroppedDesc,
		brokerInflightDroppedDesc, brokerReceivedDesc, brokerSentDesc} {
		ch <- d
	}
	c.b.hook.refused.Describe(ch)
}

func (c brokerCollector) Collect(ch chan<- prometheus.Metric) {
	info := c.b.server.Info.Clone()
	devices, services, sessions := 0, 0, 0
	for _, cl := range c.b.server.Clients.GetAll() {
		if cl.Closed() {
			sessions++
			continue
		}
		if _, ok := c.b.opts.Services[string(cl.Properties.Username)]; ok {
			services++
		} else {
			devices++
		}
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge(brokerClientsDesc, float64(devices), metrics.KindDevice)
	gauge(brokerClientsDesc, float64(services), metrics.KindService)
	gauge(brokerSessionsDesc, float64(sessions))
	gauge(brokerHeldDesc, float64(info.Inflight))
	counter(brokerDroppedDesc, info.MessagesDropped)
	counter(brokerInflightDroppedDesc, info.InflightDropped)
	counter(brokerReceivedDesc, info.MessagesReceived)
	counter(brokerSentDesc, info.MessagesSent)
	c.b.hook.refused.Collect(ch)
}
