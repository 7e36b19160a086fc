// Package notify delivers OTAflow's event notifications to webhook receivers: an HTTP POST of
// the event's JSON (ota.Event), signed with HMAC-SHA256 over the body with the receiver's
// shared secret, carrying the event's ID as its idempotency key.
//
// Events wait in PostgreSQL (notify_outbox), written in the transaction that records what they
// tell; the notifier workflow's DeliverNotifications activity delivers them with Deliverer,
// in order per receiver and stream (a device, a rollout), retrying each with exponential
// backoff until its retry budget is spent: a receiver that is down gets every event later,
// at least once. An event still undelivered then is recorded as undeliverable
// (notify_outbox.failed_at), counted, and the events behind it go on.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// Headers of a delivery.
const (
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256 of the body under the secret.
	HeaderSignature = "X-OTAflow-Signature"
	// HeaderEvent is the event's type.
	HeaderEvent = "X-OTAflow-Event"
	// HeaderIdempotencyKey is the event's ID, the same on every delivery of it.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderAttempt counts the deliveries of the event to this receiver, 1 for the first.
	HeaderAttempt = "X-OTAflow-Attempt"
)

// Sign returns the signature header value of body under secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether header is body's signature under secret (compared in constant time).
func Verify(secret, body []byte, header string) bool {
	return hmac.Equal([]byte(header), []byte(Sign(secret, body)))
}

// Receiver is a webhook receiver: where events go, and the secret that signs them.
type Receiver struct {
	URL    string
	Secret []byte
}

// Store is what Deliverer needs of PostgreSQL. *store.Store satisfies it.
type Store interface {
	DueNotifications(ctx context.Context, limit int) ([]store.Notification, error)
	NotificationDelivered(ctx context.Context, id int64) error
	NotificationFailed(ctx context.Context, id int64, reason string, retryIn time.Duration, giveUp bool) error
	GetEndpoint(ctx context.Context, id int64) (store.Endpoint, error)
}

// Defaults of Deliverer.
const (
	DefaultRetryFor    = 24 * time.Hour
	DefaultMinBackoff  = time.Second
	DefaultMaxBackoff  = 10 * time.Minute
	DefaultTimeout     = 10 * time.Second
	DefaultConcurrency = 16
	DefaultPoll        = 500 * time.Millisecond
)

// Deliverer delivers the events due. Zero settings take the defaults.
type Deliverer struct {
	Store Store
	// Deployment is the deployment's own receiver (worker --notify-url); nil when it has
	// none, and then its events are not stored.
	Deployment *Receiver
	Settings
	Logger *slog.Logger

	once    sync.Once
	metrics *deliveryMetrics
}

// Settings are how a Deliverer delivers.
type Settings struct {
	// Client sends the requests; nil means a client with Timeout.
	Client *http.Client
	// RetryFor is the retry budget: an event not delivered that long after it happened is
	// given up.
	RetryFor time.Duration
	// MinBackoff and MaxBackoff bound the wait before the next attempt, which doubles with
	// each failed one.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one request.
	Timeout time.Duration
	// Concurrency is how many deliveries run at once (of different streams).
	Concurrency int
	// Poll is how often the outbox is read while nothing is due.
	Poll time.Duration
}

type deliveryMetrics struct {
	delivered, attemptsFailed, givenUp *prometheus.CounterVec
	latency                            prometheus.Histogram
	lost                               prometheus.Counter
}

func (d *Deliverer) init() {
	d.once.Do(func() {
		if d.RetryFor <= 0 {
			d.RetryFor = DefaultRetryFor
		}
		if d.MinBackoff <= 0 {
			d.MinBackoff = DefaultMinBackoff
		}
		if d.MaxBackoff < d.MinBackoff {
			d.MaxBackoff = max(DefaultMaxBackoff, d.MinBackoff)
		}
		if d.Timeout <= 0 {
			d.Timeout = DefaultTimeout
		}
		if d.Concurrency <= 0 {
			d.Concurrency = DefaultConcurrency
		}
		if d.Poll <= 0 {
			d.Poll = DefaultPoll
		}
		if d.Client == nil {
			d.Client = &http.Client{Timeout: d.Timeout}
		}
		if d.Logger == nil {
			d.Logger = slog.Default()
		}
		d.metrics = &deliveryMetrics{
			delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otaflow_notifications_delivered_total",
				Help: "Event notifications delivered (a 2xx answer), by event type."}, []string{"event"}),
			attemptsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otaflow_notification_attempts_failed_total",
				Help: "Delivery attempts that failed (no answer, or not 2xx) and will be retried, by event type."}, []string{"event"}),
			givenUp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otaflow_notifications_failed_total",
				Help: "Event notifications given up after their retry budget, by event type."}, []string{"event"}),
			lost: prometheus.NewCounter(prometheus.CounterOpts{Name: "otaflow_notifications_lost_total",
				Help: "Events that could not be stored with the upgrade they tell of (the upgrade was recorded; see the worker's log)."}),
			latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "otaflow_notification_delay_seconds",
				Help:    "Time from an event to its delivery.",
				Buckets: []float64{0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400}}),
		}
		for _, ev := range []string{ota.EventUpgradeFinished, ota.EventRolloutWaveFinished, ota.EventRolloutPaused,
			ota.EventRolloutCompleted, ota.EventRolloutAborted, ota.EventRolloutCanceled, ota.EventRolloutFailed} {
			d.metrics.delivered.WithLabelValues(ev)
			d.metrics.attemptsFailed.WithLabelValues(ev)
			d.metrics.givenUp.WithLabelValues(ev)
		}
	})
}

// Collector returns the delivery counters for a Prometheus registry.
func (d *Deliverer) Collector() prometheus.Collector {
	d.init()
	return collectors{d.metrics.delivered, d.metrics.attemptsFailed, d.metrics.givenUp, d.metrics.latency, d.metrics.lost}
}

type collectors []prometheus.Collector

func (cs collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range cs {
		c.Describe(ch)
	}
}

func (cs collectors) Collect(ch chan<- prometheus.Metric) {
	for _, c := range cs {
		c.Collect(ch)
	}
}

// EventLost counts an event that could not be stored.
func (d *Deliverer) EventLost() {
	d.init()
	d.metrics.lost.Inc()
}

// Run delivers the events due until ctx is done or the run time is over, reading the outbox
// every Poll while nothing is due, and calling heartbeat after each round. It returns what it
// did; an error only when it could not read the outbox.
func (d *Deliverer) Run(ctx context.Context, run time.Duration, heartbeat func(ota.DeliverResult)) (ota.DeliverResult, error) {
	d.init()
	var res ota.DeliverResult
	end := time.Now().Add(run)
	for {
		due, err := d.Store.DueNotifications(ctx, 4*d.Concurrency)
		if err != nil {
			return res, err
		}
		before := res.Delivered + res.GivenUp
		d.deliverAll(ctx, due, &res)
		if heartbeat != nil {
			heartbeat(res)
		}
		if res.Delivered+res.GivenUp > before {
			continue // a stream moved on: its next event may be due now
		}
		wait := min(d.Poll, time.Until(end))
		if wait <= 0 {
			return res, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return res, ctx.Err()
		}
	}
}

// deliverAll delivers a batch of events of different streams, Concurrency at a time.
func (d *Deliverer) deliverAll(ctx context.Context, due []store.Notification, res *ota.DeliverResult) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, d.Concurrency)
	receivers := map[int64]*Receiver{}
	for _, n := range due {
		r, ok := receivers[n.Endpoint]
		if !ok {
			r = d.receiver(ctx, n.Endpoint)
			receivers[n.Endpoint] = r
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			outcome := d.deliver(ctx, r, n)
			mu.Lock()
			defer mu.Unlock()
			switch outcome {
			case delivered:
				res.Delivered++
			case failed:
				res.Failed++
			case gaveUp:
				res.GivenUp++
			}
		})
	}
	wg.Wait()
}

// receiver returns the receiver of an endpoint, nil when there is none (any more).
func (d *Deliverer) receiver(ctx context.Context, endpoint int64) *Receiver {
	if endpoint == store.DeploymentEndpoint {
		return d.Deployment
	}
	e, err := d.Store.GetEndpoint(ctx, endpoint)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			d.Logger.Warn("Could not read a webhook receiver", "endpoint", endpoint, "error", err)
		}
		return nil
	}
	return &Receiver{URL: e.URL, Secret: []byte(e.Secret)}
}

type outcome int

const (
	delivered outcome = iota
	failed
	gaveUp
	skipped
)

// deliver makes one delivery attempt of n and records how it went.
func (d *Deliverer) deliver(ctx context.Context, r *Receiver, n store.Notification) outcome {
	var err error
	if r == nil {
		err = errors.New("no receiver: the worker delivering has no --notify-url, or the rollout's receiver was removed")
	} else {
		err = d.post(ctx, r, n)
	}
	if ctx.Err() != nil {
		return skipped // stopping: the attempt is not the receiver's failure
	}
	if err == nil {
		if rerr := d.Store.NotificationDelivered(ctx, n.ID); rerr != nil {
			d.Logger.Warn("Delivered a notification but could not record it; it will be delivered again", "event", n.EventID, "error", rerr)
			return failed
		}
		d.metrics.delivered.WithLabelValues(n.EventType).Inc()
		d.metrics.latency.Observe(time.Since(n.CreatedAt).Seconds())
		return delivered
	}
	backoff := d.MinBackoff
	for i := 0; i < n.Attempts && backoff < d.MaxBackoff; i++ {
		backoff *= 2
	}
	backoff = min(backoff, d.MaxBackoff)
	giveUp := time.Since(n.CreatedAt)+backoff > d.RetryFor
	if rerr := d.Store.NotificationFailed(ctx, n.ID, err.Error(), backoff, giveUp); rerr != nil {
		d.Logger.Warn("Could not record a failed delivery", "event", n.EventID, "error", rerr)
		return failed
	}
	if giveUp {
		d.metrics.givenUp.WithLabelValues(n.EventType).Inc()
		d.Logger.Error("Event notification undeliverable: its retry budget is spent", "event", n.EventID, "type", n.EventType,
			"attempts", n.Attempts+1, "error", err)
		return gaveUp
	}
	d.metrics.attemptsFailed.WithLabelValues(n.EventType).Inc()
	if n.Attempts == 0 || (n.Attempts+1)%10 == 0 {
		d.Logger.Warn("Event notification not delivered; retrying", "event", n.EventID, "attempt", n.Attempts+1, "retry_in", backoff, "error", err)
	}
	return failed
}

// post sends one delivery; a 2xx answer is a delivery.
func (d *Deliverer) post(ctx context.Context, r *Receiver, n store.Notification) error {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(n.Payload))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "OTAflow-Webhook/1")
	req.Header.Set(HeaderEvent, n.EventType)
	req.Header.Set(HeaderIdempotencyKey, n.EventID)
	req.Header.Set(HeaderAttempt, fmt.Sprint(n.Attempts+1))
	req.Header.Set(HeaderSignature, Sign(r.Secret, n.Payload))
	resp, err := d.Client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", Redact(r.URL), err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("POST %s: HTTP %s", Redact(r.URL), resp.Status)
	}
	return nil
}

// Redact drops a URL's user information and query, which may hold credentials.
func Redact(u string) string {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	if scheme, rest, ok := strings.Cut(u, "://"); ok {
		if at := strings.LastIndex(strings.SplitN(rest, "/", 2)[0], "@"); at >= 0 {
			rest = rest[at+1:]
		}
		return scheme + "://" + rest
	}
	return u
}

// SecretEnv is the environment variable that holds a webhook secret when no secret file is
// given.
const SecretEnv = "NOTIFY_SECRET"

// ReadSecret returns a webhook secret: the contents of file (one trailing newline dropped)
// when it is set, otherwise the value of SecretEnv. It is an error to have neither, or an
// empty one.
func ReadSecret(file string, getenv func(string) string) ([]byte, error) {
	var secret []byte
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("webhook secret: %w", err)
		}
		secret = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
	} else {
		secret = []byte(getenv(SecretEnv))
	}
	if len(secret) == 0 {
		return nil, fmt.Errorf("a webhook receiver needs a shared secret: set %s or give a secret file", SecretEnv)
	}
	return secret, nil
}
