package bridge

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// The flood limit. PROTOCOL.md asks devices to report at most about once a second and only
// when the percentage changes, so an honest download is at most about a hundred progress
// reports. A device that sends far more (stuck in a loop, or compromised) must neither fill
// PostgreSQL row by row nor hold up the other devices' reports. So every device has a budget,
// a token bucket of FloodConfig.Burst reports refilled at FloodConfig.Rate a second, and the
// MQTT handler checks each message against its device's budget before it is queued for a
// shard: what a device sends beyond its budget never occupies the queues the devices share.
//
// What happens to a report beyond the budget depends on what it says:
//   - a progress report of 1 to 99, and a message the bridge would reject, is shed: counted,
//     acknowledged, not stored (ShedProgress, ShedInvalid);
//   - an error code or progress 100 (what an upgrade acts on) is never shed, unless it repeats
//     the device's last one exactly (ShedRepeat: the workflow ignores such a repeat anyway);
//   - a status report is never lost: it waits, unacknowledged, until the budget allows it, and
//     a newer one of the device takes its place (the latest status wins; the older one counts
//     as ShedSuperseded). A device's reports stay in order: a waiting status goes before any
//     later report of the device. (So the bridge holds, unacknowledged, at most one waiting
//     status per device on top of its queues.)
//
// The shed counts are kept per device, reason and interval (FloodConfig.Interval), logged once
// per interval and written to PostgreSQL (store.ShedCount, when the Store can) as one row per
// device, reason and interval; Bridge.Stats and Bridge.ShedCounts expose them.

// Reasons a report is shed.
const (
	// ShedProgress is a progress report of 1 to 99 beyond the device's budget.
	ShedProgress = "progress"
	// ShedRepeat is an error code or progress 100 beyond the budget that repeats the device's
	// last one exactly (command, type, version, code and description).
	ShedRepeat = "repeat"
	// ShedInvalid is a message beyond the budget that the bridge would reject; those within
	// the budget are stored in rejected_messages with their reasons.
	ShedInvalid = "invalid"
	// ShedSuperseded is a status report beyond the budget that a newer status report of the
	// device replaced before the budget allowed it.
	ShedSuperseded = "superseded_status"
)

// ShedReasons are the reasons a report is shed, in the order metrics list them.
var ShedReasons = []string{ShedProgress, ShedRepeat, ShedInvalid, ShedSuperseded}

// Defaults of the FloodConfig settings left zero: a sustained report a second, as PROTOCOL.md
// asks, and a burst of a whole download's distinct percentages, so that an honest device's
// backlog (after a bridge or database outage) passes whole.
const (
	DefaultFloodRate     = 1.0
	DefaultFloodBurst    = 100
	DefaultFloodInterval = time.Minute
)

// floodTick is how often waiting status reports are looked at.
const floodTick = 100 * time.Millisecond

// maxShedLogLines bounds the lines a flush logs; the rest are summed up in one.
const maxShedLogLines = 20

// FloodConfig configures the per-device flood limit. Zero values take the defaults above.
type FloodConfig struct {
	// Rate is how many reports a second a device may send, sustained.
	Rate float64
	// Burst is how many reports a device may send at once, on top of its rate.
	Burst int
	// Interval is how often the shed counts are logged and written to PostgreSQL: one row per
	// device, reason and interval.
	Interval time.Duration
	// Off turns the limit off: every report is stored.
	Off bool
}

func (c FloodConfig) withDefaults() FloodConfig {
	if c.Rate == 0 {
		c.Rate = DefaultFloodRate
	}
	if c.Burst == 0 {
		c.Burst = DefaultFloodBurst
	}
	setDefault(&c.Interval, DefaultFloodInterval)
	return c
}

func (c FloodConfig) validate() error {
	switch {
	case c.Off:
		return nil
	case !(c.Rate > 0 && c.Rate <= 1e6):
		return fmt.Errorf("flood rate must be more than 0 reports a second, not %g", c.Rate)
	case c.Burst < 1 || c.Burst > 1e6:
		return fmt.Errorf("flood burst must be 1 to 1000000 reports, not %d", c.Burst)
	case c.Interval < time.Second:
		return fmt.Errorf("flood interval must be at least 1s, not %s", c.Interval)
	}
	return nil
}

// String says what the budget is, for people.
func (c FloodConfig) String() string {
	if c.Off {
		return "off"
	}
	return fmt.Sprintf("%g reports/s, burst %d", c.Rate, c.Burst)
}

// ShedStore records shed counts. The bridge writes its counts when its Store satisfies it, as
// *store.Store does.
type ShedStore interface {
	RecordShed(ctx context.Context, counts []store.ShedCount) error
}

var _ ShedStore = (*store.Store)(nil)

// ShedTotal is how many reports of a device the flood limit shed for a reason since the
// bridge started.
type ShedTotal struct {
	Device string `json:"device"`
	Reason string `json:"reason"`
	Count  int64  `json:"count"`
}

// floodClass is what a message is to the flood limit.
type floodClass int

const (
	classPass     floodClass = iota // not a device's report: passes (retained, unparsable topic)
	classProgress                   // progress 1 to 99
	classCritical                   // an error code or progress 100
	classStatus                     // a valid status report
	classInvalid                    // a message the bridge will reject
)

// floodLimiter holds every device's budget. Its mutex also orders what it queues: the MQTT
// handler queues under it, so that a waiting status released by the ticker never overtakes a
// later report of its device.
type floodLimiter struct {
	b   *Bridge
	cfg FloodConfig

	mu      sync.Mutex
	devices map[string]*budget
	waiting map[string]*budget // the devices with a status waiting
	// pending are the shed counts not yet logged; unwritten those logged whose write failed
	// (the next flush writes them again, without logging them twice).
	pending   map[shedKey]*store.ShedCount
	unwritten []store.ShedCount
	totals    map[shedTotalKey]int64
	stopped   bool
}

// budget is one device's budget and what the limit remembers of it.
type budget struct {
	lim *rate.Limiter
	// status is the device's latest status report beyond the budget, waiting for it.
	status *inbound
	// last is the last error code or progress 100 the device got through.
	last    protocol.Progress
	hasLast bool
}

type shedKey struct {
	device, reason string
	period         time.Time
}

type shedTotalKey struct{ device, reason string }

func newFloodLimiter(b *Bridge, cfg FloodConfig) *floodLimiter {
	return &floodLimiter{b: b, cfg: cfg, devices: map[string]*budget{}, waiting: map[string]*budget{},
		pending: map[shedKey]*store.ShedCount{}, totals: map[shedTotalKey]int64{}}
}

// classify says what a message is, and of which device.
func classify(m message) (device string, class floodClass, p protocol.Progress) {
	if m.Retained() {
		return "", classPass, p
	}
	device, kind, err := protocol.ParseTopic(m.Topic())
	if err != nil {
		return "", classPass, p // no device to charge; rejected by the shard
	}
	switch kind {
	case protocol.KindProgress:
		p, err := protocol.ParseProgress(m.Payload())
		switch {
		case err != nil:
			return device, classInvalid, p
		case p.IsError() || p.Progress >= 100:
			return device, classCritical, p
		}
		return device, classProgress, p
	case protocol.KindStatus:
		if _, err := protocol.ParseStatus(m.Payload()); err != nil {
			return device, classInvalid, p
		}
		return device, classStatus, p
	}
	return device, classInvalid, p
}

// admit is what the MQTT handler does with a message: it queues it for its shard (deliver)
// when its device's budget allows, or sheds it, or keeps a status report waiting.
func (b *Bridge) admit(m message) {
	l := b.flood
	if l == nil {
		b.deliver(m)
		return
	}
	device, class, p := classify(m)
	if class == classPass {
		b.deliver(m)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := b.cfg.Now()
	if l.stopped {
		b.stats.received.Add(1)
		b.stats.unfinished.Add(1)
		return
	}
	d := l.devices[device]
	if d == nil {
		d = &budget{lim: rate.NewLimiter(rate.Limit(l.cfg.Rate), l.cfg.Burst)}
		l.devices[device] = d
	}
	// A waiting status goes first: for free before a critical report, else when the budget
	// allows (else a status after it takes its place).
	if d.status != nil && (class == classCritical || d.lim.AllowN(now, 1)) {
		l.release(device, d)
	}
	switch class {
	case classCritical:
		if !d.lim.AllowN(now, 1) && d.hasLast && d.last == p {
			l.shed(m, device, ShedRepeat, now)
			return
		}
		d.last, d.hasLast = p, true
		b.deliverAt(m, now)
	case classStatus:
		if d.status == nil && d.lim.AllowN(now, 1) {
			b.deliverAt(m, now)
			return
		}
		if d.status != nil {
			l.shed(d.status.msg, device, ShedSuperseded, now)
		}
		b.stats.delayed.Add(1)
		d.status = &inbound{msg: m, at: now}
		l.waiting[device] = d
	default: // progress 1..99, and what will be rejected
		if d.status == nil && d.lim.AllowN(now, 1) {
			b.deliverAt(m, now)
			return
		}
		reason := ShedProgress
		if class == classInvalid {
			reason = ShedInvalid
		}
		l.shed(m, device, reason, now)
	}
}

// release queues the device's waiting status (l.mu held).
func (l *floodLimiter) release(device string, d *budget) {
	in := *d.status
	d.status = nil
	delete(l.waiting, device)
	l.b.deliverAt(in.msg, in.at)
}

// shed counts a message the limit does not store and acknowledges it (l.mu held).
func (l *floodLimiter) shed(m message, device, reason string, at time.Time) {
	b := l.b
	b.stats.received.Add(1)
	b.stats.shed.Add(1)
	k := shedKey{device: device, reason: reason, period: at.Truncate(l.cfg.Interval)}
	if c := l.pending[k]; c != nil {
		c.Count++
		c.LastAt = at
	} else {
		l.pending[k] = &store.ShedCount{DeviceID: device, Reason: reason, PeriodStart: k.period, Count: 1, FirstAt: at, LastAt: at}
	}
	l.totals[shedTotalKey{device, reason}]++
	m.Ack()
	b.stats.acked.Add(1)
}

// run releases waiting status reports as their devices' budgets allow, and every interval
// logs and writes the shed counts and forgets the devices whose budget is full again. When
// the bridge stops it leaves the waiting status reports unacknowledged (for the broker to
// redeliver) and writes the last counts.
func (l *floodLimiter) run(workCtx context.Context) {
	tick := time.NewTicker(floodTick)
	defer tick.Stop()
	flush := time.NewTicker(l.cfg.Interval)
	defer flush.Stop()
	for {
		select {
		case <-tick.C:
			l.releaseWaiting()
		case <-flush.C:
			l.flush(workCtx)
			l.sweep()
		case <-l.b.stopping:
			l.stop()
			l.flush(workCtx)
			return
		}
	}
}

// releaseWaiting queues the waiting status reports whose devices' budgets allow them, unless
// their shard's queue is full (then a later tick tries again).
func (l *floodLimiter) releaseWaiting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.b.stopping: // the shards may have finished: stop leaves these for the broker
		return
	default:
	}
	now := l.b.cfg.Now()
	for _, device := range sortedKeys(l.waiting) {
		d := l.waiting[device]
		if l.stopped || d.lim.TokensAt(now) < 1 {
			continue
		}
		in := inbound{msg: d.status.msg, at: d.status.at}
		select {
		case l.b.queues[l.b.shardOf(in.msg.Topic())] <- in:
			d.lim.AllowN(now, 1)
			l.b.stats.received.Add(1)
			d.status = nil
			delete(l.waiting, device)
		default:
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// stop makes the limit take nothing more, and leaves the waiting status reports
// unacknowledged.
func (l *floodLimiter) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	for device, d := range l.waiting {
		l.b.stats.received.Add(1)
		l.b.stats.unfinished.Add(1)
		d.status = nil
		delete(l.waiting, device)
	}
}

// sweep forgets the devices whose budget is full again and that have nothing waiting: their
// state is a new device's, and the limit's memory stays bounded by the devices reporting now.
func (l *floodLimiter) sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.b.cfg.Now()
	for device, d := range l.devices {
		if d.status == nil && d.lim.TokensAt(now) >= float64(l.cfg.Burst) {
			delete(l.devices, device)
		}
	}
}

// flush logs the shed counts of the intervals since the last flush, a line per device and
// reason (at most maxShedLogLines, the rest summed up), and writes them to PostgreSQL in one
// statement, with those an earlier flush could not write (they are not logged twice).
func (l *floodLimiter) flush(ctx context.Context) {
	l.mu.Lock()
	fresh := make([]store.ShedCount, 0, len(l.pending))
	for _, c := range l.pending {
		fresh = append(fresh, *c)
	}
	clear(l.pending)
	counts := append(l.unwritten, fresh...)
	l.unwritten = nil
	l.mu.Unlock()
	if len(counts) == 0 {
		return
	}
	sortCounts(fresh)
	l.log(fresh)
	ss, ok := l.b.store.(ShedStore)
	if !ok {
		return
	}
	counts = mergeCounts(counts)
	wctx, cancel := context.WithTimeout(ctx, l.b.cfg.AttemptTimeout)
	defer cancel()
	if err := ss.RecordShed(wctx, counts); err != nil {
		l.b.log.Warn("could not write the flood limit's counts; trying again at the next interval", "error", err)
		l.mu.Lock()
		l.unwritten = append(l.unwritten, counts...)
		l.mu.Unlock()
	}
}

// sortCounts sorts counts largest first.
func sortCounts(counts []store.ShedCount) {
	slices.SortFunc(counts, func(a, b store.ShedCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.DeviceID, b.DeviceID), cmp.Compare(a.Reason, b.Reason),
			a.PeriodStart.Compare(b.PeriodStart))
	})
}

// mergeCounts adds up the counts of the same device, reason and interval, largest first.
func mergeCounts(counts []store.ShedCount) []store.ShedCount {
	byKey := map[shedKey]*store.ShedCount{}
	var out []store.ShedCount
	for _, c := range counts {
		k := shedKey{device: c.DeviceID, reason: c.Reason, period: c.PeriodStart}
		if p := byKey[k]; p != nil {
			p.Count += c.Count
			p.FirstAt, p.LastAt = minTime(p.FirstAt, c.FirstAt), maxTime(p.LastAt, c.LastAt)
			continue
		}
		cc := c
		byKey[k] = &cc
	}
	for _, c := range byKey {
		out = append(out, *c)
	}
	sortCounts(out)
	return out
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// log logs counts, largest first, once each.
func (l *floodLimiter) log(counts []store.ShedCount) {
	for i, c := range counts {
		if i == maxShedLogLines {
			var rest int64
			devices := map[string]bool{}
			for _, c := range counts[i:] {
				rest += c.Count
				devices[c.DeviceID] = true
			}
			l.b.log.Warn("reports over their devices' budgets not stored, more devices", "devices", len(devices), "count", rest)
			return
		}
		l.b.log.Warn("reports over the device's budget not stored", "device", c.DeviceID, "reason", c.Reason, "count", c.Count,
			"since", c.FirstAt, "budget", l.cfg.String())
	}
}

// ShedCounts returns, per device and reason, how many reports the flood limit shed since the
// bridge was created, in device and reason order: for metrics (Stats.Shed is their sum). It is
// empty with the limit off.
func (b *Bridge) ShedCounts() []ShedTotal {
	if b.flood == nil {
		return nil
	}
	l := b.flood
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ShedTotal, 0, len(l.totals))
	for k, n := range l.totals {
		out = append(out, ShedTotal{Device: k.device, Reason: k.reason, Count: n})
	}
	slices.SortFunc(out, func(a, b ShedTotal) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.Reason, b.Reason))
	})
	return out
}
