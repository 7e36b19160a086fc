package bridge

import (
	"time"

	"github.com/otaflow/otaflow/internal/protocol"
)

// coalescer decides which progress reports are forwarded to the device's workflow. It keeps
// the last forwarded report of each device with an upgrade under way. It is not safe for
// concurrent use: each shard worker has its own, and locks it (worker.mu) because the worker
// signals a batch's devices at the same time.
type coalescer struct {
	interval time.Duration
	step     int
	idle     time.Duration

	last      map[string]forwardedProgress
	lastSweep time.Time
}

// forwardedProgress is the last progress report forwarded for a device.
type forwardedProgress struct {
	attempt  attemptKey
	progress int
	at       time.Time
}

// attemptKey names one upgrade attempt: the command ID, with type and version for devices
// that send no command ID.
type attemptKey struct {
	id, typ, version string
}

func keyOf(p protocol.Progress) attemptKey {
	return attemptKey{id: p.ID, typ: p.Type, version: p.Version}
}

func newCoalescer(interval time.Duration, step int, idle time.Duration) *coalescer {
	return &coalescer{interval: interval, step: step, idle: idle, last: map[string]forwardedProgress{}}
}

// forward reports whether a device's progress report, received at now, goes to its workflow:
// error codes, 100 and the first report of an attempt always do; others when the percentage
// changed and the interval has passed since the last forwarded one, or when it moved by at
// least step points.
func (c *coalescer) forward(device string, p protocol.Progress, now time.Time) bool {
	c.sweep(now)
	if p.IsError() || p.Progress >= 100 {
		return true
	}
	last, ok := c.last[device]
	switch {
	case !ok || last.attempt != keyOf(p):
		return true
	case p.Progress != last.progress && now.Sub(last.at) >= c.interval:
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

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
