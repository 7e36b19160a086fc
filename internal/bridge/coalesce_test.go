package bridge

import (
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/protocol"
)

func TestCoalescer(t *testing.T) {
	type report struct {
		after    time.Duration // time since the previous report
		device   string
		id       string
		progress int
		want     bool // forwarded
	}
	const a, b = "dev-a", "dev-b"
	tests := []struct {
		name     string
		interval time.Duration
		step     int
		reports  []report
		wantSize int // devices tracked at the end
	}{
		{"first report of a device is forwarded", time.Minute, 0, []report{
			{0, a, "c1", 5, true},
			{time.Second, b, "c9", 40, true},
			{time.Second, a, "c1", 6, false},
		}, 2},
		{"interval passed and percentage changed", time.Minute, 0, []report{
			{0, a, "c1", 1, true},
			{30 * time.Second, a, "c1", 2, false},
			{29 * time.Second, a, "c1", 3, false},
			{time.Second, a, "c1", 4, true}, // 60 s after the last forwarded
			{59 * time.Second, a, "c1", 5, false},
			{time.Second, a, "c1", 6, true},
		}, 1},
		{"interval passed but percentage unchanged", time.Minute, 0, []report{
			{0, a, "c1", 10, true},
			{2 * time.Minute, a, "c1", 10, false},
			{time.Second, a, "c1", 11, true},
		}, 1},
		{"100 is always forwarded and ends the attempt", time.Minute, 0, []report{
			{0, a, "c1", 90, true},
			{time.Second, a, "c1", 100, true},
			{time.Second, a, "c1", 100, true}, // redelivered: forwarded again, harmless
		}, 0},
		{"error codes are always forwarded and end the attempt", time.Minute, 0, []report{
			{0, a, "c1", 20, true},
			{time.Second, a, "c1", protocol.CodeDownloadFailed, true},
			{time.Second, a, "c2", 1, true},
			{time.Second, a, "c2", protocol.CodeMD5Mismatch, true},
			{time.Second, a, "c2", protocol.CodeInstallFailed, true},
			{time.Second, a, "c2", protocol.CodeOther, true},
		}, 0},
		{"new command ID starts a new attempt", time.Minute, 0, []report{
			{0, a, "c1", 50, true},
			{time.Second, a, "c2", 1, true},
			{time.Second, a, "c2", 2, false},
			{time.Second, a, "c1", 51, true}, // a stale attempt is forwarded; the workflow ignores it
		}, 1},
		{"reports without ID are keyed by type and version", time.Minute, 0, []report{
			{0, a, "", 50, true},
			{time.Second, a, "", 51, false},
		}, 1},
		{"step forwards big moves", time.Hour, 10, []report{
			{0, a, "c1", 1, true},
			{time.Second, a, "c1", 10, false},
			{time.Second, a, "c1", 11, true}, // 10 points from 1
			{time.Second, a, "c1", 20, false},
			{time.Second, a, "c1", 35, true},
		}, 1},
		{"interval 0 forwards no intermediate progress", 0, 0, []report{
			{0, a, "c1", 1, true},
			{20 * time.Minute, a, "c1", 50, false},
			{20 * time.Minute, a, "c1", 99, false},
			{time.Second, a, "c1", 100, true},
		}, 0},
		{"step off by default", time.Hour, 0, []report{
			{0, a, "c1", 1, true},
			{time.Second, a, "c1", 99, false},
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCoalescer(tt.interval, tt.step, DefaultCoalesceIdle, 0)
			now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
			for i, r := range tt.reports {
				now = now.Add(r.after)
				p := protocol.Progress{ID: r.id, Type: "firmware", Version: "1.1", Progress: r.progress}
				got := c.forward(r.device, p, now)
				if got != r.want {
					t.Errorf("report %d (%s %s %d): forwarded %v, want %v", i, r.device, r.id, r.progress, got, r.want)
				}
				if got {
					c.forwarded(r.device, p, now)
				}
			}
			if c.size() != tt.wantSize {
				t.Errorf("tracking %d devices, want %d", c.size(), tt.wantSize)
			}
		})
	}
}

func TestCoalescerForgetsIdleDevices(t *testing.T) {
	c := newCoalescer(time.Minute, 0, time.Hour, 0)
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	p := protocol.Progress{ID: "c1", Type: "app", Version: "1.1", Progress: 40}
	for _, d := range []string{"a", "b", "c"} {
		if !c.forward(d, p, now) {
			t.Fatalf("first report of %s not forwarded", d)
		}
		c.forwarded(d, p, now)
	}
	now = now.Add(30 * time.Minute)
	c.forwarded("c", p, now) // c stays active
	now = now.Add(31 * time.Minute)
	q := protocol.Progress{ID: "c9", Type: "app", Version: "1.1", Progress: 1}
	c.forward("d", q, now)
	if c.size() != 1 {
		t.Errorf("tracking %d devices after the sweep, want 1 (c)", c.size())
	}
	if _, ok := c.last["c"]; !ok {
		t.Error("active device c was dropped")
	}
}
