package workflows

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/ota"
)

var (
	targetOptions = workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
	}
	preflightOptions = workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Minute,
		HeartbeatTimeout:    time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, MaximumAttempts: 3,
			NonRetryableErrorTypes: []string{ota.ErrTypePackageMismatch}},
	}
)

// selectOptions run SelectTargets, which judges the whole fleet page by page, heartbeating.
var selectOptions = workflow.ActivityOptions{
	StartToCloseTimeout: 30 * time.Minute,
	HeartbeatTimeout:    time.Minute,
	RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
}

// lateMaxWait is how long one FindLateTargets waits for late devices before it returns
// empty-handed, so that the rollout records where the search stands; findOptions run it.
const lateMaxWait = 5 * time.Minute

var findOptions = workflow.ActivityOptions{
	StartToCloseTimeout: lateMaxWait + 2*time.Minute,
	HeartbeatTimeout:    30 * time.Second,
	RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: time.Minute},
}

// maxFindsPerRun bounds the searches for late devices of one run: an idle continuous
// rollout continues as new after so many (each costs about six history events).
const maxFindsPerRun = 100

// findRetry is how long a continuous rollout waits after a search for late devices failed.
const findRetry = time.Minute

// cleanupOptions run the removal of a finished rollout's target snapshot.
var cleanupOptions = workflow.ActivityOptions{
	StartToCloseTimeout: time.Minute,
	RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second, MaximumAttempts: 10},
}

// awaitOptions run AwaitWorkflows, which follows handed-over device upgrades for as long as
// they run; its heartbeat notices a lost worker within 15 s, after which another worker
// follows them (and sees those that ended meanwhile at once).
var awaitOptions = workflow.ActivityOptions{
	StartToCloseTimeout: 30 * 24 * time.Hour,
	HeartbeatTimeout:    15 * time.Second,
	RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
}

// awaitGather is how long AwaitWorkflows gathers the upgrades that end together.
const awaitGather = 2 * time.Second

// rolloutChange versions the changes to what a running RolloutWorkflow does. Its marker is
// named for the first of them; each later change raises the version, so that one marker per
// run covers them all:
//
//   - versionHandover: a run that continues as new hands its running device upgrades to the
//     next run instead of waiting for all of them to end;
//   - versionControl: no device upgrade starts once a pause, cancel, abort or closed window
//     is known, however late (checked at each start, after target resolution too); a Temporal
//     cancel ends the rollout canceled in every phase; a pending cancel shows as canceling;
//     the targets are fixed at pre-flight in a snapshot, and removed at the end;
//   - versionFleet: the targets are selected by SelectTargets, which leaves out the devices
//     that are disabled, never seen, up to date, incompatible or quarantined and counts
//     them; a continuous rollout stays open after its waves (watch), until closed;
//   - versionRefill: without a start rate, freed slots are refilled a tenth of MaxInFlight
//     at a time (refillBatch), not one by one, so that the children's start and completion
//     events reach the rollout in bunches, fewer workflow tasks for as many devices.
//
// Runs recorded before a version keep the behaviour they had.
const rolloutChange = "handover-running-upgrades"

// Versions of rolloutChange.
const (
	versionHandover = 1
	versionControl  = 2
	versionFleet    = 3
	versionRefill   = 4
)

// runRecordsChange: the device upgrades a rollout starts record its first run ID
// (UpgradeRequest.RolloutRun, RolloutProgress.FirstRunID), so that the records of two
// rollouts of one name are told apart. A change ID of its own, asked by the first run at its
// first device start, so that a rollout that starts none records no marker; the runs it
// continues as carry the answer (FirstRunID) and ask nothing.
const runRecordsChange = "upgrades-record-rollout-run"

// burstWindow is how much unused start rate may be saved up (ota.RateBurst).
const burstWindow = ota.RateBurst

type rollout struct {
	req ota.RolloutRequest
	c   ota.RolloutCarry
	p   *ota.RolloutProgress

	// running holds the device upgrades this run started or follows, by device, until they
	// end; withRunID counts those whose run ID is known (all handed-over ones, and started
	// children once Temporal has started them).
	running   map[string]*child
	withRunID int
	handover  bool // hand running upgrades over at continue-as-new (versionHandover)
	control   bool // the rules of versionControl apply
	fleet     bool // the rules of versionFleet apply
	refill    bool // the rules of versionRefill apply
	// recordsAsked is set once it is settled which run ID the device upgrades record
	// (recordsRun): at once in a continued run (the carry says), at the first start in the
	// first.
	recordsAsked   bool
	startedThisRun int
	draining       bool
	version        int // bumped on every change the main loop waits for
	searchState    string
	// findsThisRun counts this run's searches for late devices; cancelFind cancels the one
	// under way (nil when none is).
	findsThisRun int
	cancelFind   workflow.CancelFunc

	// phase is what the main loop is doing (preflight, running, waiting_approval, baking,
	// waiting_window, or a final state) and phaseReason why; the state shown is derived from
	// them, a pause and a pending cancel (show), so that a pause and a resume never lose
	// what the rollout was waiting for.
	phase       ota.RolloutState
	phaseReason string
}

// child is one device upgrade a rollout run started, or follows for the run that started it.
type child struct {
	// cancel cancels it (asks once for a followed one).
	cancel workflow.CancelFunc
	// runID is its run ID once known; wave the index of the wave that started it.
	runID string
	wave  int
}

// RolloutWorkflow upgrades a fleet in staged waves of DeviceUpgradeWorkflow children, within
// in-flight and rate limits, pausing or aborting at a failure threshold, and continuing as new
// every ContinueAfter devices so that no history grows without bound.
//
// Once a pause, cancel or abort is acknowledged, no further device upgrade starts: mayStart
// is checked by startDevice, the one place that starts them, right before each start.
func RolloutWorkflow(ctx workflow.Context, in ota.RolloutInput) (ota.RolloutProgress, error) {
	req := in.Request.WithDefaults()
	if err := req.Validate(); err != nil {
		return ota.RolloutProgress{}, temporal.NewNonRetryableApplicationError("invalid rollout request: "+err.Error(), ota.ErrTypeInvalidRequest, err)
	}
	r := &rollout{req: req, running: map[string]*child{}}
	v := workflow.GetVersion(ctx, rolloutChange, workflow.DefaultVersion, versionRefill)
	r.handover, r.control, r.fleet, r.refill = v >= versionHandover, v >= versionControl, v >= versionFleet, v >= versionRefill
	if in.Carry != nil {
		r.c = *in.Carry
		r.recordsAsked = true
		r.c.Progress.Runs++
		r.phase = ota.RolloutRunning
		if r.c.Paused && r.c.PauseReason == "" { // carried by a run before versionControl
			r.c.PauseReason = r.c.Progress.Reason
		}
	} else {
		now := workflow.Now(ctx)
		r.c.Progress = ota.RolloutProgress{Name: req.Name, Type: req.Upgrade.Type, Version: req.Upgrade.Version,
			State: ota.RolloutPreflight, Runs: 1, StartedAt: now, UpdatedAt: now, Soak: req.Upgrade.Soak}
		r.c.RampStartedAt = now
		r.phase = ota.RolloutPreflight
	}
	r.p = &r.c.Progress
	if v, ok := workflow.GetTypedSearchAttributes(ctx).GetKeyword(ota.SearchState); ok {
		r.searchState = v
	}
	if in.Carry == nil {
		r.metrics(ctx).WithTags(map[string]string{metrics.LabelType: req.Upgrade.Type}).Counter(metrics.RolloutsStarted).Inc(1)
	}
	if err := r.setHandlers(ctx); err != nil {
		return *r.p, err
	}
	if in.Carry != nil && len(in.Carry.Handed) > 0 {
		r.follow(ctx, in.Carry.Handed)
		r.c.Handed = nil
	}
	if in.Carry == nil {
		if err := r.prepare(ctx); err != nil {
			if r.control && ctx.Err() != nil {
				// A Temporal cancel (Web UI, temporal workflow cancel) during the pre-flight.
				r.onWorkflowCanceled()
				return r.end(ctx)
			}
			// The reason in the operator's words: what the activity said, without the SDK's
			// wrapping (a string in the result and the failure, so replay-safe unguarded).
			reason := errtext.Plain(err)
			r.finish(ctx, ota.RolloutFailed, reason)
			return *r.p, temporal.NewNonRetryableApplicationError(reason, ota.ErrTypeUpgradeFailed, err, *r.p)
		}
	}
	return r.run(ctx)
}

func (r *rollout) setHandlers(ctx workflow.Context) error {
	if err := workflow.SetQueryHandler(ctx, ota.QueryProgress, func() (ota.RolloutProgress, error) {
		p := *r.p
		p.RatePerMinute = r.rate(workflow.Now(ctx))
		return p, nil
	}); err != nil {
		return fmt.Errorf("set query handler: %w", err)
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, ota.UpdatePause, r.onPause,
		workflow.UpdateHandlerOptions{Validator: r.validatePause}); err != nil {
		return fmt.Errorf("set update handler %s: %w", ota.UpdatePause, err)
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, ota.UpdateResume, r.onResume,
		workflow.UpdateHandlerOptions{Validator: r.validateResume}); err != nil {
		return fmt.Errorf("set update handler %s: %w", ota.UpdateResume, err)
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, ota.UpdateCancel, r.onCancel,
		workflow.UpdateHandlerOptions{Validator: r.validateCancel}); err != nil {
		return fmt.Errorf("set update handler %s: %w", ota.UpdateCancel, err)
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, ota.UpdateApprove, r.onApprove,
		workflow.UpdateHandlerOptions{Validator: r.validateApprove}); err != nil {
		return fmt.Errorf("set update handler %s: %w", ota.UpdateApprove, err)
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, ota.UpdateClose, r.onClose,
		workflow.UpdateHandlerOptions{Validator: r.validateClose}); err != nil {
		return fmt.Errorf("set update handler %s: %w", ota.UpdateClose, err)
	}
	return nil
}

// final refuses control updates once the rollout has ended or is being canceled.
func (r *rollout) final() error {
	if r.p.State.Final() || r.c.Cancel != nil {
		return fmt.Errorf("rollout %s is %s", r.req.Name, r.p.State)
	}
	return nil
}

func (r *rollout) validatePause(string) error {
	if err := r.final(); err != nil {
		return err
	}
	if r.c.Paused {
		return errors.New("rollout is already paused")
	}
	return nil
}

func (r *rollout) onPause(ctx workflow.Context, reason string) error {
	r.pause(ctx, operatorPause+reason)
	return nil
}

func (r *rollout) validateResume() error {
	if err := r.final(); err != nil {
		return err
	}
	if !r.c.Paused {
		return errors.New("rollout is not paused")
	}
	return nil
}

func (r *rollout) onResume(ctx workflow.Context) error {
	r.c.Paused = false
	r.c.PauseReason = ""
	r.c.Baseline = r.p.Counts
	if w := r.p.CurrentWave; w >= 1 && w <= len(r.p.Waves) {
		r.c.WaveBaseline = r.p.Waves[w-1].Counts
	}
	if r.p.Late != nil {
		r.c.LateBaseline = *r.p.Late
	}
	if !r.control {
		// Before versionControl a resume showed running whatever the rollout waited for.
		r.p.Reason = ""
		r.phase, r.phaseReason = ota.RolloutRunning, ""
		r.changed(ctx, ota.RolloutRunning)
		return nil
	}
	r.show(ctx)
	return nil
}

// validateCancel refuses a cancel of an ended rollout, and a second cancel unless it also
// cancels the running upgrades where the first did not.
func (r *rollout) validateCancel(c ota.CancelRequest) error {
	if r.p.State.Final() {
		return fmt.Errorf("rollout %s is %s", r.req.Name, r.p.State)
	}
	if prev := r.c.Cancel; prev != nil && (prev.CancelRunning || !c.CancelRunning) {
		if prev.CancelRunning {
			return fmt.Errorf("rollout %s is already being canceled with its running upgrades", r.req.Name)
		}
		return fmt.Errorf("rollout %s is already being canceled; cancel with --cancel-running to cancel its running upgrades too", r.req.Name)
	}
	return nil
}

func (r *rollout) onCancel(ctx workflow.Context, c ota.CancelRequest) error {
	if r.c.Cancel != nil { // escalated: the running upgrades are canceled too
		r.c.Cancel.CancelRunning = true
		r.version++
		return nil
	}
	r.c.Cancel = &c
	reason := "canceled by operator"
	if c.Reason != "" {
		reason += ": " + c.Reason
	}
	if !r.control {
		r.p.Reason = reason
		r.version++
		return nil
	}
	r.c.CancelReason = reason
	r.show(ctx)
	return nil
}

// validateApprove accepts an approval of the wave that waits for one, also while the rollout
// is paused (the wave then starts on resume).
func (r *rollout) validateApprove(wave int) error {
	if err := r.final(); err != nil {
		return err
	}
	if r.phase != ota.RolloutWaitingApproval {
		return fmt.Errorf("no wave is waiting for approval (rollout is %s)", r.p.State)
	}
	if wave != 0 && wave != r.p.CurrentWave {
		return fmt.Errorf("wave %d is waiting for approval, not wave %d", r.p.CurrentWave, wave)
	}
	return nil
}

func (r *rollout) onApprove(ctx workflow.Context, wave int) error {
	r.c.ApprovedWave = r.p.CurrentWave
	r.version++
	return nil
}

// validateClose accepts the close of a continuous rollout that is neither ended nor closed.
func (r *rollout) validateClose(string) error {
	if err := r.final(); err != nil {
		return err
	}
	if !r.req.Continuous || !r.fleet {
		return fmt.Errorf("rollout %s is not continuous: it ends by itself after its waves (cancel it to stop it sooner)", r.req.Name)
	}
	if r.c.Closed {
		return fmt.Errorf("rollout %s is already closed: it ends once its running upgrades have", r.req.Name)
	}
	return nil
}

// onClose closes a continuous rollout: it takes on no more late devices and completes once
// its running upgrades have ended (before its waves are done, it completes after them).
func (r *rollout) onClose(ctx workflow.Context, reason string) error {
	r.c.Closed = true
	r.c.CloseReason = "closed by operator"
	if reason != "" {
		r.c.CloseReason += ": " + reason
	}
	if r.cancelFind != nil {
		r.cancelFind()
	}
	r.version++
	return nil
}

// prepare checks the package and counts and splits the targets into waves. From
// versionControl on, the targets are fixed here: the devices that match, registered and
// enabled, are stored as the rollout's snapshot list, which the later pages read.
func (r *rollout) prepare(ctx workflow.Context) error {
	r.upsertState(ctx, ota.RolloutPreflight)
	var t *activities.Activities
	if !r.req.SkipPreflight {
		up := r.req.Upgrade
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, preflightOptions), t.CheckPackage,
			up.PackageCheck()).Get(ctx, nil)
		if err != nil {
			return fmt.Errorf("pre-flight check failed, no device was touched: %s", checkMessage(err))
		}
	}
	var total int
	actx := workflow.WithActivityOptions(ctx, targetOptions)
	if r.fleet {
		key := snapshotKey(r.req.Name, workflow.GetInfo(ctx).OriginalRunID)
		in := ota.SelectTargetsInput{Rollout: r.req.Name, Key: key, Selector: r.req.Selector(), KeepLeftOut: r.req.Continuous}
		var sel ota.TargetSelection
		if err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, selectOptions), t.SelectTargets, in).Get(ctx, &sel); err != nil {
			return fmt.Errorf("select targets: %w", err)
		}
		r.c.Snapshot, r.c.Changes = key, sel.Changes
		total = sel.Targets
		r.p.LeftOut = sel.LeftOut
		r.p.Counts.Incompatible, r.p.Counts.Quarantined = sel.LeftOut.Incompatible, sel.LeftOut.Quarantined
	} else if r.control {
		key := snapshotKey(r.req.Name, workflow.GetInfo(ctx).OriginalRunID)
		in := ota.SnapshotInput{Rollout: r.req.Name, Key: key, Filter: r.filter("", 0)}
		if err := workflow.ExecuteActivity(actx, t.SnapshotTargets, in).Get(ctx, &total); err != nil {
			return fmt.Errorf("resolve targets: %w", err)
		}
		r.c.Snapshot = key
	} else if err := workflow.ExecuteActivity(actx, t.CountTargets, r.filter("", 0)).Get(ctx, &total); err != nil {
		return fmt.Errorf("count targets: %w", err)
	}
	r.p.Total = total
	r.c.WaveEnds = ota.WaveEnds(total, r.req.Waves)
	prev := 0
	for i, end := range r.c.WaveEnds {
		r.p.Waves = append(r.p.Waves, ota.WaveProgress{Number: i + 1, Target: end - prev})
		prev = end
	}
	r.p.CurrentWave = 1
	r.enter(ctx, ota.RolloutRunning, "")
	return nil
}

// snapshotKey names the snapshot list of a rollout's targets: one per rollout, whatever its
// runs (originalRunID is the first run's).
func snapshotKey(name, originalRunID string) string {
	return ota.RolloutWorkflowID(name) + "@" + originalRunID
}

// filter selects the rollout's targets: the snapshot, once taken, or the request's targets.
func (r *rollout) filter(after string, limit int) ota.DeviceFilter {
	if r.c.Snapshot != "" {
		return ota.DeviceFilter{List: r.c.Snapshot, After: after, Limit: limit}
	}
	f := ota.DeviceFilter{List: r.req.Targets.List, Prefix: r.req.Targets.Prefix, Labels: r.req.Targets.Where,
		After: after, Limit: limit}
	if !r.req.Targets.IncludeUpToDate {
		f.NotReportingKey, f.NotReportingValue = r.req.Upgrade.VersionKey, r.req.Upgrade.Version
	}
	return f
}

func (r *rollout) run(ctx workflow.Context) (ota.RolloutProgress, error) {
	for !r.c.Watching && r.p.CurrentWave <= len(r.p.Waves) {
		wi := r.p.CurrentWave - 1
		wave := r.req.Waves[wi]
		if !r.c.WaveOpened {
			if wave.Approve && r.c.ApprovedWave < r.p.CurrentWave {
				r.enter(ctx, ota.RolloutWaitingApproval,
					fmt.Sprintf("wave %d waits for approval (starter rollout approve %s)", r.p.CurrentWave, r.req.Name))
				if err := r.await(ctx, func() bool { return r.c.ApprovedWave >= r.p.CurrentWave || r.c.Cancel != nil }); err != nil {
					return r.end(ctx)
				}
				if r.c.Cancel != nil {
					return r.end(ctx)
				}
				if !r.control {
					r.p.Reason = ""
				}
			}
			r.c.WaveOpened = true
			r.c.WaveBaseline = r.p.Waves[wi].Counts
			r.enter(ctx, ota.RolloutRunning, "")
		}
		if done, err := r.runWave(ctx, wi); done || err != nil {
			return r.end(ctx)
		}
		if r.draining {
			return *r.p, r.continueAsNew(ctx)
		}
		// The wave has ended: check its success threshold, bake, and go on.
		wp := r.p.Waves[wi]
		r.metrics(ctx).Counter(metrics.RolloutWavesFinished).Inc(1)
		r.notify(ctx, ota.EventRolloutWaveFinished, wp.Number)
		if t := wave.SuccessThreshold; t > 0 {
			c := wp.Counts
			judged := c.Finished() - c.Canceled - c.Conflict
			rate := 100.0
			if judged > 0 {
				rate = 100 * float64(c.Succeeded+c.Skipped) / float64(judged)
			}
			if rate < t {
				reason := fmt.Sprintf("wave %d: %.1f%% succeeded, below its %.1f%% threshold", wp.Number, rate, t)
				if r.req.FailureAction == ota.ActionAbort {
					r.abort(ctx, reason)
					return r.end(ctx)
				}
				r.pause(ctx, reason)
				if err := r.await(ctx, func() bool { return !r.c.Paused || r.c.Cancel != nil }); err != nil || r.c.Cancel != nil {
					return r.end(ctx)
				}
			}
		}
		if wave.Bake > 0 && r.p.CurrentWave < len(r.p.Waves) {
			r.enter(ctx, ota.RolloutBaking, fmt.Sprintf("baking wave %d for %s", wp.Number, wave.Bake))
			bake := workflow.AwaitOptions{Timeout: wave.Bake.Std(), TimerOptions: workflow.TimerOptions{Summary: fmt.Sprintf("bake after wave %d", wp.Number)}}
			if _, err := workflow.AwaitWithOptions(ctx, bake, func() bool { return r.c.Cancel != nil }); err != nil || r.c.Cancel != nil {
				if err != nil {
					r.onWorkflowCanceled()
				}
				return r.end(ctx)
			}
			if !r.control {
				r.p.Reason = ""
			}
		}
		r.p.CurrentWave++
		r.c.WaveOpened = false
		if r.p.CurrentWave <= len(r.p.Waves) {
			r.enter(ctx, ota.RolloutRunning, "")
		}
		if r.startedThisRun >= r.req.ContinueAfter || workflow.GetInfo(ctx).GetContinueAsNewSuggested() {
			return *r.p, r.continueAsNew(ctx)
		}
	}
	if r.fleet && r.req.Continuous && (r.c.Watching || !r.c.Closed) {
		return r.watch(ctx)
	}
	return r.end(ctx)
}

// runWave starts and follows the current wave's device upgrades until all of them ended. It
// reports done when the rollout must end (canceled or aborted).
func (r *rollout) runWave(ctx workflow.Context, wi int) (done bool, err error) {
	end := r.c.WaveEnds[wi]
	for {
		if r.c.Cancel != nil && r.c.Cancel.CancelRunning {
			r.cancelRunning()
		}
		if (r.c.Cancel != nil || r.c.Aborting) && len(r.running) == 0 {
			return true, nil
		}
		if !r.draining && (r.startedThisRun >= r.req.ContinueAfter || workflow.GetInfo(ctx).GetContinueAsNewSuggested()) {
			r.draining = true
		}
		reachedEnd := r.p.Counts.Started >= end || (r.c.Exhausted && len(r.c.Buffer) == 0)
		if reachedEnd && len(r.running) == 0 {
			return false, nil
		}
		if r.draining && (len(r.running) == 0 || (r.handover && r.withRunID == len(r.running))) {
			// Every running upgrade has started: the next run follows them.
			return false, nil
		}
		now := workflow.Now(ctx)
		var wake time.Time // when to look again at the latest, and why
		var why string
		if reachedEnd && r.fleet && r.req.Upgrade.Soak > 0 {
			r.enter(ctx, ota.RolloutRunning, fmt.Sprintf("wave %d: %d upgrade(s) still running; a device counts once it has held the version for the %s soak",
				wi+1, len(r.running), r.req.Upgrade.Soak))
		}
		if !reachedEnd && r.mayStart() {
			if !r.inWindow(now) {
				wake, why = r.nextWindowOpen(now), timerWindow
				r.enter(ctx, ota.RolloutWaitingWindow, r.windowReason(wake))
				if r.control {
					r.p.NextWindowAt = &wake
				}
			} else {
				r.enter(ctx, ota.RolloutRunning, "")
				r.p.NextWindowAt = nil
				n := min(r.req.MaxInFlight-len(r.running), end-r.p.Counts.Started)
				if r.waitToRefill(now, n, end) {
					n = 0 // the next ended upgrade looks again
				}
				n, wake = r.allowance(now, n)
				why = timerRate
				if n > 0 {
					if err := r.startDevices(ctx, wi, n); err != nil {
						return false, err
					}
					continue
				}
			}
		}
		seen := r.version
		if err := awaitUntil(ctx, now, wake, why, func() bool { return r.version != seen }); err != nil {
			r.onWorkflowCanceled()
			return true, err
		}
	}
}

// Summaries of the rollout's timers, as the Web UI's timeline shows them.
const (
	timerWindow    = "waiting for the maintenance window"
	timerRate      = "rate limit"
	timerFindRetry = "retry the search for late devices"
)

// awaitUntil waits for cond, and, unless wake is zero, until wake (from now) at the latest,
// on a timer whose summary says why. It returns the error of the workflow being canceled.
func awaitUntil(ctx workflow.Context, now, wake time.Time, why string, cond func() bool) error {
	if wake.IsZero() {
		return workflow.Await(ctx, cond)
	}
	_, err := workflow.AwaitWithOptions(ctx, workflow.AwaitOptions{Timeout: max(wake.Sub(now), time.Millisecond),
		TimerOptions: workflow.TimerOptions{Summary: why}}, cond)
	return err
}

// waitToRefill reports whether n free slots are too few to start upgrades yet (from
// versionRefill on): fewer than refillBatch while others run, the wave has more to start and
// no start rate spaces the starts.
func (r *rollout) waitToRefill(now time.Time, n, end int) bool {
	return r.refill && n < r.refillBatch() && n < end-r.p.Counts.Started && len(r.running) > 0 && r.rate(now) <= 0
}

// refillBatch is the least number of free slots refilled at once: a tenth of MaxInFlight.
func (r *rollout) refillBatch() int { return max(1, r.req.MaxInFlight/10) }

// mayStart reports whether the rollout may start devices, limits aside.
func (r *rollout) mayStart() bool {
	return !r.c.Paused && r.c.Cancel == nil && !r.c.Aborting && !r.draining && len(r.running) < r.req.MaxInFlight
}

// activeState is what the rollout showed before versionControl while starting devices.
func (r *rollout) activeState() ota.RolloutState {
	if r.c.Paused {
		return ota.RolloutPaused
	}
	return ota.RolloutRunning
}

// rate is the start rate per minute in force; 0 means unbounded.
func (r *rollout) rate(now time.Time) float64 {
	return r.req.StartRate(now.Sub(r.c.RampStartedAt))
}

// allowance returns how many of n starts the rate allows now, and when to look again if none.
func (r *rollout) allowance(now time.Time, n int) (int, time.Time) {
	rate := r.rate(now)
	if rate <= 0 || n <= 0 {
		return n, time.Time{}
	}
	interval := time.Duration(float64(time.Minute) / rate)
	next := r.c.NextStartAt
	if floor := now.Add(-burstWindow); next.Before(floor) {
		next = floor
	}
	allowed := 0
	for allowed < n && !next.After(now) {
		allowed++
		next = next.Add(interval)
	}
	if allowed == 0 {
		return 0, next
	}
	r.c.NextStartAt = next
	return allowed, time.Time{}
}

// startDevices starts up to n device upgrades of wave wi as child workflows, resolving the
// next page of targets first when none is buffered.
func (r *rollout) startDevices(ctx workflow.Context, wi, n int) error {
	if len(r.c.Buffer) == 0 && !r.c.Exhausted {
		var ids []string
		var t *activities.Activities
		if err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, targetOptions), t.ResolveTargets,
			r.filter(r.c.Cursor, r.req.PageSize)).Get(ctx, &ids); err != nil {
			return fmt.Errorf("resolve targets: %w", err)
		}
		if len(ids) == 0 {
			r.c.Exhausted = true
			r.version++
			return nil
		}
		r.c.Buffer = ids
		r.c.Cursor = ids[len(ids)-1]
	}
	n = min(n, len(r.c.Buffer))
	started := 0
	for _, id := range r.c.Buffer[:n] {
		if !r.startDevice(ctx, wi, id) {
			break
		}
		started++
	}
	r.c.Buffer = r.c.Buffer[started:]
	if len(r.c.Buffer) == 0 {
		r.c.Buffer = nil
	}
	return nil
}

// startDevice starts the upgrade of one device as a child workflow, unless the rollout may no
// longer start devices (from versionControl on): a pause, cancel or abort acknowledged, or
// the maintenance window closed, while the targets were being resolved. It reports whether
// it started it.
func (r *rollout) startDevice(ctx workflow.Context, wi int, id string) bool {
	if r.control && (!r.mayStart() || !r.inWindow(workflow.Now(ctx))) {
		return false
	}
	if _, dup := r.running[id]; dup && wi == r.lateWave() {
		// A late device found again while its upgrade runs: it is not started twice.
		return true
	}
	req := r.req.Upgrade
	req.DeviceID = id
	req.RolloutRun = r.recordsRun(ctx)
	// The children a rollout starts are of the worker's revision, whenever the rollout
	// started (replay compares a child's type, not its input).
	req.Revision = ota.UpgradeRevision
	opts := ChildOptions(req)
	opts.ParentClosePolicy = enumspb.PARENT_CLOSE_POLICY_ABANDON
	opts.WaitForCancellation = true
	// Children run on a context of their own, so that they are canceled only on purpose.
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	cctx, cancel := workflow.WithCancel(workflow.WithChildOptions(dctx, opts))
	fut := workflow.ExecuteChildWorkflow(cctx, ota.DeviceUpgradeWorkflowName, req)
	c := &child{cancel: cancel, wave: wi}
	r.running[id] = c
	r.startedThisRun++
	r.p.Counts.Started++
	r.waveCounts(wi).Started++
	r.metrics(ctx).Counter(metrics.RolloutDevicesStarted).Inc(1)
	r.showDetails(ctx)
	workflow.Go(dctx, func(gctx workflow.Context) {
		if r.handover {
			var exec workflow.Execution
			if err := fut.GetChildWorkflowExecution().Get(gctx, &exec); err == nil {
				c.runID = exec.RunID
				r.withRunID++
				r.version++
			}
		}
		var st ota.UpgradeStatus
		err := fut.Get(gctx, &st)
		r.ended(gctx, id, childState(err, st))
	})
	return true
}

// recordsRun is the run ID the rollout's device upgrades record as their rollout's: its first
// run's from runRecordsChange on, "" for a rollout started before (its records are told apart
// by name only). The first run settles it at its first device start.
func (r *rollout) recordsRun(ctx workflow.Context) string {
	if !r.recordsAsked {
		r.recordsAsked = true
		if workflow.GetVersion(ctx, runRecordsChange, workflow.DefaultVersion, 1) >= 1 {
			info := workflow.GetInfo(ctx)
			// FirstRunID is this run's own ID in a first run (kept through a reset); the SDK's
			// test environment leaves it empty.
			r.p.FirstRunID = cmp.Or(info.FirstRunID, info.WorkflowExecution.RunID)
		}
	}
	return r.p.FirstRunID
}

// cancelRunning cancels every running device upgrade (again, harmlessly, for those already
// asked).
func (r *rollout) cancelRunning() {
	for _, id := range workflow.DeterministicKeys(r.running) {
		r.running[id].cancel()
	}
}

// ended counts a device upgrade that ended in state.
func (r *rollout) ended(ctx workflow.Context, id string, state ota.State) {
	c := r.running[id]
	wi := c.wave
	if c.runID != "" {
		r.withRunID--
	}
	delete(r.running, id)
	r.p.Counts.Add(state)
	r.waveCounts(wi).Add(state)
	r.p.UpdatedAt = workflow.Now(ctx)
	r.version++
	r.showDetails(ctx)
	if state == ota.StateConflict {
		workflow.GetLogger(ctx).Warn("Device already has an upgrade running; recorded as a conflict", "Device", id)
	}
	r.checkFailures(ctx)
}

// lateWave is the wave index of the upgrades a continuous rollout starts after its waves:
// one past the last wave.
func (r *rollout) lateWave() int { return len(r.p.Waves) }

// waveCounts are the counts of wave index wi, or the late counts.
func (r *rollout) waveCounts(wi int) *ota.Counts {
	if wi >= len(r.p.Waves) {
		if r.p.Late == nil {
			r.p.Late = &ota.Counts{}
		}
		return r.p.Late
	}
	return &r.p.Waves[wi].Counts
}

// follow takes over the device upgrades an earlier run handed over: they count as running
// until AwaitWorkflows reports their end, and canceling the rollout's running upgrades
// cancels them too.
func (r *rollout) follow(ctx workflow.Context, handed []ota.HandedUpgrade) {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	for _, h := range handed {
		wid, runID := ota.DeviceWorkflowID(h.Device), h.RunID
		requested := false
		r.running[h.Device] = &child{runID: runID, wave: h.Wave, cancel: func() {
			// Once, without waiting, as canceling a child: the upgrade ends canceled and
			// AwaitWorkflows says so.
			if !requested {
				requested = true
				workflow.RequestCancelExternalWorkflow(dctx, wid, runID)
			}
		}}
		if runID != "" {
			r.withRunID++
		}
	}
	workflow.Go(dctx, func(gctx workflow.Context) {
		var a *activities.Activities
		actx := workflow.WithActivityOptions(gctx, awaitOptions)
		pending := slices.Clone(handed)
		for len(pending) > 0 {
			execs := make([]ota.Execution, len(pending))
			for i, h := range pending {
				execs[i] = ota.Execution{WorkflowID: ota.DeviceWorkflowID(h.Device), RunID: h.RunID}
			}
			var outcomes []ota.Outcome
			if err := workflow.ExecuteActivity(actx, a.AwaitWorkflows,
				ota.AwaitWorkflowsInput{Executions: execs, Gather: ota.Duration(awaitGather)}).Get(gctx, &outcomes); err != nil {
				// Only a worker without a Temporal client gets here (the activity retries
				// everything else): count them failed rather than wait forever.
				workflow.GetLogger(gctx).Error("Cannot follow the handed-over device upgrades; counting them failed", "Error", err)
				for _, h := range pending {
					r.ended(gctx, h.Device, ota.StateFailed)
				}
				return
			}
			states := make(map[string]ota.State, len(outcomes)) // by workflow ID
			for _, o := range outcomes {
				states[o.WorkflowID] = outcomeState(o)
			}
			// In pending's order, which is the outcomes' order.
			still := pending[:0]
			for _, h := range pending {
				if st, ok := states[ota.DeviceWorkflowID(h.Device)]; ok {
					r.ended(gctx, h.Device, st)
				} else {
					still = append(still, h)
				}
			}
			pending = still
		}
	})
}

// outcomeState is the final state of a device upgrade from how AwaitWorkflows saw it end,
// read as childState reads a child's result.
func outcomeState(o ota.Outcome) ota.State {
	switch {
	case !o.Failed:
		if o.Result == nil || o.Result.State == "" {
			return ota.StateFailed
		}
		return o.Result.State
	case o.ErrorType == ota.ErrTypeUpgradeTimedOut:
		return ota.StateTimedOut
	case o.ErrorType == ota.ErrTypeUpgradeReverted:
		return ota.StateReverted
	case o.Canceled:
		return ota.StateCanceled
	}
	return ota.StateFailed
}

// childState is the final state of a device upgrade child from its result.
func childState(err error, st ota.UpgradeStatus) ota.State {
	if err == nil {
		return st.State
	}
	if temporal.IsWorkflowExecutionAlreadyStartedError(err) {
		return ota.StateConflict
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		switch appErr.Type() {
		case ota.ErrTypeUpgradeTimedOut:
			return ota.StateTimedOut
		case ota.ErrTypeUpgradeReverted:
			return ota.StateReverted
		}
		return ota.StateFailed
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) {
		return ota.StateCanceled
	}
	return ota.StateFailed
}

// checkFailures applies the failure threshold, overall and to the current wave, counting
// from the last resume.
func (r *rollout) checkFailures(ctx workflow.Context) {
	if r.req.FailurePercent <= 0 || r.c.Paused || r.c.Aborting || r.c.Cancel != nil {
		return
	}
	tripped := func(c ota.Counts) bool {
		judged := c.Finished() - c.Canceled - c.Conflict
		return c.Failures() >= r.req.FailureMinCount && judged > 0 &&
			100*float64(c.Failures())/float64(judged) >= r.req.FailurePercent
	}
	overall := r.p.Counts.Minus(r.c.Baseline)
	wi := r.p.CurrentWave - 1
	var wave ota.Counts
	waveScope := fmt.Sprintf("in wave %d", wi+1)
	switch {
	case r.c.Watching && r.p.Late != nil:
		wave, waveScope = r.p.Late.Minus(r.c.LateBaseline), "among the late devices"
	case wi >= 0 && wi < len(r.p.Waves):
		wave = r.p.Waves[wi].Counts.Minus(r.c.WaveBaseline)
	}
	var c ota.Counts
	scope := ""
	switch {
	case tripped(wave):
		c, scope = wave, waveScope
	case tripped(overall):
		c, scope = overall, "overall"
	default:
		return
	}
	reason := fmt.Sprintf("failure threshold reached %s: %d of %d finished devices failed, timed out or reverted (threshold %.1f%%, at least %d)",
		scope, c.Failures(), c.Finished()-c.Canceled-c.Conflict, r.req.FailurePercent, r.req.FailureMinCount)
	if r.req.FailureAction == ota.ActionAbort {
		r.abort(ctx, reason)
		return
	}
	r.pause(ctx, reason)
}

// operatorPause starts the reason of a pause an operator asked for.
const operatorPause = "paused by operator: "

func (r *rollout) pause(ctx workflow.Context, reason string) {
	r.c.Paused = true
	cause := metrics.CauseThreshold
	if strings.HasPrefix(reason, operatorPause) {
		cause = metrics.CauseOperator
	}
	r.metrics(ctx).WithTags(map[string]string{metrics.LabelCause: cause}).Counter(metrics.RolloutPauses).Inc(1)
	if !r.control {
		r.p.Reason = reason
		r.changed(ctx, ota.RolloutPaused)
	} else {
		r.c.PauseReason = reason
		r.show(ctx)
	}
	r.notify(ctx, ota.EventRolloutPaused, 0)
}

// abort makes the rollout end aborted once its running upgrades have ended.
func (r *rollout) abort(ctx workflow.Context, reason string) {
	r.c.Aborting = true
	if !r.control {
		r.p.Reason = reason
		r.version++
		return
	}
	r.c.AbortReason = reason
	r.show(ctx)
}

// await waits for cond, or returns the error of the rollout workflow being canceled.
func (r *rollout) await(ctx workflow.Context, cond func() bool) error {
	if err := workflow.Await(ctx, cond); err != nil {
		r.onWorkflowCanceled()
		return err
	}
	return nil
}

// onWorkflowCanceled handles a Temporal cancellation of the rollout itself: unless an
// operator already chose how to cancel, running device upgrades are canceled too.
func (r *rollout) onWorkflowCanceled() {
	if r.c.Cancel == nil {
		r.c.Cancel = &ota.CancelRequest{CancelRunning: true}
		r.p.Reason = "rollout workflow canceled"
		r.c.CancelReason = r.p.Reason
	}
}

// enter records what the main loop does now, and why, and shows it.
func (r *rollout) enter(ctx workflow.Context, phase ota.RolloutState, reason string) {
	r.phase, r.phaseReason = phase, reason
	if r.control {
		r.show(ctx)
		return
	}
	// Before versionControl the state was the phase, or paused while devices could start.
	switch phase {
	case ota.RolloutRunning:
		phase = r.activeState()
	case ota.RolloutWaitingApproval, ota.RolloutBaking:
		r.p.Reason = reason
	}
	r.changed(ctx, phase)
}

// show derives the state shown, and its reason, from the phase, a pending cancel or abort and
// a pause.
func (r *rollout) show(ctx workflow.Context) {
	s, reason := r.phase, r.phaseReason
	switch {
	case s.Final():
	case r.c.Cancel != nil:
		s, reason = ota.RolloutCanceling, r.c.CancelReason
	case r.c.Aborting:
		s, reason = ota.RolloutAborting, r.c.AbortReason
	case r.c.Paused:
		s, reason = ota.RolloutPaused, r.c.PauseReason
	}
	r.p.Reason = reason
	r.changed(ctx, s)
}

// changed records a change the main loop waits for and keeps the state search attribute.
func (r *rollout) changed(ctx workflow.Context, s ota.RolloutState) {
	r.version++
	if r.p.State != s {
		r.p.State = s
		r.p.UpdatedAt = workflow.Now(ctx)
	}
	r.upsertState(ctx, s)
	r.showDetails(ctx)
}

func (r *rollout) upsertState(ctx workflow.Context, s ota.RolloutState) {
	if r.searchState == string(s) {
		return
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, ota.SearchState.ValueSet(string(s))); err != nil {
		workflow.GetLogger(ctx).Error("Could not upsert the state search attribute", "Error", err)
		return
	}
	r.searchState = string(s)
}

// end finishes the rollout once no device upgrade it started is running.
func (r *rollout) end(ctx workflow.Context) (ota.RolloutProgress, error) {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	if r.control && ctx.Err() != nil {
		// Canceled in Temporal (Web UI, temporal workflow cancel) wherever the loop was.
		r.onWorkflowCanceled()
		r.show(dctx)
	}
	if !r.control {
		if r.c.Cancel != nil && r.c.Cancel.CancelRunning {
			r.cancelRunning()
		}
		_ = workflow.Await(dctx, func() bool { return len(r.running) == 0 })
	}
	for r.control && len(r.running) > 0 {
		// A cancel that comes, or turns into a cancel of the running upgrades, meanwhile
		// cancels them too.
		canceling := r.c.Cancel != nil && r.c.Cancel.CancelRunning
		if canceling {
			r.cancelRunning()
		}
		_ = workflow.Await(dctx, func() bool {
			return len(r.running) == 0 || (!canceling && r.c.Cancel != nil && r.c.Cancel.CancelRunning)
		})
	}
	switch {
	case r.c.Cancel != nil:
		r.finish(dctx, ota.RolloutCanceled, r.p.Reason)
		if ctx.Err() != nil {
			return *r.p, temporal.NewCanceledError(*r.p)
		}
		return *r.p, nil // canceled by the cancel update: the run itself completes
	case r.c.Aborting:
		r.finish(dctx, ota.RolloutAborted, r.p.Reason)
		return *r.p, temporal.NewNonRetryableApplicationError("rollout aborted: "+r.p.Reason, "RolloutAborted", nil, *r.p)
	}
	r.finish(dctx, ota.RolloutCompleted, cmp.Or(r.c.CloseReason, r.completedReason()))
	return *r.p, nil
}

// completedReason says why a completed rollout upgraded nothing, when it matched no device
// (a string in the result: replay-safe).
func (r *rollout) completedReason() string {
	if r.p.Total > 0 || len(r.p.Waves) == 0 {
		return ""
	}
	if r.req.Targets.IncludeUpToDate {
		return "matched no device: no registered, enabled device matches the targets"
	}
	return fmt.Sprintf("matched no device: no registered, enabled device matches the targets and does not already report %s=%s",
		r.req.Upgrade.VersionKey, r.req.Upgrade.Version)
}

// finish ends the rollout in a final state; from versionControl on it removes the snapshot
// of its targets (bookkeeping: a failure is logged, the rollout ends all the same).
func (r *rollout) finish(ctx workflow.Context, s ota.RolloutState, reason string) {
	now := workflow.Now(ctx)
	r.p.Reason = reason
	r.p.FinishedAt = &now
	r.phase, r.phaseReason = s, reason
	// The wave count runs one past the last wave when all are done; the last one is shown.
	r.p.CurrentWave = min(r.p.CurrentWave, len(r.p.Waves))
	r.changed(ctx, s)
	r.metrics(ctx).WithTags(map[string]string{metrics.LabelState: string(s)}).Counter(metrics.RolloutsFinished).Inc(1)
	r.notify(ctx, rolloutEvents[s], 0)
	if r.control && r.c.Snapshot != "" {
		var t *activities.Activities
		if err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, cleanupOptions), t.DeleteTargetLists,
			[]string{r.c.Snapshot}).Get(ctx, nil); err != nil {
			workflow.GetLogger(ctx).Error("Could not remove the rollout's target snapshot", "List", r.c.Snapshot, "Error", err)
		}
	}
	_ = workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) })
}

// continueAsNew hands the rollout to a fresh run, with the device upgrades still running (none
// in runs recorded before handoverChange).
func (r *rollout) continueAsNew(ctx workflow.Context) error {
	_ = workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) })
	r.p.UpdatedAt = workflow.Now(ctx)
	carry := r.c
	carry.Handed = nil
	for _, id := range workflow.DeterministicKeys(r.running) {
		c := r.running[id]
		carry.Handed = append(carry.Handed, ota.HandedUpgrade{Device: id, RunID: c.runID, Wave: c.wave})
	}
	return workflow.NewContinueAsNewError(ctx, ota.RolloutWorkflowName, ota.RolloutInput{Request: r.req, Carry: &carry})
}

// inWindow reports whether now is inside the maintenance window (always, without one).
func (r *rollout) inWindow(now time.Time) bool {
	return r.req.Window == nil || r.req.Window.Contains(now)
}

// nextWindowOpen is when the maintenance window next opens after now.
func (r *rollout) nextWindowOpen(now time.Time) time.Time {
	return r.req.Window.NextOpen(now)
}

// windowReason says why no device starts while the window is closed, and when it opens.
func (r *rollout) windowReason(opens time.Time) string {
	return r.req.Window.Waiting(opens)
}
