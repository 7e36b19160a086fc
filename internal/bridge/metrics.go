package bridge

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otaflow/otaflow/internal/metrics"
)

// Rejection reasons as metric labels: a bounded set, whatever the message said.
const (
	// RejectTopic: not a device topic, or a malformed device ID.
	RejectTopic = "topic"
	// RejectPayload: the payload is not a valid progress or status report.
	RejectPayload = "payload"
	// RejectKind: a device published on a topic devices do not publish on.
	RejectKind = "kind"
	// RejectUnknownDevice: the device is not registered.
	RejectUnknownDevice = "unknown_device"
)

// Kinds of stored reports, as metric labels.
const (
	storedProgress = "progress"
	storedStatus   = "status"
)

// Targets of the operations the bridge retries, as metric labels.
const (
	targetPostgres = "postgres"
	targetTemporal = "temporal"
)

// bridgeMetrics are what the bridge measures as it goes; its counters (Stats) are read at
// each scrape.
type bridgeMetrics struct {
	rejected *prometheus.CounterVec
	stored   *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  prometheus.Histogram
}

func newBridgeMetrics() *bridgeMetrics {
	m := &bridgeMetrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otaflow_bridge_messages_rejected_total",
			Help: "Device messages refused and recorded as rejected, by reason (topic, payload, kind, unknown_device)."}, []string{"reason"}),
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otaflow_bridge_reports_stored_total",
			Help: "Valid reports recorded in PostgreSQL, by kind (progress or status)."}, []string{"kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otaflow_bridge_errors_total",
			Help: "Failed attempts of PostgreSQL writes and Temporal signals (each is retried), by target."}, []string{"target"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "otaflow_bridge_signal_latency_seconds",
			Help:    "Time from the bridge taking a report from the broker to its workflow signalled (stored first).",
			Buckets: metrics.LatencyBuckets}),
	}
	for _, r := range []string{RejectTopic, RejectPayload, RejectKind, RejectUnknownDevice} {
		m.rejected.WithLabelValues(r)
	}
	for _, k := range []string{storedProgress, storedStatus} {
		m.stored.WithLabelValues(k)
	}
	for _, t := range []string{targetPostgres, targetTemporal} {
		m.errors.WithLabelValues(t)
	}
	return m
}

func (m *bridgeMetrics) observeSignal(since time.Time, now time.Time) {
	m.latency.Observe(now.Sub(since).Seconds())
}

// Collector returns the bridge's metrics for a Prometheus registry: its counters (Stats),
// rejections by reason, errors by target, the messages queued in its shards, the messages
// taken and not yet acknowledged, and the receive-to-signal latency.
func (b *Bridge) Collector() prometheus.Collector { return bridgeCollector{b} }

type bridgeCollector struct{ b *Bridge }

// The counters read from Stats, with what they count.
var statDescs = []struct {
	desc *prometheus.Desc
	get  func(Stats) int64
}{
	{counterDesc("otaflow_bridge_messages_received_total", "Messages taken from the broker, redeliveries and duplicates included."), func(s Stats) int64 { return s.Received }},
	{counterDesc("otaflow_bridge_signals_total", "Signals sent to device upgrade workflows, those finding no running workflow included."), func(s Stats) int64 { return s.Signalled }},
	{counterDesc("otaflow_bridge_signals_no_workflow_total", "Signals whose device had no upgrade running."), func(s Stats) int64 { return s.NoWorkflow }},
	{counterDesc("otaflow_bridge_progress_coalesced_total", "Progress reports stored but not forwarded to the workflow (coalesced, replaced within their merge window, or made moot there)."), func(s Stats) int64 { return s.Coalesced }},
	{counterDesc("otaflow_bridge_retries_total", "Attempts repeated after a transient failure of PostgreSQL or Temporal."), func(s Stats) int64 { return s.Retries }},
	{counterDesc("otaflow_bridge_duplicates_skipped_total", "Messages the broker sent again while the first copy was processed; skipped."), func(s Stats) int64 { return s.Duplicates }},
	{counterDesc("otaflow_bridge_retained_ignored_total", "Retained messages a new subscription replayed; ignored."), func(s Stats) int64 { return s.Ignored }},
	{counterDesc("otaflow_bridge_messages_acked_total", "Messages acknowledged to the broker."), func(s Stats) int64 { return s.Acked }},
	{counterDesc("otaflow_bridge_messages_unfinished_total", "Messages left unacknowledged at shutdown, for the broker to deliver again."), func(s Stats) int64 { return s.Unfinished }},
	{counterDesc("otaflow_bridge_status_delayed_total", "Status reports that waited for their device's flood budget (stored later, or superseded by a newer one)."), func(s Stats) int64 { return s.Delayed }},
}

// shedDesc counts what the flood limit did not store, by reason (ShedReasons); the counts per
// device are in the log and in PostgreSQL's shed_reports, not in labels.
var shedDesc = prometheus.NewDesc("otaflow_bridge_reports_shed_total",
	"Reports over their device's flood budget acknowledged without being stored, by reason (progress, repeat, invalid, superseded_status).",
	[]string{"reason"}, nil)

var (
	queueDesc = prometheus.NewDesc("otaflow_bridge_queue_depth",
		"Messages waiting in the bridge's shard queues (it stops reading from the broker when they are full).", nil, nil)
	queueCapDesc = prometheus.NewDesc("otaflow_bridge_queue_capacity", "Room in the bridge's shard queues, in messages.", nil, nil)
	pendingDesc  = prometheus.NewDesc("otaflow_bridge_acks_pending",
		"QoS 1 messages taken from the broker and not yet acknowledged.", nil, nil)
)

func counterDesc(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }

func (c bridgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, s := range statDescs {
		ch <- s.desc
	}
	ch <- queueDesc
	ch <- queueCapDesc
	ch <- pendingDesc
	ch <- shedDesc
	c.b.metrics.rejected.Describe(ch)
	c.b.metrics.stored.Describe(ch)
	c.b.metrics.errors.Describe(ch)
	c.b.metrics.latency.Describe(ch)
}

func (c bridgeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.b.Stats()
	for _, s := range statDescs {
		ch <- prometheus.MustNewConstMetric(s.desc, prometheus.CounterValue, float64(s.get(st)))
	}
	depth := 0
	for _, q := range c.b.queues {
		depth += len(q)
	}
	ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(depth))
	ch <- prometheus.MustNewConstMetric(queueCapDesc, prometheus.GaugeValue, float64(len(c.b.queues)*c.b.cfg.QueueSize))
	ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(c.b.pending.count()))
	shed := map[string]int64{}
	for _, t := range c.b.ShedCounts() {
		shed[t.Reason] += t.Count
	}
	for _, r := range ShedReasons {
		ch <- prometheus.MustNewConstMetric(shedDesc, prometheus.CounterValue, float64(shed[r]), r)
	}
	c.b.metrics.rejected.Collect(ch)
	c.b.metrics.stored.Collect(ch)
	c.b.metrics.errors.Collect(ch)
	c.b.metrics.latency.Collect(ch)
}
