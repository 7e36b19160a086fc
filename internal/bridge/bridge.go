// Package bridge is OTAflow's MQTT bridge: it subscribes to the devices' progress and status
// topics, validates every message against the device protocol (PROTOCOL.md), records it in
// PostgreSQL and signals the device's upgrade workflow.
//
// Delivery is at least once and nothing is lost: the bridge subscribes at QoS 1 with a
// persistent session and acknowledges a message only after it has been stored and signalled
// (or recorded as rejected). A bridge that crashes or stops has its unacknowledged messages
// redelivered by the broker when it comes back with the same client ID. Failures of the
// database or of Temporal are retried with capped exponential backoff until they succeed or
// the bridge stops; the message is never acknowledged before.
//
// Messages are processed concurrently in shards keyed by device ID, so one device's reports
// are handled in the order the broker delivered them. Each shard takes what is queued for it,
// up to Config.BatchSize messages, and records the batch in one PostgreSQL round trip and
// transaction (store.Store.RecordBatch): the valid reports, in order, and the rejected
// messages; a report of an unregistered device is then recorded as rejected without failing
// the others. It then signals the batch's reports, different devices concurrently (at most
// Config.SignalConcurrency signals at once across the bridge) and each device's in order, and
// acknowledges each message once it is done. Under light load a batch is one message; under
// heavy load batches grow and the cost of a database round trip is shared.
//
// Shard queues are bounded; when they are full the MQTT client's message handler blocks,
// which stops reading from the broker, so the bridge holds at most Shards × (QueueSize +
// BatchSize) messages however many devices publish. (MQTT 3.1.1 has no flow control: a
// broker that drops messages for a client that reads slowly, as mochi does past its
// per-client in-flight limit, must have room for a bridge that is held up by a database or
// Temporal outage. internal/dev/broker keeps those that find mochi's write queue full.)
//
// Progress reports are coalesced before they reach Temporal (see Config.ProgressInterval,
// Config.ProgressStep and Config.ProgressMerge) to keep workflow histories small: every signal
// costs its workflow about four history events. PostgreSQL gets every report within its
// device's budget, and the device's upgrade record follows the download (downloading,
// downloaded, the progress) from the stored reports.
//
// Every device has a budget of reports (Config.Flood, see flood.go), checked by the MQTT
// handler before a message is queued: what a flooding device sends beyond it is counted, not
// stored, and never occupies the queues the devices share; its status reports, error codes and
// progress 100 are never lost to it.
package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// Signaler sends a signal to a workflow. Temporal's client.Client satisfies it.
type Signaler interface {
	SignalWorkflow(ctx context.Context, workflowID, runID, signalName string, arg any) error
}

// Store records what devices report. *store.Store satisfies it.
type Store interface {
	// RecordBatch stores progress and status reports, in order, and messages the bridge
	// refused (with why), all or nothing. It returns, for each report, whether it was stored:
	// false when its device is not registered, which does not stop the others.
	RecordBatch(ctx context.Context, reports []store.Report, rejected []store.Rejected) (stored []bool, err error)
}

var _ Store = (*store.Store)(nil)

// Defaults of the Config settings left zero.
const (
	DefaultClientID = "otaflow-bridge"
	// DefaultProgressInterval 0: intermediate progress is not forwarded.
	DefaultProgressInterval  = time.Duration(0)
	DefaultProgressMerge     = 5 * time.Second
	DefaultShards            = 8
	DefaultQueueSize         = 64
	DefaultBatchSize         = 64
	DefaultSignalConcurrency = 64
	DefaultRetryMin          = 100 * time.Millisecond
	DefaultRetryMax          = 30 * time.Second
	DefaultAttemptTimeout    = 15 * time.Second
	DefaultShutdownTimeout   = 10 * time.Second
	DefaultStatsInterval     = 5 * time.Minute
	DefaultCoalesceIdle      = time.Hour
	DefaultFatalAfter        = 2 * time.Minute
)

// MaxStoredPayload is how many bytes of a rejected message's payload are kept; a longer
// payload is cut there and a marker saying how long it was is appended.
const MaxStoredPayload = protocol.MaxPayloadSize

// Config configures a Bridge. Zero values take the defaults above.
type Config struct {
	// BrokerURL is the MQTT broker, such as tcp://localhost:1883 (schemes tcp, mqtt, ssl,
	// mqtts, ws, wss; see mqttconn.Options). Credentials in the URL are used unless Username
	// is set. Run needs it.
	BrokerURL string
	// Username and Password are the bridge's own service credentials.
	Username, Password string
	// TLS secures the connection to the broker (a CA bundle, a client certificate; see
	// tlsconfig.Files.Config); BrokerURL must then use a TLS scheme. Nil: the system's roots
	// for a TLS URL, no TLS otherwise.
	TLS *tls.Config
	// ClientID is the MQTT client ID, fixed so that the broker keeps the session (and the
	// messages that arrive while the bridge is down). Every bridge sharing the load with
	// Shared needs its own. Default DefaultClientID.
	ClientID string
	// Shared subscribes through the shared subscription group protocol.SharedGroup, so that
	// several bridges split the messages between them. Note that the broker then picks a
	// bridge per message: one device's reports may be handled by different bridges and so
	// reach its workflow out of order.
	Shared bool

	// ProgressInterval, when more than 0, forwards an intermediate progress report (neither
	// the first of an attempt, nor 100, nor an error code) when this long has passed since
	// the device's last forwarded one. 0, the default (DefaultProgressInterval), forwards
	// none: the upgrade record shows the download's progress (the bridge moves it on as it
	// stores the reports, see store.Store.RecordBatch) and the workflow reads the stored
	// reports when its timers fire, so intermediate signals only lengthen its history.
	ProgressInterval time.Duration
	// ProgressStep, when more than 0, forwards a progress report that moved at least this
	// many points from the last forwarded one. 0 turns the rule off.
	ProgressStep int
	// ProgressMerge is the merge window of forwarded progress: a progress report that is
	// forwarded (the first of an attempt, 100, one the rules above let through; error codes
	// never wait) is held for up to this long after the first one held, and a later one of
	// the device within the window replaces it, so that a download that ends within the
	// window (first report, then 100) costs one signal. When the window ends, the held
	// report is signalled. A status report is never delayed: one that shows the held
	// report's version for its type (protocol.VersionKey) drops it (the install took; the
	// progress is moot); any other status report has the held report signalled first. An
	// error code drops it. Each device's signals keep the order of its reports.
	//
	// Its message is acknowledged once stored, as any progress report's: the held signal is
	// in memory only, and a bridge that crashes loses it. That delays, not loses, what the
	// workflow learns: it reads the stored reports (and the upgrade record) when its timer
	// fires. A bridge that stops cleanly signals what it holds first. 0 means the default
	// DefaultProgressMerge; less than 0 turns the window off (forwarded reports are
	// signalled at once).
	ProgressMerge time.Duration
	// CoalesceIdle drops the coalescing state of a device silent for this long, bounding
	// memory when devices stop reporting halfway. Default DefaultCoalesceIdle.
	CoalesceIdle time.Duration

	// Shards is how many messages are processed at once (each shard handles its devices in
	// order). Default DefaultShards.
	Shards int
	// QueueSize is how many messages wait per shard before the bridge stops reading from the
	// broker. Default DefaultQueueSize.
	QueueSize int
	// BatchSize is how many of its queued messages a shard takes at once: their reports and
	// rejections are stored in one database round trip, then each is signalled and
	// acknowledged in turn. A shard does not wait for a batch to fill; under light load
	// batches hold one message. The bridge holds at most Shards × (QueueSize + BatchSize)
	// unacknowledged messages (plus one its MQTT handler is queueing). Default
	// DefaultBatchSize.
	BatchSize int
	// SignalConcurrency is how many signals the bridge sends at once, at most. Within a batch
	// the reports of different devices are signalled concurrently (each device's in order),
	// so that a slow Temporal round trip does not bound the bridge to one signal per shard at
	// a time. Default DefaultSignalConcurrency.
	SignalConcurrency int

	// RetryMin and RetryMax bound the exponential backoff between attempts after a transient
	// failure. Defaults DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// AttemptTimeout bounds one database write or one signal. Default DefaultAttemptTimeout.
	AttemptTimeout time.Duration
	// ShutdownTimeout bounds how long Run, once its context is done, waits for the messages
	// already taken from the broker; those not finished by then are left unacknowledged for
	// the broker to redeliver. Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// StatsInterval is how often a summary of the counters is logged at Info level, when
	// anything happened; less than 0 turns it off. Default DefaultStatsInterval.
	StatsInterval time.Duration
	// Flood is the per-device flood limit (see FloodConfig); the defaults follow PROTOCOL.md.
	Flood FloodConfig

	// FatalAfter is how long Temporal may keep refusing the bridge outright (its namespace
	// not found, permission denied) before Run gives up with ErrTemporalRefused, as the
	// Temporal SDK's workers do; the messages in hand stay unacknowledged for the next
	// bridge. Default DefaultFatalAfter.
	FatalAfter time.Duration

	// Logger receives the bridge's logs. Default slog.Default().
	Logger *slog.Logger
	// Now returns the current time; tests replace it. Default time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = DefaultClientID
	}
	setDefault(&c.ProgressMerge, DefaultProgressMerge)
	setDefault(&c.CoalesceIdle, DefaultCoalesceIdle)
	setDefault(&c.RetryMin, DefaultRetryMin)
	setDefault(&c.RetryMax, DefaultRetryMax)
	setDefault(&c.AttemptTimeout, DefaultAttemptTimeout)
	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDefault(&c.StatsInterval, DefaultStatsInterval)
	setDefault(&c.FatalAfter, DefaultFatalAfter)
	if c.Shards == 0 {
		c.Shards = DefaultShards
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.SignalConcurrency == 0 {
		c.SignalConcurrency = DefaultSignalConcurrency
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Flood = c.Flood.withDefaults()
	return c
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

func (c Config) validate() error {
	switch {
	case c.ProgressInterval < 0:
		return fmt.Errorf("progress interval must not be negative, not %s", c.ProgressInterval)
	case c.ProgressStep < 0 || c.ProgressStep > 100:
		return fmt.Errorf("progress step must be 0 to 100, not %d", c.ProgressStep)
	case c.Shards < 1 || c.Shards > 1024:
		return fmt.Errorf("shards must be 1 to 1024, not %d", c.Shards)
	case c.QueueSize < 1:
		return fmt.Errorf("queue size must be at least 1, not %d", c.QueueSize)
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return fmt.Errorf("batch size must be 1 to 10000, not %d", c.BatchSize)
	case c.SignalConcurrency < 1 || c.SignalConcurrency > 10000:
		return fmt.Errorf("signal concurrency must be 1 to 10000, not %d", c.SignalConcurrency)
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return fmt.Errorf("retry backoff must satisfy 0 < min <= max, not %s..%s", c.RetryMin, c.RetryMax)
	case c.AttemptTimeout <= 0 || c.ShutdownTimeout <= 0 || c.CoalesceIdle <= 0 || c.FatalAfter <= 0:
		return errors.New("attempt timeout, shutdown timeout, coalesce idle time and fatal-after time must be positive")
	case len(c.ClientID) > 128:
		return fmt.Errorf("client ID is longer than 128 characters")
	}
	return c.Flood.validate()
}

// Stats counts what a Bridge did since it was created.
type Stats struct {
	// Received counts the messages taken from the broker (redeliveries included).
	Received int64 `json:"received"`
	// Rejected counts the messages refused and recorded as rejected.
	Rejected int64 `json:"rejected"`
	// Stored counts the valid progress and status reports recorded.
	Stored int64 `json:"stored"`
	// Signalled counts the signals sent, NoWorkflow included.
	Signalled int64 `json:"signalled"`
	// NoWorkflow counts the signals whose workflow did not exist or had finished.
	NoWorkflow int64 `json:"no_workflow"`
	// Coalesced counts the progress reports stored but not forwarded to the workflow: held
	// back by the coalescing rules, replaced by a later one within their merge window, or
	// made moot there by an error code or by a status report showing the new version.
	Coalesced int64 `json:"coalesced"`
	// Retries counts the attempts repeated after a transient failure.
	Retries int64 `json:"retries"`
	// Duplicates counts the messages the broker sent again, on the same connection, while the
	// first copy was still being processed; they are not processed twice (the first copy's
	// acknowledgement covers them). Received includes them.
	Duplicates int64 `json:"duplicates"`
	// Ignored counts the retained messages a new subscription replayed (they were handled
	// when first published).
	Ignored int64 `json:"ignored"`
	// Acked counts the messages acknowledged to the broker.
	Acked int64 `json:"acked"`
	// Unfinished counts the messages given up at shutdown without acknowledgement, for the
	// broker to redeliver.
	Unfinished int64 `json:"unfinished"`
	// Shed counts the reports the flood limit acknowledged without storing them, beyond their
	// devices' budgets (ShedCounts has them by device and reason).
	Shed int64 `json:"shed"`
	// Delayed counts the status reports that waited for their devices' budgets (stored later,
	// or replaced by a newer one).
	Delayed int64 `json:"delayed"`
}

type counters struct {
	received, rejected, stored, signalled, noWorkflow, coalesced, retries, duplicates, ignored, acked, unfinished, shed, delayed atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Received: c.received.Load(), Rejected: c.rejected.Load(), Stored: c.stored.Load(),
		Signalled: c.signalled.Load(), NoWorkflow: c.noWorkflow.Load(), Coalesced: c.coalesced.Load(),
		Retries: c.retries.Load(), Duplicates: c.duplicates.Load(), Ignored: c.ignored.Load(), Acked: c.acked.Load(), Unfinished: c.unfinished.Load(),
		Shed: c.shed.Load(), Delayed: c.delayed.Load(),
	}
}

// message is one message taken from the broker. paho's mqtt.Message satisfies it.
type message interface {
	Topic() string
	Payload() []byte
	// Retained reports a retained message replayed to a new subscription.
	Retained() bool
	// Ack acknowledges the message to the broker.
	Ack()
}

// inbound is a message waiting in a shard queue.
type inbound struct {
	msg message
	at  time.Time
}

// Bridge moves device reports from MQTT to PostgreSQL and Temporal. Create it with New and
// start it with Run.
type Bridge struct {
	cfg   Config
	sig   Signaler
	store Store
	log   *slog.Logger
	opts  *mqtt.ClientOptions // nil without a BrokerURL (tests of the message handling)
	stats counters
	// metrics holds what Collector exports beyond the counters.
	metrics *bridgeMetrics
	flood   *floodLimiter // nil with the flood limit off

	pending     pendingIDs // packet IDs of the messages taken and not acknowledged
	queues      []chan inbound
	kicks       []chan struct{} // per shard: wake its worker to forward the held reports due
	signalSlots chan struct{}   // holds a token per signal being sent (SignalConcurrency)
	stopping    chan struct{}   // closed when Run's context is done: take no more messages
	refused     chan error      // receives the broker's refusal of the subscriptions
	fatal       chan error      // receives an error that ends Run (ErrTemporalRefused)
	rejectLog   logLimiter
	ready       chan struct{} // closed once connected and subscribed
	readyOnce   sync.Once
	running     atomic.Bool
}

// New checks cfg and returns a Bridge that records in st and signals through sig. It does
// not connect; Run does.
func New(cfg Config, sig Signaler, st Store) (*Bridge, error) {
	if sig == nil || st == nil {
		return nil, errors.New("new bridge: signaler and store are required")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("new bridge: %w", err)
	}
	b := &Bridge{cfg: cfg, sig: sig, store: st, log: cfg.Logger, metrics: newBridgeMetrics(),
		stopping: make(chan struct{}), refused: make(chan error, 1), fatal: make(chan error, 1), ready: make(chan struct{})}
	if cfg.BrokerURL != "" {
		opts, err := b.clientOptions()
		if err != nil {
			return nil, fmt.Errorf("new bridge: %w", err)
		}
		b.opts = opts
	}
	if !cfg.Flood.Off {
		b.flood = newFloodLimiter(b, cfg.Flood)
	}
	b.signalSlots = make(chan struct{}, cfg.SignalConcurrency)
	b.queues = make([]chan inbound, cfg.Shards)
	b.kicks = make([]chan struct{}, cfg.Shards)
	for i := range b.queues {
		b.queues[i] = make(chan inbound, cfg.QueueSize)
		b.kicks[i] = make(chan struct{}, 1)
	}
	return b, nil
}

// flushDue wakes every shard worker to forward the held progress reports whose merge windows
// have ended by Config.Now (each worker's timer does so too; tests with a fake clock call it).
func (b *Bridge) flushDue() {
	for _, k := range b.kicks {
		select {
		case k <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// Ready is closed once Run has connected to the broker and subscribed: from then on the
// broker keeps, in the bridge's session, every message for it.
func (b *Bridge) Ready() <-chan struct{} { return b.ready }

// Stats returns the bridge's counters.
func (b *Bridge) Stats() Stats { return b.stats.snapshot() }

// shardOf picks the shard of a topic by its device ID, so one device's messages stay in order.
func (b *Bridge) shardOf(topic string) int {
	rest := strings.TrimPrefix(topic, protocol.TopicPrefix)
	device, _, _ := strings.Cut(rest, "/")
	h := fnv.New32a()
	_, _ = h.Write([]byte(device))
	return int(h.Sum32() % uint32(len(b.queues)))
}

// deliver queues a message for its shard, blocking while the queue is full. Once the bridge
// is stopping it leaves the message unacknowledged for the broker to redeliver.
func (b *Bridge) deliver(m message) { b.deliverAt(m, b.cfg.Now()) }

// deliverAt is deliver of a message received at at.
func (b *Bridge) deliverAt(m message, at time.Time) {
	b.stats.received.Add(1)
	in := inbound{msg: m, at: at}
	select {
	case <-b.stopping:
		b.stats.unfinished.Add(1)
		return
	default:
	}
	select {
	case b.queues[b.shardOf(m.Topic())] <- in:
	case <-b.stopping:
		b.stats.unfinished.Add(1)
	}
}

// startWorkers starts one goroutine per shard. They process messages until stopping is
// closed, then finish what is queued: each message gets its attempts until stopCtx is done,
// then one more attempt each under workCtx (cancelled at the shutdown deadline). The
// returned function waits for them.
func (b *Bridge) startWorkers(stopCtx, workCtx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for i, q := range b.queues {
		w := b.newWorker(i, stopCtx, workCtx)
		wg.Go(func() { w.loop(q) })
	}
	if b.flood != nil {
		wg.Go(func() { b.flood.run(workCtx) })
	}
	return wg.Wait
}

// newWorker returns the worker of shard i.
func (b *Bridge) newWorker(i int, stopCtx, workCtx context.Context) *worker {
	return &worker{b: b, id: i, stopCtx: stopCtx, workCtx: workCtx,
		coalescer: newCoalescer(b.cfg.ProgressInterval, b.cfg.ProgressStep, b.cfg.CoalesceIdle, max(b.cfg.ProgressMerge, 0)),
		kick:      b.kicks[i],
		batch:     make([]item, 0, b.cfg.BatchSize)}
}

// logLimiter lets through at most logBurst log lines per logWindow, so that a device
// flooding the bridge with bad messages does not flood its logs; it counts what it holds back.
type logLimiter struct {
	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

const (
	logBurst  = 20
	logWindow = time.Minute
)

// allow reports whether a line may be logged now, and how many were held back since the
// last one that was.
func (l *logLimiter) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.start) >= logWindow {
		l.start, l.n = now, 0
	}
	if l.n >= logBurst {
		l.suppressed++
		return false, 0
	}
	l.n++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// logStats logs a summary of the counters if anything changed since last.
func (b *Bridge) logStats(last *Stats) {
	s := b.Stats()
	if s == *last {
		return
	}
	*last = s
	b.log.Info("bridge stats", "received", s.Received, "stored", s.Stored, "rejected", s.Rejected,
		"signalled", s.Signalled, "no_workflow", s.NoWorkflow, "coalesced", s.Coalesced,
		"retries", s.Retries, "duplicates", s.Duplicates, "ignored", s.Ignored, "acked", s.Acked, "unfinished", s.Unfinished,
		"shed", s.Shed, "delayed", s.Delayed)
}
