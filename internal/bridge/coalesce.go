package bridge

import (
	"container/heap"
	"time"

	"github.com/otaflow/otaflow/internal/protocol"
)

// coalescer decides which progress reports are forwarded to the device's workflow, and holds
// the forwarded ones for a merge window. It keeps the last forwarded report of each device
// with an upgrade under way, and the report each device has waiting in a window. It is not
// safe for concurrent use: each shard worker has its own, and locks it (worker.mu) because
// the worker signals a batch's devices at the same time.
type coalescer struct {
	interval time.Duration // 0: intermediate progress is not forwarded
	step     int
	idle     time.Duration
	merge    time.Duration // 0 or less: no merge window

	last      map[string]forwardedProgress
	lastSweep time.Time

	held map[string]heldProgress
	// windows orders the held reports by the end of their windows. An entry whose device no
	// longer holds a report ending then is stale and skipped.
	windows windowHeap
}

// forwardedProgress is the last progress report forwarded for a device.
type forwardedProgress struct {
	attempt  attemptKey
	progress int
	at       time.Time
}

// heldProgress is a progress report waiting for the end of its merge window.
type heldProgress struct {
	p   protocol.Progress
	at  time.Time // received
	due time.Time // the window's end
}

// attemptKey names one upgrade attempt: the command ID, with type and version for devices
// that send no command ID.
type attemptKey struct {
	id, typ, version string
}

func keyOf(p protocol.Progress) attemptKey {
	return attemptKey{id: p.ID, typ: p.Type, version: p.Version}
}

func newCoalescer(interval time.Duration, step int, idle, merge time.Duration) *coalescer {
	return &coalescer{interval: interval, step: step, idle: idle, merge: merge,
		last: map[string]forwardedProgress{}, held: map[string]heldProgress{}}
}

// forward reports whether a device's progress report, received at now, goes to its workflow:
// error codes, 100 and the first report of an attempt always do; others when the percentage
// changed and the interval (when more than 0) has passed since the last forwarded one, or
// when it moved by at least step points.
func (c *coalescer) forward(device string, p protocol.Progress, now time.Time) bool {
	c.sweep(now)
	if p.IsError() || p.Progress >= 100 {
		return true
	}
	last, ok := c.last[device]
	switch {
	case !ok || last.attempt != keyOf(p):
		return true
	case c.interval > 0 && p.Progress != last.progress && now.Sub(last.at) >= c.interval:
		return true
	case c.step > 0 && abs(p.Progress-last.progress) >= c.step:
		return true
	}
	return false
}

// forwarded records that p was forwarded at now. A final report (100 or an error) ends the
// attempt and drops the device's entry.
func (c *coalescer) forwarded(device string, p protocol.Progress, now time.Time) {
	if p.IsError() || p.Progress >= 100 {
		delete(c.last, device)
		return
	}
	c.last[device] = forwardedProgress{attempt: keyOf(p), progress: p.Progress, at: now}
}

// merging reports whether forwarded progress waits in a merge window.
func (c *coalescer) merging() bool { return c.merge > 0 }

// hold keeps p, received at at, as the device's report to forward when its merge window
// ends: a window opens with the first report held and lasts merge; a report held within it
// replaces the one held before, which is not forwarded (replaced reports it).
func (c *coalescer) hold(device string, p protocol.Progress, at time.Time) (replaced bool) {
	if h, ok := c.held[device]; ok {
		h.p, h.at = p, at
		c.held[device] = h
		return true
	}
	h := heldProgress{p: p, at: at, due: at.Add(c.merge)}
	c.held[device] = h
	heap.Push(&c.windows, window{device: device, due: h.due})
	return false
}

// take removes and returns the device's held report, if it has one.
func (c *coalescer) take(device string) (heldProgress, bool) {
	h, ok := c.held[device]
	if ok {
		delete(c.held, device)
	}
	return h, ok
}

// due removes and returns the held reports whose windows have ended at now, by device.
func (c *coalescer) due(now time.Time) map[string]heldProgress {
	var out map[string]heldProgress
	for len(c.windows) > 0 && !c.windows[0].due.After(now) {
		w := heap.Pop(&c.windows).(window)
		if h, ok := c.held[w.device]; ok && h.due.Equal(w.due) {
			if out == nil {
				out = map[string]heldProgress{}
			}
			out[w.device] = h
			delete(c.held, w.device)
		}
	}
	return out
}

// all removes and returns every held report, by device.
func (c *coalescer) all() map[string]heldProgress {
	out := c.held
	c.held, c.windows = map[string]heldProgress{}, nil
	return out
}

// nextDue returns when the next merge window ends, if a report is held (possibly a window
// already emptied, which due then skips).
func (c *coalescer) nextDue() (time.Time, bool) {
	if len(c.windows) == 0 {
		return time.Time{}, false
	}
	return c.windows[0].due, true
}

// sweep drops, at most once per idle period, the entries of devices silent for longer than
// idle, so that devices that stop halfway do not hold memory forever.
func (c *coalescer) sweep(now time.Time) {
	if now.Sub(c.lastSweep) < c.idle {
		return
	}
	c.lastSweep = now
	for device, last := range c.last {
		if now.Sub(last.at) >= c.idle {
			delete(c.last, device)
		}
	}
}

// size is the number of devices tracked.
func (c *coalescer) size() int { return len(c.last) }

// window is the end of a device's merge window.
type window struct {
	device string
	due    time.Time
}

// windowHeap is a min-heap of windows by their end (container/heap).
type windowHeap []window

func (h windowHeap) Len() int           { return len(h) }
func (h windowHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h windowHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *windowHeap) Push(x any)        { *h = append(*h, x.(window)) }
func (h *windowHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	*h = old[:len(old)-1]
	return w
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
