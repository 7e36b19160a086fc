package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"go.temporal.io/api/serviceerror"

	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/workflows"
)

// ReasonUnknownDevice is the rejection reason of a message from an unregistered device.
const ReasonUnknownDevice = "unknown device"

// errStopped is returned by retry when the bridge stops before an operation succeeded.
var errStopped = errors.New("bridge stopping")

// worker processes the messages of one shard, one at a time.
type worker struct {
	b  *Bridge
	id int
	// stopCtx is done when the bridge stops: no further retries after it.
	stopCtx context.Context
	// workCtx bounds the attempts themselves; it ends at the shutdown deadline.
	workCtx   context.Context
	coalescer *coalescer
}

func (w *worker) loop(q <-chan inbound) {
	for {
		select {
		case in := <-q:
			w.process(in)
		case <-w.b.stopping:
			for {
				select {
				case in := <-q:
					w.process(in)
				default:
					return
				}
			}
		}
	}
}

// process handles one message to the end and acknowledges it, unless the bridge stopped
// before it could be stored and signalled.
func (w *worker) process(in inbound) {
	if err := w.handle(in); err != nil {
		w.b.stats.unfinished.Add(1)
		w.b.log.Debug("message left unacknowledged for redelivery", "topic", safeText(in.msg.Topic(), 200), "error", err)
		return
	}
	in.msg.Ack()
	w.b.stats.acked.Add(1)
}

// handle validates, stores and signals one message. It returns nil when the message may be
// acknowledged (rejected messages included) and errStopped when the bridge stopped first.
func (w *worker) handle(in inbound) error {
	m := in.msg
	if m.Retained() {
		// A retained message replayed because the bridge (re)subscribed: it was handled when
		// it was published, and replaying it would record stale versions as new.
		w.b.stats.ignored.Add(1)
		return nil
	}
	topic, payload := m.Topic(), m.Payload()
	device, kind, err := protocol.ParseTopic(topic)
	if err != nil {
		return w.reject(in, "", err.Error())
	}
	switch kind {
	case protocol.KindProgress:
		p, err := protocol.ParseProgress(payload)
		if err != nil {
			return w.reject(in, device, err.Error())
		}
		return w.progress(in, device, p)
	case protocol.KindStatus:
		st, err := protocol.ParseStatus(payload)
		if err != nil {
			return w.reject(in, device, err.Error())
		}
		return w.status(in, device, st)
	default:
		return w.reject(in, device, fmt.Sprintf("devices do not publish on %s topics", kind))
	}
}

func (w *worker) progress(in inbound, device string, p protocol.Progress) error {
	err := w.retry("record progress of "+device, func(ctx context.Context) error {
		return w.b.store.RecordProgress(ctx, device, p, in.at)
	})
	if errors.Is(err, store.ErrNotFound) {
		return w.reject(in, device, ReasonUnknownDevice)
	}
	if err != nil {
		return err
	}
	w.b.stats.stored.Add(1)
	if !w.coalescer.forward(device, p, in.at) {
		w.b.stats.coalesced.Add(1)
		return nil
	}
	err = w.signal(device, workflows.SignalProgress, workflows.ProgressSignal{Progress: p, ReceivedAt: in.at})
	if err != nil {
		return err
	}
	w.coalescer.forwarded(device, p, in.at)
	return nil
}

func (w *worker) status(in inbound, device string, st protocol.Status) error {
	err := w.retry("record status of "+device, func(ctx context.Context) error {
		return w.b.store.RecordStatus(ctx, device, st, in.at)
	})
	if errors.Is(err, store.ErrNotFound) {
		return w.reject(in, device, ReasonUnknownDevice)
	}
	if err != nil {
		return err
	}
	w.b.stats.stored.Add(1)
	return w.signal(device, workflows.SignalStatus, workflows.StatusSignal{Status: st, ReceivedAt: in.at})
}

// signal signals the device's upgrade workflow. A workflow that does not exist, or has
// finished, is normal (no upgrade running) and counts as delivered.
func (w *worker) signal(device, name string, arg any) error {
	id := workflows.DeviceWorkflowID(device)
	noWorkflow := false
	err := w.retry("signal "+name+" to "+id, func(ctx context.Context) error {
		err := w.b.sig.SignalWorkflow(ctx, id, "", name, arg)
		var notFound *serviceerror.NotFound
		if errors.As(err, &notFound) {
			noWorkflow = true
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	w.b.stats.signalled.Add(1)
	if noWorkflow {
		w.b.stats.noWorkflow.Add(1)
	}
	return nil
}

// reject logs why a message is refused and records it as rejected.
func (w *worker) reject(in inbound, device, reason string) error {
	topic := safeText(in.msg.Topic(), 256)
	if ok, suppressed := w.b.rejectLog.allow(); ok {
		attrs := []any{"topic", topic, "device", device, "reason", reason}
		if suppressed > 0 {
			attrs = append(attrs, "rejections_not_logged", suppressed)
		}
		w.b.log.Warn("rejected device message", attrs...)
	}
	r := store.Rejected{Topic: topic, DeviceID: device, Reason: safeText(reason, 1024),
		Payload: truncatePayload(in.msg.Payload()), ReceivedAt: in.at}
	err := w.retry("record rejected message", func(ctx context.Context) error {
		return w.b.store.RecordRejected(ctx, r)
	})
	if err != nil {
		return err
	}
	w.b.stats.rejected.Add(1)
	return nil
}

// retry runs op until it succeeds, fails with store.ErrNotFound (returned as is), or the
// bridge stops (errStopped). Each attempt is bounded by AttemptTimeout; the waits between
// attempts grow from RetryMin to RetryMax.
func (w *worker) retry(what string, op func(ctx context.Context) error) error {
	cfg := &w.b.cfg
	backoff := cfg.RetryMin
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(w.workCtx, cfg.AttemptTimeout)
		err := op(ctx)
		cancel()
		if err == nil || errors.Is(err, store.ErrNotFound) {
			if attempt > 1 {
				w.b.log.Info("recovered after transient failures", "op", what, "attempts", attempt)
			}
			return err
		}
		if w.stopCtx.Err() != nil {
			return fmt.Errorf("%s: %w after %d attempts: %w", what, errStopped, attempt, err)
		}
		// Log the first failure and then every tenth, to keep an outage from flooding logs.
		if attempt == 1 || attempt%10 == 0 {
			w.b.log.Warn("transient failure, retrying", "op", what, "attempt", attempt, "backoff", backoff, "error", err)
		}
		w.b.stats.retries.Add(1)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-w.stopCtx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w after %d attempts: %w", what, errStopped, attempt, err)
		}
		backoff = min(2*backoff, cfg.RetryMax)
	}
}

// safeText makes s storable as PostgreSQL text and short: valid UTF-8, no NUL, at most max
// bytes.
func safeText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// truncatePayload keeps at most MaxStoredPayload bytes of a payload, marking a cut.
func truncatePayload(p []byte) []byte {
	if len(p) <= MaxStoredPayload {
		return append([]byte(nil), p...)
	}
	out := append([]byte(nil), p[:MaxStoredPayload]...)
	return fmt.Appendf(out, "...[truncated, %d bytes in all]", len(p))
}
