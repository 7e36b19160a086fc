package ota

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// RolloutWorkflowName is the registered name of RolloutWorkflow.
const RolloutWorkflowName = "Rollout"

// Query and update names of RolloutWorkflow.
const (
	// QueryProgress returns a RolloutProgress.
	QueryProgress = "progress"
	// UpdatePause stops starting new device upgrades; running ones finish. Takes a reason string.
	UpdatePause = "pause"
	// UpdateResume starts new device upgrades again after a pause.
	UpdateResume = "resume"
	// UpdateCancel ends the rollout; takes a CancelRequest.
	UpdateCancel = "cancel"
	// UpdateApprove lets the rollout go on to the wave awaiting approval; takes the wave number
	// (1-based) or 0 for whichever waits.
	UpdateApprove = "approve"
	// UpdateClose ends a continuous rollout: it stops taking on late devices, lets the
	// running upgrades finish and completes. Takes a reason string.
	UpdateClose = "close"
)

const rolloutWorkflowPrefix = "rollout-"

// RolloutWorkflowID is the workflow ID of a rollout.
func RolloutWorkflowID(name string) string { return rolloutWorkflowPrefix + name }

var rolloutNamePattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// RolloutState is the state of a rollout as a whole.
type RolloutState string

// Rollout states.
const (
	RolloutPreflight       RolloutState = "preflight"
	RolloutRunning         RolloutState = "running"
	RolloutPaused          RolloutState = "paused"
	RolloutWaitingApproval RolloutState = "waiting_approval"
	RolloutBaking          RolloutState = "baking"
	RolloutWaitingWindow   RolloutState = "waiting_window"
	// RolloutWatching: a continuous rollout whose waves are done upgrades the devices that
	// come to match its targets, until it is closed.
	RolloutWatching RolloutState = "watching"
	// RolloutCanceling and RolloutAborting: no device upgrade starts any more; the rollout
	// ends canceled or aborted when the running ones have ended.
	RolloutCanceling RolloutState = "canceling"
	RolloutAborting  RolloutState = "aborting"
	RolloutCompleted RolloutState = "completed"
	RolloutAborted   RolloutState = "aborted"
	RolloutCanceled  RolloutState = "canceled"
	RolloutFailed    RolloutState = "failed"
)

// Final reports whether the rollout has ended.
func (s RolloutState) Final() bool {
	switch s {
	case RolloutCompleted, RolloutAborted, RolloutCanceled, RolloutFailed:
		return true
	}
	return false
}

// StateConflict counts devices a rollout could not upgrade because another upgrade of the
// device was already running.
const StateConflict State = "conflict"

// Targets selects a rollout's devices from the inventory in PostgreSQL.
type Targets struct {
	// List names an explicit device list stored with store.CreateTargetList (under a key of its own, "<name>/<random>").
	List string `json:"list,omitempty"`
	// Prefix keeps the devices whose ID starts with it.
	Prefix string `json:"prefix,omitempty"`
	// Where keeps the devices with these labels or reported status values.
	Where map[string]string `json:"where,omitempty"`
	// IncludeUpToDate also selects devices that already report the target version (they end
	// skipped); by default they are left out.
	IncludeUpToDate bool `json:"include_up_to_date,omitempty"`
}

// Wave is one stage of a rollout.
type Wave struct {
	// Percent of all targets this wave reaches (cumulative), or Count of devices in it.
	Percent float64 `json:"percent,omitempty"`
	Count   int     `json:"count,omitempty"`
	// SuccessThreshold is the percentage of the wave's finished devices that must succeed
	// for the rollout to go on; 0 means no threshold.
	SuccessThreshold float64 `json:"success_threshold,omitempty"`
	// Bake is how long to wait after the wave before the next one.
	Bake Duration `json:"bake,omitempty"`
	// Approve makes the wave wait for an approval before it starts.
	Approve bool `json:"approve,omitempty"`
}

// Ramp raises the start rate exponentially: StartPerMinute, multiplied by Factor every Step,
// up to RolloutRequest.MaxPerMinute.
type Ramp struct {
	StartPerMinute float64  `json:"start_per_minute"`
	Factor         float64  `json:"factor"`
	Step           Duration `json:"step"`
}

// Window is a daily maintenance window in a time zone: new device upgrades start only inside
// it. Start and End are "HH:MM"; End before Start spans midnight.
type Window struct {
	Start    string `json:"start"`
	End      string `json:"end"`
	TimeZone string `json:"time_zone"`
}

// Failure actions.
const (
	ActionPause = "pause"
	ActionAbort = "abort"
)

// RolloutRequest asks for a fleet rollout.
type RolloutRequest struct {
	Name string `json:"name"`
	// Upgrade is the template of every device upgrade (DeviceID and Rollout are set per device).
	Upgrade UpgradeRequest `json:"upgrade"`
	Targets Targets        `json:"targets"`
	Waves   []Wave         `json:"waves"`
	// MaxInFlight bounds the device upgrades running at once (at most 1000).
	MaxInFlight int `json:"max_in_flight"`
	// MaxPerMinute bounds the device upgrades started per minute; 0 means no bound.
	MaxPerMinute float64 `json:"max_per_minute,omitempty"`
	Ramp         *Ramp   `json:"ramp,omitempty"`
	// FailurePercent and FailureMinCount: when at least FailureMinCount devices failed or timed
	// out and they are at least FailurePercent of the finished ones (overall or in the wave),
	// the rollout takes FailureAction (ActionPause or ActionAbort). FailurePercent 0 disables.
	FailurePercent  float64 `json:"failure_percent,omitempty"`
	FailureMinCount int     `json:"failure_min_count,omitempty"`
	FailureAction   string  `json:"failure_action,omitempty"`
	Window          *Window `json:"window,omitempty"`
	// SkipPreflight skips downloading the package once before the rollout.
	SkipPreflight bool `json:"skip_preflight,omitempty"`
	// PageSize is how many device IDs are resolved at a time (default 500).
	PageSize int `json:"page_size,omitempty"`
	// ContinueAfter is how many device upgrades one run starts before it continues as new
	// (default 1000), which keeps every execution's history bounded.
	ContinueAfter int `json:"continue_after,omitempty"`
	// Continuous keeps the rollout open after its waves: it upgrades every device that
	// comes to match its targets later (registered, seen again, changed) until it is closed
	// (UpdateClose), within the same limits, window, thresholds and selection.
	Continuous bool `json:"continuous,omitempty"`
}

// Rollout defaults.
const (
	DefaultMaxInFlight     = 100
	DefaultPageSize        = 500
	DefaultContinueAfter   = 1000
	DefaultFailureMinCount = 5
	maxInFlightLimit       = 1000
)

// WithDefaults fills in a rollout's defaults.
func (r RolloutRequest) WithDefaults() RolloutRequest {
	r.Upgrade.Rollout = r.Name
	r.Upgrade = r.Upgrade.WithDefaults()
	if len(r.Waves) == 0 {
		r.Waves = []Wave{{Percent: 100}}
	}
	if r.MaxInFlight == 0 {
		r.MaxInFlight = DefaultMaxInFlight
	}
	if r.PageSize == 0 {
		r.PageSize = DefaultPageSize
	}
	if r.ContinueAfter == 0 {
		r.ContinueAfter = DefaultContinueAfter
	}
	if r.FailureMinCount == 0 {
		r.FailureMinCount = DefaultFailureMinCount
	}
	if r.FailureAction == "" {
		r.FailureAction = ActionPause
	}
	return r
}

// Validate checks a rollout request (after WithDefaults).
func (r RolloutRequest) Validate() error {
	if !rolloutNamePattern.MatchString(r.Name) {
		return fmt.Errorf("rollout name must be 1 to 64 characters of A-Z a-z 0-9 _ . -, not %q", r.Name)
	}
	up := r.Upgrade
	up.DeviceID = "template"
	if err := up.Validate(); err != nil {
		return err
	}
	if r.Targets.List == "" && r.Targets.Prefix == "" && len(r.Targets.Where) == 0 {
		return fmt.Errorf("a rollout needs targets: a device list, a prefix or a where filter")
	}
	if !utf8.ValidString(r.Targets.Prefix) || !utf8.ValidString(r.Targets.List) {
		// JSON, on the way to the workflow, would replace the invalid bytes.
		return fmt.Errorf("the target prefix and list must be UTF-8 text")
	}
	last := 0.0
	for i, w := range r.Waves {
		switch {
		case !(w.Percent >= 0 && w.Percent <= 100) || w.Count < 0 || (w.Percent > 0) == (w.Count > 0):
			return fmt.Errorf("wave %d: give either a percentage (0-100] or a count > 0", i+1)
		case w.Percent > 0 && w.Percent < last:
			return fmt.Errorf("wave %d: percentages are cumulative and must not decrease (%g after %g)", i+1, w.Percent, last)
		case !(w.SuccessThreshold >= 0 && w.SuccessThreshold <= 100):
			return fmt.Errorf("wave %d: success threshold must be 0-100", i+1)
		case w.Bake < 0:
			return fmt.Errorf("wave %d: bake time must not be negative", i+1)
		}
		if w.Percent > 0 {
			last = w.Percent
		}
	}
	switch {
	case r.MaxInFlight < 1 || r.MaxInFlight > maxInFlightLimit:
		return fmt.Errorf("max in flight must be 1 to %d, not %d", maxInFlightLimit, r.MaxInFlight)
	case !(r.MaxPerMinute >= 0) || math.IsInf(r.MaxPerMinute, 1):
		return fmt.Errorf("max per minute must be a number, 0 or more, not %g", r.MaxPerMinute)
	case !(r.FailurePercent >= 0 && r.FailurePercent <= 100):
		return fmt.Errorf("failure threshold must be 0-100 percent")
	case r.FailureMinCount < 1:
		return fmt.Errorf("failure minimum count must be at least 1")
	case r.FailureAction != ActionPause && r.FailureAction != ActionAbort:
		return fmt.Errorf("failure action must be %s or %s, not %q", ActionPause, ActionAbort, r.FailureAction)
	case r.PageSize < 1 || r.PageSize > 5000:
		return fmt.Errorf("page size must be 1 to 5000")
	case r.ContinueAfter < 1:
		return fmt.Errorf("continue-after must be at least 1")
	}
	if r.Ramp != nil && (!(r.Ramp.StartPerMinute > 0) || math.IsInf(r.Ramp.StartPerMinute, 1) ||
		!(r.Ramp.Factor >= 1) || math.IsInf(r.Ramp.Factor, 1) || r.Ramp.Step <= 0) {
		return fmt.Errorf("ramp needs a start rate > 0, a factor >= 1 and a step > 0")
	}
	if r.Window != nil {
		if err := r.Window.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// ParseWaves parses a wave list such as "1%,10%,50%,100%" or "5,50%:95,100%": each item a
// cumulative percentage or a device count, optionally with ":N" for a success threshold.
func ParseWaves(s string) ([]Wave, error) {
	var waves []Wave
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		size, threshold, hasThreshold := strings.Cut(item, ":")
		var w Wave
		if p, ok := strings.CutSuffix(size, "%"); ok {
			v, err := strconv.ParseFloat(p, 64)
			if err != nil || v <= 0 || v > 100 || math.IsNaN(v) {
				return nil, fmt.Errorf("wave %q: percentage must be in (0, 100]", item)
			}
			w.Percent = v
		} else {
			v, err := strconv.Atoi(size)
			if err != nil || v <= 0 {
				return nil, fmt.Errorf("wave %q: give a percentage like 10%% or a device count like 5", item)
			}
			w.Count = v
		}
		if hasThreshold {
			v, err := strconv.ParseFloat(strings.TrimSuffix(threshold, "%"), 64)
			if err != nil || !(v >= 0 && v <= 100) { // NaN too
				return nil, fmt.Errorf("wave %q: success threshold must be 0-100", item)
			}
			w.SuccessThreshold = v
		}
		waves = append(waves, w)
	}
	return waves, nil
}

// CancelRequest is the argument of UpdateCancel.
type CancelRequest struct {
	// CancelRunning also cancels the device upgrades already running; otherwise they finish.
	CancelRunning bool   `json:"cancel_running"`
	Reason        string `json:"reason,omitempty"`
}

// Counts counts device upgrades by state.
type Counts struct {
	Started   int `json:"started"`
	Succeeded int `json:"succeeded"`
	Skipped   int `json:"skipped"`
	Failed    int `json:"failed"`
	TimedOut  int `json:"timed_out"`
	Canceled  int `json:"canceled"`
	Conflict  int `json:"conflict"`
	// Reverted counts upgrades whose device went back to another version within the soak
	// time: failures.
	Reverted int `json:"reverted,omitempty"`
	// Incompatible and Quarantined count targets left out, never started: devices the
	// package does not fit, and devices in quarantine.
	Incompatible int `json:"incompatible,omitempty"`
	Quarantined  int `json:"quarantined,omitempty"`
}

// Finished is how many started upgrades have ended.
func (c Counts) Finished() int {
	return c.Succeeded + c.Skipped + c.Failed + c.TimedOut + c.Canceled + c.Conflict + c.Reverted
}

// Running is how many started upgrades have not ended.
func (c Counts) Running() int { return c.Started - c.Finished() }

// Failures counts the failed and timed-out upgrades.
func (c Counts) Failures() int { return c.Failed + c.TimedOut + c.Reverted }

// Add counts an upgrade that ended in state s. A state that is not a final one (which a
// finished upgrade never reports) counts as failed: it is a failure to account for.
func (c *Counts) Add(s State) {
	switch s {
	case StateSucceeded:
		c.Succeeded++
	case StateSkipped:
		c.Skipped++
	case StateFailed:
		c.Failed++
	case StateTimedOut:
		c.TimedOut++
	case StateCanceled:
		c.Canceled++
	case StateConflict:
		c.Conflict++
	case StateReverted:
		c.Reverted++
	default:
		c.Failed++
	}
}

// Minus is c less b, count by count.
func (c Counts) Minus(b Counts) Counts {
	return Counts{Started: c.Started - b.Started, Succeeded: c.Succeeded - b.Succeeded, Skipped: c.Skipped - b.Skipped,
		Failed: c.Failed - b.Failed, TimedOut: c.TimedOut - b.TimedOut, Canceled: c.Canceled - b.Canceled, Conflict: c.Conflict - b.Conflict,
		Reverted: c.Reverted - b.Reverted, Incompatible: c.Incompatible - b.Incompatible, Quarantined: c.Quarantined - b.Quarantined}
}

// WaveProgress is how one wave stands.
type WaveProgress struct {
	Number int    `json:"number"`
	Target int    `json:"target"`
	Counts Counts `json:"counts"`
}

// RolloutProgress is what QueryProgress returns, and what RolloutWorkflow returns.
type RolloutProgress struct {
	Name        string         `json:"name"`
	Type        string         `json:"type"`
	Version     string         `json:"version"`
	State       RolloutState   `json:"state"`
	Reason      string         `json:"reason,omitempty"`
	Total       int            `json:"total"`
	CurrentWave int            `json:"current_wave"`
	Waves       []WaveProgress `json:"waves"`
	Counts      Counts         `json:"counts"`
	// LeftOut counts the devices the targets matched at pre-flight that the rollout left
	// out, by reason; Counts.Incompatible and Counts.Quarantined count those left out as
	// incompatible or quarantined now (for a continuous rollout, late devices too).
	LeftOut LeftOut `json:"left_out"`
	// Late counts the upgrades of a continuous rollout started after its waves.
	Late *Counts `json:"late,omitempty"`
	// Soak is the upgrades' soak time: a running upgrade may have installed and be
	// soaking.
	Soak Duration `json:"soak,omitempty"`
	// RatePerMinute is the start rate in force; 0 means unbounded.
	RatePerMinute float64 `json:"rate_per_minute"`
	// NextWindowAt is when the maintenance window opens, while the rollout waits for it.
	NextWindowAt *time.Time `json:"next_window_at,omitempty"`
	Runs         int        `json:"runs"`
	// FirstRunID is the rollout's first run ID, which every device upgrade it starts
	// records (UpgradeRequest.RolloutRun), so that its records are told from those of
	// earlier and later rollouts of the same name. Empty for a rollout started before issue
	// 10 (its records can only be found by name) and until its first device upgrade starts.
	FirstRunID string     `json:"first_run_id,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// RolloutInput is the argument of RolloutWorkflow: the request, and, when a run continues as
// new, where the previous run left off.
type RolloutInput struct {
	Request RolloutRequest `json:"request"`
	Carry   *RolloutCarry  `json:"carry,omitempty"`
}

// RolloutCarry is the state a rollout run hands to the next when it continues as new.
type RolloutCarry struct {
	Progress      RolloutProgress `json:"progress"`
	WaveEnds      []int           `json:"wave_ends"`
	Cursor        string          `json:"cursor"`
	Buffer        []string        `json:"buffer,omitempty"`
	Exhausted     bool            `json:"exhausted"`
	WaveOpened    bool            `json:"wave_opened"`
	Baseline      Counts          `json:"baseline"`
	WaveBaseline  Counts          `json:"wave_baseline"`
	Paused        bool            `json:"paused"`
	Aborting      bool            `json:"aborting"`
	Cancel        *CancelRequest  `json:"cancel,omitempty"`
	ApprovedWave  int             `json:"approved_wave"`
	NextStartAt   time.Time       `json:"next_start_at"`
	RampStartedAt time.Time       `json:"ramp_started_at"`
	// Handed lists the device upgrades still running when the run continued as new; the
	// next run follows them to their end.
	Handed []HandedUpgrade `json:"handed,omitempty"`
	// Snapshot names the stored list of the rollout's targets, fixed at pre-flight (empty
	// for rollouts started before versionControl, which select their targets page by page).
	Snapshot string `json:"snapshot,omitempty"`
	// PauseReason, CancelReason and AbortReason say why the rollout is paused, being
	// canceled or aborted; the state shown gives the reason of what it is doing.
	PauseReason  string `json:"pause_reason,omitempty"`
	CancelReason string `json:"cancel_reason,omitempty"`
	AbortReason  string `json:"abort_reason,omitempty"`
	// Watching is set once a continuous rollout's waves are done; Closed once it was
	// closed, with CloseReason. Changes is where its search for late devices goes on, and
	// LateBaseline the late counts at the last resume.
	Watching     bool         `json:"watching,omitempty"`
	Closed       bool         `json:"closed,omitempty"`
	CloseReason  string       `json:"close_reason,omitempty"`
	Changes      ChangeCursor `json:"changes"`
	LateBaseline Counts       `json:"late_baseline"`
}

// HandedUpgrade is a device upgrade one rollout run started and the next follows.
type HandedUpgrade struct {
	Device string `json:"device"`
	RunID  string `json:"run_id"`
	// Wave is the index of the wave that started it.
	Wave int `json:"wave"`
}
