package ota

import (
	"cmp"
	"fmt"
	"strings"
	"time"
)

// parsedWindow is a maintenance window read: times of day as hours and minutes, and the zone.
type parsedWindow struct {
	startH, startM, endH, endM int
	loc                        *time.Location
}

// parse reads a window's times and zone. Zones come from the IANA data built into OTAflow
// (LoadZone), never from the machine, so every worker decides a window the same way:
// workflow code decides with it.
func (w Window) parse() (parsedWindow, error) {
	var out parsedWindow
	clock := func(s string) (int, int, error) {
		t, err := time.Parse("15:04", strings.TrimSpace(s))
		if err != nil {
			return 0, 0, fmt.Errorf("window time %q must be HH:MM", s)
		}
		return t.Hour(), t.Minute(), nil
	}
	var err error
	if out.startH, out.startM, err = clock(w.Start); err != nil {
		return out, err
	}
	if out.endH, out.endM, err = clock(w.End); err != nil {
		return out, err
	}
	if out.startH == out.endH && out.startM == out.endM {
		return out, fmt.Errorf("window start and end must differ")
	}
	zone := cmp.Or(w.TimeZone, "UTC")
	if out.loc, err = LoadZone(zone); err != nil {
		return out, fmt.Errorf("window time zone %q: %w", zone, err)
	}
	return out, nil
}

// Validate checks the window's times and zone.
func (w Window) Validate() error {
	_, err := w.parse()
	return err
}

// Contains reports whether t is inside the window: the wall-clock time of day in the
// window's zone, so daylight-saving days keep their hours. An invalid window (refused when
// the rollout was validated) contains every time.
func (w Window) Contains(t time.Time) bool {
	pw, err := w.parse()
	if err != nil {
		return true
	}
	local := t.In(pw.loc)
	tod := local.Hour()*60 + local.Minute()
	start, end := pw.startH*60+pw.startM, pw.endH*60+pw.endM
	if start < end {
		return tod >= start && tod < end
	}
	return tod >= start || tod < end
}

// NextOpen is when the window next opens after t: its start on the wall clock of that day or
// a later one in its zone. On a day whose clocks skip the start (a daylight-saving change),
// it opens at the change.
func (w Window) NextOpen(t time.Time) time.Time {
	pw, err := w.parse()
	if err != nil {
		return t.Add(time.Minute)
	}
	y, m, d := t.In(pw.loc).Date()
	for day := 0; ; day++ {
		open := time.Date(y, m, d+day, pw.startH, pw.startM, 0, 0, pw.loc)
		if h, min, _ := open.Clock(); h != pw.startH || min != pw.startM {
			// The clocks skip the start: the window opens at the change, which bounds the
			// zone period time.Date normalized the start into (before or after it).
			start, end := open.ZoneBounds()
			if h*60+min < pw.startH*60+pw.startM {
				open = end
			} else {
				open = start
			}
		}
		if open.After(t) {
			return open.UTC()
		}
	}
}

// Waiting says, for people, that a rollout waits for the window, which opens at opens.
func (w Window) Waiting(opens time.Time) string {
	zone := cmp.Or(w.TimeZone, "UTC")
	at := opens.UTC().Format("2006-01-02 15:04 MST")
	if pw, err := w.parse(); err == nil {
		at = opens.In(pw.loc).Format("2006-01-02 15:04 MST")
	}
	return fmt.Sprintf("outside the maintenance window %s-%s %s; it opens %s", w.Start, w.End, zone, at)
}
