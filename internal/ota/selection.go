package ota

import (
	"math"
	"time"
)

// How a rollout chooses its targets among the devices its filter matches. The rollout's
// pre-flight, a continuous rollout's search for late devices and `starter rollout plan` all
// judge a device with Selector.Judge, and page through the registry with the store's
// SelectTargets, so that a plan shows what the rollout then does.

// LeftOutReason says why a device the targets match is left out of a rollout; "" means it
// is a target.
type LeftOutReason string

// Reasons a device is left out, in the order they are judged: a device is counted under
// the first that applies.
const (
	// LeftDisabled: the device is disabled in the registry.
	LeftDisabled LeftOutReason = "disabled"
	// LeftNeverSeen: the device has never reported its status, so what it runs is not known.
	LeftNeverSeen LeftOutReason = "never_seen"
	// LeftUpToDate: the device already reports the target version (unless the rollout
	// includes up-to-date devices, which then end skipped).
	LeftUpToDate LeftOutReason = "up_to_date"
	// LeftIncompatible: the package does not fit the device (UpgradeRequest.Compat).
	LeftIncompatible LeftOutReason = "incompatible"
	// LeftQuarantined: the device is in quarantine (too many failed upgrades of late).
	LeftQuarantined LeftOutReason = "quarantined"
)

// LeftOutReasons lists the reasons in the order they are judged.
var LeftOutReasons = []LeftOutReason{LeftDisabled, LeftNeverSeen, LeftUpToDate, LeftIncompatible, LeftQuarantined}

// LeftOut counts the devices the targets match that a rollout leaves out, by reason.
type LeftOut struct {
	UpToDate     int `json:"up_to_date"`
	Incompatible int `json:"incompatible"`
	Quarantined  int `json:"quarantined"`
	Disabled     int `json:"disabled"`
	NeverSeen    int `json:"never_seen"`
}

// Add counts one device left out for reason r ("" counts nothing).
func (l *LeftOut) Add(r LeftOutReason) {
	if n := l.of(r); n != nil {
		*n++
	}
}

// Of is the count of reason r.
func (l LeftOut) Of(r LeftOutReason) int {
	if n := l.of(r); n != nil {
		return *n
	}
	return 0
}

func (l *LeftOut) of(r LeftOutReason) *int {
	switch r {
	case LeftUpToDate:
		return &l.UpToDate
	case LeftIncompatible:
		return &l.Incompatible
	case LeftQuarantined:
		return &l.Quarantined
	case LeftDisabled:
		return &l.Disabled
	case LeftNeverSeen:
		return &l.NeverSeen
	}
	return nil
}

// Total is how many devices were left out.
func (l LeftOut) Total() int {
	return l.UpToDate + l.Incompatible + l.Quarantined + l.Disabled + l.NeverSeen
}

// Selector decides which of the devices a rollout's filter matches are its targets.
type Selector struct {
	// Filter selects the devices to judge (prefix, labels or status values, a stored list);
	// its paging fields are ignored.
	Filter DeviceFilter `json:"filter"`
	// Version under VersionKey is the version the rollout installs.
	Version    string `json:"version"`
	VersionKey string `json:"version_key"`
	// IncludeUpToDate keeps the devices that already report Version.
	IncludeUpToDate bool `json:"include_up_to_date,omitempty"`
	// Compat, when set, leaves out the devices the package does not fit.
	Compat *Compatibility `json:"compat,omitempty"`
}

// Selector is the selector of the rollout's targets (of a request after WithDefaults).
func (r RolloutRequest) Selector() Selector {
	return Selector{
		Filter:          DeviceFilter{List: r.Targets.List, Prefix: r.Targets.Prefix, Labels: r.Targets.Where},
		Version:         r.Upgrade.Version,
		VersionKey:      r.Upgrade.VersionKey,
		IncludeUpToDate: r.Targets.IncludeUpToDate,
		Compat:          r.Upgrade.Compat,
	}
}

// Candidate is what a Selector needs to know of a device the filter matches.
type Candidate struct {
	ID       string
	Disabled bool
	// Seen is set once the device has reported its status.
	Seen     bool
	Labels   map[string]string
	Reported map[string]string
	// Quarantined is set while the device is in quarantine.
	Quarantined bool
}

// Judge says whether the device is a target ("") or why it is left out: the first of
// LeftOutReasons that applies.
func (s Selector) Judge(c Candidate) LeftOutReason {
	switch {
	case c.Disabled:
		return LeftDisabled
	case !c.Seen:
		return LeftNeverSeen
	case !s.IncludeUpToDate && c.Reported[s.VersionKey] == s.Version:
		return LeftUpToDate
	}
	if s.Compat != nil {
		if ok, _ := s.Compat.Fits(c.Labels, c.Reported[s.VersionKey]); !ok {
			return LeftIncompatible
		}
	}
	if c.Quarantined {
		return LeftQuarantined
	}
	return ""
}

// TargetSelection is what selecting a rollout's targets found: how many targets, and how
// many devices the filter matched but were left out, by reason.
type TargetSelection struct {
	Targets int     `json:"targets"`
	LeftOut LeftOut `json:"left_out"`
	// Changes is where a continuous rollout starts looking for devices that changed after
	// the selection.
	Changes ChangeCursor `json:"changes"`
}

// ChangeCursor is a position in the registry's stream of device changes (registrations,
// status reports, label and enable/disable changes): every change before it has been
// looked at. It is opaque outside the store.
type ChangeCursor struct {
	XID string `json:"xid,omitempty"`
	ID  string `json:"id,omitempty"`
}

// SelectTargetsInput asks to select a rollout's targets and store them as the list Key. With
// KeepLeftOut, the devices left out as incompatible or quarantined are stored with the list
// too, so that a continuous rollout counts each of them once.
type SelectTargetsInput struct {
	Rollout     string   `json:"rollout"`
	Key         string   `json:"key"`
	Selector    Selector `json:"selector"`
	KeepLeftOut bool     `json:"keep_left_out,omitempty"`
}

// FindLateInput asks for devices that came to be targets of a continuous rollout after its
// pre-flight: devices that changed after Cursor, match the Selector and have no upgrade of
// the rollout started at or after Since, other than one that timed out. The devices left out
// are kept with the list LeftOutKey. FindLateTargets waits up to MaxWait for such devices
// and returns at most Limit.
type FindLateInput struct {
	Rollout    string       `json:"rollout"`
	LeftOutKey string       `json:"left_out_key"`
	Since      time.Time    `json:"since"`
	Selector   Selector     `json:"selector"`
	Cursor     ChangeCursor `json:"cursor"`
	Limit      int          `json:"limit"`
	MaxWait    Duration     `json:"max_wait"`
}

// LateTargets is what FindLateTargets found: the devices to upgrade, where to look next,
// and how many devices the rollout leaves out now as incompatible or quarantined (all of
// them, not only those found this time).
type LateTargets struct {
	IDs     []string     `json:"ids,omitempty"`
	Cursor  ChangeCursor `json:"cursor"`
	LeftOut LeftOut      `json:"left_out"`
}

// WaveEnds splits total targets into waves: the cumulative number of devices started by the
// end of each wave. The rollout and its plan split the same way.
func WaveEnds(total int, waves []Wave) []int {
	ends := make([]int, 0, len(waves))
	prev := 0
	for _, w := range waves {
		end := prev + w.Count
		if w.Percent > 0 {
			end = int(math.Ceil(float64(total) * w.Percent / 100))
		}
		end = min(max(end, prev), total)
		ends = append(ends, end)
		prev = end
	}
	return ends
}

// RateBurst is how much unused start rate a rate-limited rollout may save up, so that it
// starts devices in small batches rather than waking for each one.
const RateBurst = 5 * time.Second

// StartRate is the start rate per minute in force elapsed after the ramp began (the
// rollout's start); 0 means unbounded.
func (r RolloutRequest) StartRate(elapsed time.Duration) float64 {
	rate := r.MaxPerMinute
	if rp := r.Ramp; rp != nil {
		steps := float64(elapsed / rp.Step.Std())
		ramped := rp.StartPerMinute * math.Pow(rp.Factor, steps)
		if rate == 0 || ramped < rate {
			rate = ramped
		}
	}
	return rate
}
