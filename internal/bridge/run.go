package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/cenkalti/backoff/v5"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/protocol"
)

// subscribeQoS is the QoS of the bridge's subscriptions (PROTOCOL.md: QoS 1 for everything).
const subscribeQoS = 1

// codePacketIDInUse is the (MQTT 5) reason code mochi returns in a SUBACK whose packet ID
// collides with one of the messages it has in flight to the client.
const codePacketIDInUse = 0x91

// ErrRefused is returned by Run when the broker refuses the bridge's credentials or its
// subscriptions: retrying would not help.
var ErrRefused = errors.New("refused by the MQTT broker")

// ErrTemporalRefused is returned by Run when Temporal has refused the bridge outright (its
// namespace not found, permission denied) for Config.FatalAfter.
var ErrTemporalRefused = errors.New("refused by Temporal")

// Filters returns the topic filters the bridge subscribes to: the progress and status topics
// of every device, as shared subscriptions when shared is set.
func Filters(shared bool) []string {
	filters := []string{protocol.ProgressFilter, protocol.StatusFilter}
	if shared {
		for i, f := range filters {
			filters[i] = protocol.SharedFilter(f)
		}
	}
	return filters
}

// clientOptions builds the paho options: QoS 1 subscriptions in a persistent session under a
// fixed client ID, auto-reconnect, manual acknowledgements, in-order delivery to one handler.
func (b *Bridge) clientOptions() (*mqtt.ClientOptions, error) {
	opts, err := mqttconn.Options(b.cfg.BrokerURL, b.cfg.ClientID, mqttconn.WithTLS(b.cfg.TLS))
	if err != nil {
		return nil, err
	}
	if b.cfg.Username != "" {
		opts.SetUsername(b.cfg.Username)
		opts.SetPassword(b.cfg.Password)
	}
	opts.SetProtocolVersion(4) // MQTT 3.1.1, without paho's silent fallback to 3.1
	opts.SetCleanSession(false)
	opts.SetAutoReconnect(true)
	// Run retries the first connection itself, so that refused credentials end it.
	opts.SetConnectRetry(false)
	// Messages are acknowledged only once stored and signalled.
	opts.SetAutoAckDisabled(true)
	// One handler, called in order: it queues the message for its shard and blocks while the
	// queue is full, which is the back-pressure on the broker.
	opts.SetOrderMatters(true)
	// Every message goes to the default handler, whatever filter matched: paho's router is not
	// relied on to match $share/... filters, and messages the broker sends from the persistent
	// session before the subscriptions are renewed are handled too.
	opts.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { b.receive(m) })
	// Each connection starts with no pending packet ID (see pendingIDs).
	opts.SetConnectionAttemptHandler(func(_ *url.URL, tlsCfg *tls.Config) *tls.Config {
		b.pending.newConnection()
		return tlsCfg
	})
	// paho forgets subscriptions across reconnects unless they are renewed.
	opts.SetOnConnectHandler(b.onConnect)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		b.log.Warn("lost connection to MQTT broker, reconnecting", "error", err)
	})
	return opts, nil
}

// onConnect (re)subscribes after every connection.
func (b *Bridge) onConnect(c mqtt.Client) {
	b.log.Info("connected to MQTT broker", "client_id", b.cfg.ClientID, "shared", b.cfg.Shared)
	err := b.subscribe(c)
	switch {
	case err == nil:
		b.readyOnce.Do(func() { close(b.ready) })
	case errors.Is(err, ErrRefused):
		b.log.Error("subscribe", "error", err)
		select {
		case b.refused <- err:
		default:
		}
	case errors.Is(err, errStopped):
	default: // the connection was lost: the next connection subscribes again
		b.log.Warn("subscribe", "error", err)
	}
}

// subscribe subscribes to Filters(Shared) and drops the subscriptions of the other mode that
// a persistent session may still hold, which would deliver every message twice. A timeout is
// retried while the connection is up.
func (b *Bridge) subscribe(c mqtt.Client) error {
	other := Filters(!b.cfg.Shared)
	if tok := c.Unsubscribe(other...); !tok.WaitTimeout(b.cfg.AttemptTimeout) {
		b.log.Warn("unsubscribe timed out", "filters", other)
	} else if err := tok.Error(); err != nil {
		b.log.Warn("unsubscribe", "filters", other, "error", err)
	}
	filters := map[string]byte{}
	for _, f := range Filters(b.cfg.Shared) {
		filters[f] = subscribeQoS
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-b.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		tok := c.SubscribeMultiple(filters, nil)
		if !tok.WaitTimeout(b.cfg.AttemptTimeout) {
			if !c.IsConnectionOpen() {
				return struct{}{}, backoff.Permanent(fmt.Errorf("subscribe to %v: connection lost", Filters(b.cfg.Shared)))
			}
			return struct{}{}, fmt.Errorf("subscribe to %v: timed out", Filters(b.cfg.Shared))
		}
		if err := tok.Error(); err != nil {
			return struct{}{}, backoff.Permanent(fmt.Errorf("subscribe to %v: %w", Filters(b.cfg.Shared), err))
		}
		idInUse := false
		for f, code := range tok.(*mqtt.SubscribeToken).Result() {
			switch {
			case code <= 2: // granted QoS
			case code == codePacketIDInUse:
				idInUse = true
			default: // 0x80 failure, or an MQTT 5 reason code such as 0x87 not authorized
				return struct{}{}, backoff.Permanent(fmt.Errorf("subscribe to %s: %w (code %#x)", f, ErrRefused, code))
			}
		}
		if idInUse {
			// mochi shares packet IDs between the two directions: a message the broker is
			// redelivering to us from the persistent session holds this ID. The next try
			// takes the next ID, and acknowledged messages free theirs.
			return struct{}{}, &backoff.RetryAfterError{Duration: 10 * time.Millisecond}
		}
		return struct{}{}, nil
	}, backoff.WithBackOff(b.cfg.backOff(b.cfg.RetryMax)), backoff.WithMaxElapsedTime(0))
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return fmt.Errorf("subscribe to %v: %w", Filters(b.cfg.Shared), errStopped)
	}
	return err
}

// connect makes the first connection, retrying unreachable brokers with backoff until ctx is
// done; refused credentials end it with ErrRefused, a failed TLS handshake with
// mqttconn.ErrTLS.
func (b *Bridge) connect(ctx context.Context, c mqtt.Client) error {
	attempt := 0
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		attempt++
		tok := c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			c.Disconnect(0)
			return struct{}{}, backoff.Permanent(ctx.Err())
		}
		err := tok.Error()
		switch {
		case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword), errors.Is(err, packets.ErrorRefusedNotAuthorised),
			errors.Is(err, packets.ErrorRefusedIDRejected), errors.Is(err, packets.ErrorRefusedBadProtocolVersion):
			return struct{}{}, backoff.Permanent(fmt.Errorf("connect to MQTT broker %s as %q: %w: %w",
				credential.RedactURL(b.cfg.BrokerURL), b.cfg.Username, ErrRefused, err))
		case mqttconn.IsTLSFailure(err):
			return struct{}{}, backoff.Permanent(fmt.Errorf("connect to MQTT broker %s: %w: %w",
				credential.RedactURL(b.cfg.BrokerURL), mqttconn.ErrTLS, err))
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b.cfg.backOff(min(b.cfg.RetryMax, 10*time.Second))), backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, _ time.Duration) {
			logRetry(b.log, attempt, "cannot reach MQTT broker, retrying", "broker", credential.RedactURL(b.cfg.BrokerURL), "attempt", attempt, "error", err)
		}))
	if cause := context.Cause(ctx); cause != nil && errors.Is(err, cause) {
		return ctx.Err() // Retry answers with the cause
	}
	return err
}

// Run connects to the broker, subscribes and processes messages until ctx is done. It then
// takes no more messages, waits (at most ShutdownTimeout) for those already taken, and
// disconnects; what was not finished stays unacknowledged for the broker to redeliver. It
// returns nil after a clean stop, ErrRefused wrapped when the broker refuses the bridge (its
// credentials, or its subscriptions, at the start or after a reconnection), mqttconn.ErrTLS
// wrapped when the TLS handshake fails, ErrTemporalRefused wrapped when Temporal refuses it
// for Config.FatalAfter, or ctx's error when ctx ends before the first connection. After an
// error it has stopped as after ctx: what was in hand stays unacknowledged. Run may be called
// once.
func (b *Bridge) Run(ctx context.Context) error {
	if b.opts == nil {
		return errors.New("run bridge: no broker URL configured")
	}
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("run bridge: already run")
	}
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopCtx, stop := context.WithCancel(ctx)
	defer stop()
	wait := b.startWorkers(stopCtx, workCtx)
	shutdown := func() {
		stop()
		close(b.stopping)
		deadline := time.AfterFunc(b.cfg.ShutdownTimeout, cancelWork)
		wait()
		deadline.Stop()
	}

	client := mqtt.NewClient(b.opts)
	if err := b.connect(ctx, client); err != nil {
		shutdown()
		return fmt.Errorf("run bridge: %w", err)
	}
	// Subscriptions the broker refuses at the start end Run; later ones are logged.
	select {
	case <-b.ready:
	case err := <-b.refused:
		shutdown()
		client.Disconnect(250)
		return fmt.Errorf("run bridge: %w", err)
	case <-ctx.Done():
	}
	b.log.Info("bridge running", "broker", credential.RedactURL(b.cfg.BrokerURL), "client_id", b.cfg.ClientID,
		"filters", Filters(b.cfg.Shared), "shards", b.cfg.Shards)

	var last Stats
	var tick <-chan time.Time
	if b.cfg.StatsInterval > 0 {
		t := time.NewTicker(b.cfg.StatsInterval)
		defer t.Stop()
		tick = t.C
	}
	var fatal error
loop:
	for {
		select {
		case <-tick:
			b.logStats(&last)
		case fatal = <-b.refused: // a reconnection's subscriptions refused
			break loop
		case fatal = <-b.fatal:
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	if fatal != nil {
		b.log.Error("bridge stopping on a fatal error", "error", fatal)
	}
	shutdown()
	// Acknowledgements are sent before the DISCONNECT; give them a moment to go out.
	client.Disconnect(250)
	b.logStats(&last)
	if fatal != nil {
		return fmt.Errorf("run bridge: %w", fatal)
	}
	b.log.Info("bridge stopped")
	return nil
}

// backOff is the bridge's backoff between attempts: from RetryMin, doubling up to max, without
// jitter (the bridge is one client, not a fleet).
func (c *Config) backOff(max time.Duration) *backoff.ExponentialBackOff {
	return &backoff.ExponentialBackOff{InitialInterval: c.RetryMin, Multiplier: 2, MaxInterval: max}
}

// logRetry logs a failed attempt before a retry: the first and then every tenth, to keep an
// outage from flooding the logs.
func logRetry(log *slog.Logger, attempt int, msg string, args ...any) {
	if attempt == 1 || attempt%10 == 0 {
		log.Warn(msg, args...)
	}
}

// fail ends Run with err (the first error only).
func (b *Bridge) fail(err error) {
	select {
	case b.fatal <- err:
	default:
	}
}
