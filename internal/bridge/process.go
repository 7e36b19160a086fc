package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.temporal.io/api/serviceerror"

	"github.com/cenkalti/backoff/v5"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// ReasonUnknownDevice is the rejection reason of a message from an unregistered device.
const ReasonUnknownDevice = "unknown device"

// errStopped is returned by retry when the bridge stops before an operation succeeded.
var errStopped = errors.New("bridge stopping")

// worker processes the messages of one shard in batches: it takes what is queued (up to
// BatchSize messages), stores the batch in one database round trip, then signals and
// acknowledges the messages, each device's in order.
type worker struct {
	b  *Bridge
	id int
	// stopCtx is done when the bridge stops: no further retries after it.
	stopCtx context.Context
	// workCtx bounds the attempts themselves; it ends at the shutdown deadline.
	workCtx context.Context
	// mu guards coalescer: a batch's devices are signalled concurrently.
	mu        sync.Mutex
	coalescer *coalescer
	// kick wakes the loop to forward the held progress reports whose merge windows have
	// ended (by Config.Now); the loop's own timer does so too.
	kick chan struct{}
	// batch and reports are reused from one batch to the next.
	batch   []item
	reports []store.Report
}

// item is one message of a batch and what became of it.
type item struct {
	in     inbound
	device string
	// report is the index of the message's report in the batch's reports, or -1.
	report   int
	progress protocol.Progress
	status   protocol.Status
	isStatus bool
	// rejection is why the message is refused, or "", and rejectKind the kind of reason
	// (RejectTopic...), for the metrics.
	rejection  string
	rejectKind string
	// ignored is a retained replay, acknowledged without processing.
	ignored bool
	// unfinished is a message left unacknowledged because the bridge stopped first.
	unfinished error
}

// loop processes the shard's batches, and between them forwards the held progress reports
// whose merge windows have ended: a device's held report is signalled either here, while no
// batch is under way, or by the device's own next report in a batch, so that it never
// overtakes nor follows a later report of the device. Once the bridge stops, loop finishes
// what is queued, then forwards every held report.
func (w *worker) loop(q <-chan inbound) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		w.flushHeld(false)
		var windowEnd <-chan time.Time
		if due, ok := w.nextDue(); ok {
			timer.Reset(max(due.Sub(w.b.cfg.Now()), time.Millisecond))
			windowEnd = timer.C
		}
		select {
		case in := <-q:
			w.processBatch(w.take(q, in))
			w.release()
		case <-windowEnd:
		case <-w.kick:
		case <-w.b.stopping:
			for {
				select {
				case in := <-q:
					w.processBatch(w.take(q, in))
					w.release()
				default:
					w.flushHeld(true)
					return
				}
			}
		}
		timer.Stop()
	}
}

func (w *worker) nextDue() (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.coalescer.nextDue()
}

// flushHeld signals the held progress reports whose merge windows have ended, or all of them,
// different devices at the same time. A report whose signal fails (the bridge stopping) is
// lost to the workflow, which reads the stored reports when its timer fires.
func (w *worker) flushHeld(all bool) {
	w.mu.Lock()
	var held map[string]heldProgress
	if all {
		held = w.coalescer.all()
	} else {
		held = w.coalescer.due(w.b.cfg.Now())
	}
	w.mu.Unlock()
	var wg sync.WaitGroup
	for device, h := range held {
		wg.Go(func() {
			if err := w.signalProgress(device, h.p, h.at); err != nil {
				w.b.log.Debug("held progress report not forwarded", "device", device, "progress", h.p.Progress, "error", err)
			}
		})
	}
	wg.Wait()
}

// take makes a batch of first and the messages queued behind it, up to BatchSize; it does
// not wait for more.
func (w *worker) take(q <-chan inbound, first inbound) []item {
	w.batch = append(w.batch[:0], item{in: first})
	for len(w.batch) < w.b.cfg.BatchSize {
		select {
		case in := <-q:
			w.batch = append(w.batch, item{in: in})
		default:
			return w.batch
		}
	}
	return w.batch
}

// release drops the finished batch's references to its messages.
func (w *worker) release() {
	clear(w.batch)
	clear(w.reports)
}

// processBatch handles a batch of messages to the end: it validates each, records the valid
// reports and the rejections in one write, records the reports of unregistered devices as
// rejected, then signals and acknowledges the messages (forwardAll). A message is acknowledged
// only once it is stored and, if forwarded, signalled (or recorded as rejected); those the
// bridge stopped before finishing stay unacknowledged for the broker to redeliver.
func (w *worker) processBatch(batch []item) {
	w.reports = w.reports[:0]
	var rejected []store.Rejected
	for i := range batch {
		it := &batch[i]
		it.report = -1
		w.classify(it)
		switch {
		case it.ignored:
		case it.rejection != "":
			rejected = append(rejected, w.rejection(it))
		case it.isStatus:
			it.report = len(w.reports)
			w.reports = append(w.reports, store.Report{DeviceID: it.device, Status: it.status, ReceivedAt: it.in.at})
		default:
			it.report = len(w.reports)
			w.reports = append(w.reports, store.Report{DeviceID: it.device, Progress: &it.progress, ReceivedAt: it.in.at})
		}
	}

	stored, err := w.record(w.reports, rejected)
	if err != nil {
		w.leave(batch, err)
		return
	}
	w.b.stats.rejected.Add(int64(len(rejected)))
	for i := range batch {
		if batch[i].rejection != "" {
			w.b.metrics.rejected.WithLabelValues(batch[i].rejectKind).Inc()
		}
	}

	// Reports of unregistered devices are recorded as rejected; the others stay stored.
	var unknown []store.Rejected
	for i := range batch {
		if it := &batch[i]; it.report >= 0 && !stored[it.report] {
			it.report, it.rejection, it.rejectKind = -1, ReasonUnknownDevice, RejectUnknownDevice
			unknown = append(unknown, w.rejection(it))
		}
	}
	if len(unknown) > 0 {
		if _, err := w.record(nil, unknown); err != nil {
			for i := range batch {
				if batch[i].rejection == ReasonUnknownDevice {
					batch[i].unfinished = err
				}
			}
		} else {
			w.b.stats.rejected.Add(int64(len(unknown)))
			w.b.metrics.rejected.WithLabelValues(RejectUnknownDevice).Add(float64(len(unknown)))
		}
	}

	w.forwardAll(batch)
}

// forwardAll signals the batch's stored reports and acknowledges its messages. Each device's
// messages are handled in order; different devices' go on at the same time (their signals
// at most SignalConcurrency at once across the bridge).
func (w *worker) forwardAll(batch []item) {
	groups := map[string][]*item{}
	var order []string
	for i := range batch {
		it := &batch[i]
		if it.report < 0 { // rejected, ignored or unfinished: nothing to forward
			w.finish(it)
			continue
		}
		w.b.stats.stored.Add(1)
		if it.isStatus {
			w.b.metrics.stored.WithLabelValues(storedStatus).Inc()
		} else {
			w.b.metrics.stored.WithLabelValues(storedProgress).Inc()
		}
		if _, ok := groups[it.device]; !ok {
			order = append(order, it.device)
		}
		groups[it.device] = append(groups[it.device], it)
	}
	run := func(items []*item) {
		for _, it := range items {
			if err := w.forward(it); err != nil {
				it.unfinished = err
			}
			w.finish(it)
		}
	}
	if len(order) == 1 {
		run(groups[order[0]])
		return
	}
	var wg sync.WaitGroup
	for _, device := range order {
		items := groups[device]
		wg.Go(func() { run(items) })
	}
	wg.Wait()
}

// classify validates a message and fills in its device and report, or why it is rejected.
func (w *worker) classify(it *item) {
	m := it.in.msg
	if m.Retained() {
		// A retained message replayed because the bridge (re)subscribed: it was handled when
		// it was published, and replaying it would record stale versions as new.
		w.b.stats.ignored.Add(1)
		it.ignored = true
		return
	}
	device, kind, err := protocol.ParseTopic(m.Topic())
	if err != nil {
		it.rejection, it.rejectKind = err.Error(), RejectTopic
		return
	}
	it.device = device
	switch kind {
	case protocol.KindProgress:
		p, err := protocol.ParseProgress(m.Payload())
		if err != nil {
			it.rejection, it.rejectKind = err.Error(), RejectPayload
			return
		}
		it.progress = p
	case protocol.KindStatus:
		st, err := protocol.ParseStatus(m.Payload())
		if err != nil {
			it.rejection, it.rejectKind = err.Error(), RejectPayload
			return
		}
		it.status, it.isStatus = st, true
	default:
		it.rejection, it.rejectKind = fmt.Sprintf("devices do not publish on %s topics", kind), RejectKind
	}
}

// record stores reports and rejected messages in one write, retried until it succeeds or
// the bridge stops. It returns, for each report, whether its device is registered.
func (w *worker) record(reports []store.Report, rejected []store.Rejected) ([]bool, error) {
	if len(reports) == 0 && len(rejected) == 0 {
		return nil, nil
	}
	var stored []bool
	err := w.retry(fmt.Sprintf("record %d reports and %d rejected messages", len(reports), len(rejected)), func(ctx context.Context) error {
		var err error
		stored, err = w.b.store.RecordBatch(ctx, reports, rejected)
		if err != nil {
			w.b.metrics.errors.WithLabelValues(targetPostgres).Inc()
		}
		return err
	})
	if err == nil && len(stored) != len(reports) {
		// A Store that breaks its contract must not have messages acknowledged unstored.
		err = fmt.Errorf("record batch: store answered for %d of %d reports", len(stored), len(reports))
		w.b.log.Error("messages left unacknowledged", "error", err)
	}
	return stored, err
}

// forward sends a stored report on to the device's workflow: every status report at once,
// error codes at once, and the other progress reports the coalescer lets through when their
// merge window ends (Config.ProgressMerge), unless a later report of the device makes them
// moot first.
//
// A status report takes the device's held progress report: when the status shows the held
// report's version for its type, the install took and the progress is moot (dropped);
// otherwise the held report is signalled first, then the status, as the device sent them.
// An error code drops the held report.
func (w *worker) forward(it *item) error {
	if it.isStatus {
		w.mu.Lock()
		h, held := w.coalescer.take(it.device)
		w.mu.Unlock()
		if held {
			if it.status[protocol.VersionKey(h.p.Type)] == h.p.Version {
				w.b.stats.coalesced.Add(1)
			} else if err := w.signalProgress(it.device, h.p, h.at); err != nil {
				return err
			}
		}
		err := w.signal(it.device, ota.SignalStatus, ota.StatusSignal{Status: it.status, ReceivedAt: it.in.at})
		if err == nil {
			w.b.metrics.observeSignal(it.in.at, w.b.cfg.Now())
		}
		return err
	}
	w.mu.Lock()
	forward := w.coalescer.forward(it.device, it.progress, it.in.at)
	switch {
	case !forward:
		w.mu.Unlock()
		w.b.stats.coalesced.Add(1)
		return nil
	case it.progress.IsError():
		_, dropped := w.coalescer.take(it.device)
		w.mu.Unlock()
		if dropped {
			w.b.stats.coalesced.Add(1)
		}
	case w.coalescer.merging():
		replaced := w.coalescer.hold(it.device, it.progress, it.in.at)
		w.mu.Unlock()
		if replaced {
			w.b.stats.coalesced.Add(1)
		}
		return nil
	default:
		w.mu.Unlock()
	}
	return w.signalProgress(it.device, it.progress, it.in.at)
}

// signalProgress signals a progress report received at at, and records it forwarded.
func (w *worker) signalProgress(device string, p protocol.Progress, at time.Time) error {
	err := w.signal(device, ota.SignalProgress, ota.ProgressSignal{Progress: p, ReceivedAt: at})
	if err != nil {
		return err
	}
	w.b.metrics.observeSignal(at, w.b.cfg.Now())
	w.mu.Lock()
	w.coalescer.forwarded(device, p, at)
	w.mu.Unlock()
	return nil
}

// finish acknowledges a message, unless the bridge stopped before it was done.
func (w *worker) finish(it *item) {
	if it.unfinished != nil {
		w.b.stats.unfinished.Add(1)
		w.b.log.Debug("message left unacknowledged for redelivery", "topic", safeText(it.in.msg.Topic(), 200), "error", it.unfinished)
		return
	}
	it.in.msg.Ack()
	w.b.stats.acked.Add(1)
}

// leave gives up a batch the bridge stopped before storing: its messages stay
// unacknowledged, except the retained replays, which needed no storing.
func (w *worker) leave(batch []item, err error) {
	for i := range batch {
		if !batch[i].ignored {
			batch[i].unfinished = err
		}
		w.finish(&batch[i])
	}
}

// signal signals the device's upgrade workflow. A workflow that does not exist, or has
// finished, is normal (no upgrade running) and counts as delivered.
func (w *worker) signal(device, name string, arg any) error {
	id := ota.DeviceWorkflowID(device)
	select {
	case w.b.signalSlots <- struct{}{}:
		defer func() { <-w.b.signalSlots }()
	case <-w.workCtx.Done():
		return fmt.Errorf("signal %s to %s: %w", name, id, errStopped)
	}
	noWorkflow := false
	err := w.retry("signal "+name+" to "+id, func(ctx context.Context) error {
		err := w.b.sig.SignalWorkflow(ctx, id, "", name, arg)
		var notFound *serviceerror.NotFound
		if errors.As(err, &notFound) {
			noWorkflow = true
			return nil
		}
		if err != nil {
			w.b.metrics.errors.WithLabelValues(targetTemporal).Inc()
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

// rejection logs why a message is refused and returns its record.
func (w *worker) rejection(it *item) store.Rejected {
	topic := safeText(it.in.msg.Topic(), 256)
	if ok, suppressed := w.b.rejectLog.allow(); ok {
		attrs := []any{"topic", topic, "device", it.device, "reason", it.rejection}
		if suppressed > 0 {
			attrs = append(attrs, "rejections_not_logged", suppressed)
		}
		w.b.log.Warn("rejected device message", attrs...)
	}
	return store.Rejected{Topic: topic, DeviceID: it.device, Reason: safeText(it.rejection, 1024),
		Payload: truncatePayload(it.in.msg.Payload()), ReceivedAt: it.in.at}
}

// retry runs op until it succeeds or the bridge stops (errStopped). Each attempt is bounded by
// AttemptTimeout; the waits between attempts grow from RetryMin to RetryMax. When Temporal has
// refused op outright (refusedByTemporal) for FatalAfter, retry ends the bridge
// (ErrTemporalRefused) and goes on until it stops.
func (w *worker) retry(what string, op func(ctx context.Context) error) error {
	cfg := &w.b.cfg
	var (
		attempt      int
		err          error // the last attempt's
		refusedSince time.Time
	)
	_, stopped := backoff.Retry(w.stopCtx, func() (struct{}, error) {
		attempt++
		ctx, cancel := context.WithTimeout(w.workCtx, cfg.AttemptTimeout)
		defer cancel()
		err = op(ctx)
		return struct{}{}, err
	}, backoff.WithBackOff(cfg.backOff(cfg.RetryMax)), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, wait time.Duration) {
		switch {
		case !refusedByTemporal(err):
			refusedSince = time.Time{}
		case refusedSince.IsZero():
			refusedSince = cfg.Now()
		case cfg.Now().Sub(refusedSince) >= cfg.FatalAfter:
			w.b.fail(fmt.Errorf("%s: %w for %s: %w", what, ErrTemporalRefused, cfg.FatalAfter, err))
		}
		logRetry(w.b.log, attempt, "transient failure, retrying", "op", what, "attempt", attempt, "backoff", wait, "error", err)
		w.b.stats.retries.Add(1)
	}))
	if stopped != nil { // with no bound on tries or time, only the bridge's stopping ends Retry
		return fmt.Errorf("%s: %w after %d attempts: %w", what, errStopped, attempt, err)
	}
	if attempt > 1 {
		w.b.log.Info("recovered after transient failures", "op", what, "attempts", attempt)
	}
	return nil
}

// refusedByTemporal reports whether err is Temporal refusing the bridge in a way that waiting
// does not mend by itself (the SDK's workers hold the same errors fatal).
func refusedByTemporal(err error) bool {
	var nsNotFound *serviceerror.NamespaceNotFound
	var denied *serviceerror.PermissionDenied
	return errors.As(err, &nsNotFound) || errors.As(err, &denied)
}

// safeText makes s storable as PostgreSQL text and short: valid UTF-8, no NUL, at most max
// bytes.
func safeText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return protocol.Truncate(strings.ReplaceAll(s, "\x00", "\uFFFD"), max)
}

// truncatePayload keeps at most MaxStoredPayload bytes of a payload, marking a cut. An empty
// payload gives an empty (not nil) slice, which the database stores as empty rather than
// refusing as NULL.
func truncatePayload(p []byte) []byte {
	if len(p) <= MaxStoredPayload {
		return append([]byte{}, p...)
	}
	out := append([]byte(nil), p[:MaxStoredPayload]...)
	return fmt.Appendf(out, "...[truncated, %d bytes in all]", len(p))
}
