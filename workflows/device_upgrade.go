package workflows

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// phase is where an upgrade attempt stands, as far as timing goes.
type phase int

const (
	phaseSend    phase = iota // a command is to be sent
	phaseWaiting              // a command is out; waiting for reports
	phaseBackoff              // an attempt ended; waiting before the next one
	phaseSoak                 // succeeded; watching the device's reports for the soak time
	phaseDone                 // final
)

// Local activity options: bookkeeping and the command publish are short, so they run in the
// worker as local activities, which keeps a successful upgrade's history small.
var (
	sendOptions = workflow.LocalActivityOptions{
		StartToCloseTimeout:    15 * time.Second,
		ScheduleToCloseTimeout: 2 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    time.Second,
			BackoffCoefficient: 2,
			MaximumInterval:    20 * time.Second,
			NonRetryableErrorTypes: []string{ota.ErrTypeUnknownDevice,
				ota.ErrTypeDeviceDisabled, ota.ErrTypeInvalidCommand},
		},
	}
	recordOptions = workflow.LocalActivityOptions{
		StartToCloseTimeout:    15 * time.Second,
		ScheduleToCloseTimeout: 5 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    time.Second,
			BackoffCoefficient: 2,
			MaximumInterval:    30 * time.Second,
		},
	}
)

// Changes to what a running DeviceUpgradeWorkflow does, each guarded by workflow.GetVersion
// where it alters the commands of a run recorded before it. Each is asked only on the rare
// path it changes, so that an upgrade that never takes it records no marker.
const (
	// statusNeedsKeyChange: a status report without the version key says nothing about the
	// install (before: it counted as the old version, an install failure after the download).
	statusNeedsKeyChange = "status-needs-version-key"
	// progressAfterDownloadChange: once downloaded, progress reports other than errors are
	// ignored (before: 50 after 100 went back to downloading, and a repeated 100 restarted
	// the install timeout).
	progressAfterDownloadChange = "progress-after-download-ignored"
	// silenceChange: before a silence timeout ends an attempt, the reports PostgreSQL stored
	// are read, so that a device reporting more often than the bridge forwards is not
	// timed out.
	silenceChange = "silence-follows-stored-reports"
	// finalRecordChange: an outcome whose recording a cancel request interrupts is recorded
	// all the same (before: the canceled local activity left the record unfinished).
	finalRecordChange = "final-record-survives-cancel"
	// preflightChange: a single upgrade of a signed package (one of no rollout: a rollout
	// checks its package once) first checks it on the worker, CheckPackage's signature, size,
	// md5 and sha256, and fails without sending any command when a check fails. Asked only
	// for a request with a signature.
	preflightChange = "preflight-signed-package"
	// soakChange: an upgrade with a soak time stays open that long after it succeeded, and
	// ends reverted when the device reports another version meanwhile. Asked only when the
	// request has a soak time, at its success.
	soakChange = "soak-after-success"
	// cancelMessageChange: a cancel while a command is out publishes PROTOCOL.md 1.1's
	// cancel message for it, so that the device stops before it installs. Asked only then.
	cancelMessageChange = "cancel-message-to-device"
)

// upgrade is the state of one DeviceUpgradeWorkflow run.
type upgrade struct {
	req    ota.UpgradeRequest
	st     ota.UpgradeStatus
	record ota.UpgradeRecord // the PostgreSQL row, as last recorded

	phase      phase
	phaseSince time.Time // when the current waiting state began (sent, last progress, 100)
	deadline   time.Time // the overall deadline
	retryAt    time.Time
	minTimeout time.Duration
	timedOut   bool // the last attempt ended by a timeout
	// interrupted is the ID of a command whose send a cancel interrupted: it may be out.
	interrupted string

	// One timer at a time: it fires at or before the current phase's deadline, so a report
	// that moves the deadline later needs no new timer (fewer history events).
	timer       workflow.Future
	timerAt     time.Time
	timerFor    phaseKey // the phase the timer was set in (lean runs)
	cancelTimer workflow.CancelFunc

	searchState string // OtaState as last upserted
	last        report // the device's last report, for the Web UI's details
}

// phaseKey names a phase of an attempt: the loop's phase and the upgrade's state.
type phaseKey struct {
	phase phase
	state ota.State
}

// lean reports whether the run records only what the bridge cannot
// (ota.UpgradeRevisionLean): the request it started with says.
func (u *upgrade) lean() bool { return u.req.Revision >= ota.UpgradeRevisionLean }

// DeviceUpgradeWorkflow upgrades one device: it sends an upgrade command, follows the device's
// progress and status reports, retries failed or timed-out attempts with backoff, and succeeds
// only when a status report shows the target version. It returns the final UpgradeStatus;
// failed and timed-out upgrades fail with an ApplicationError whose details hold it, and a
// canceled upgrade ends canceled.
func DeviceUpgradeWorkflow(ctx workflow.Context, req ota.UpgradeRequest) (ota.UpgradeStatus, error) {
	req = req.WithDefaults()
	if err := req.Validate(); err != nil {
		return ota.UpgradeStatus{}, temporal.NewNonRetryableApplicationError("invalid upgrade request: "+err.Error(), ota.ErrTypeInvalidRequest, err)
	}
	info := workflow.GetInfo(ctx)
	now := workflow.Now(ctx)
	u := &upgrade{
		req:        req,
		phase:      phaseSend,
		deadline:   now.Add(req.Deadline.Std()),
		minTimeout: min(req.StartTimeout, req.SilenceTimeout, req.InstallTimeout).Std(),
		st: ota.UpgradeStatus{
			DeviceID: req.DeviceID, Type: req.Type, Version: req.Version, Rollout: req.Rollout,
			State: ota.StatePending, MaxAttempts: req.MaxAttempts, StartedAt: now, UpdatedAt: now,
		},
		record: ota.UpgradeRecord{
			RunID: info.WorkflowExecution.RunID, WorkflowID: info.WorkflowExecution.ID, DeviceID: req.DeviceID,
			Rollout: req.Rollout, RolloutRun: req.RolloutRun, Type: req.Type, Version: req.Version, URL: req.URL, MD5: req.MD5, Size: req.Size,
		},
	}
	if v, ok := workflow.GetTypedSearchAttributes(ctx).GetKeyword(ota.SearchState); ok {
		u.searchState = v
	}
	countUpgradeStarted(ctx, req)
	if err := workflow.SetQueryHandler(ctx, ota.QueryState, func() (ota.UpgradeStatus, error) { return u.st, nil }); err != nil {
		return ota.UpgradeStatus{}, fmt.Errorf("set query handler: %w", err)
	}
	progressCh := workflow.GetSignalChannel(ctx, ota.SignalProgress)
	statusCh := workflow.GetSignalChannel(ctx, ota.SignalStatus)

	u.showDetails(ctx)
	if req.Sig != "" && req.Rollout == "" && workflow.GetVersion(ctx, preflightChange, workflow.DefaultVersion, 1) >= 1 {
		u.preflight(ctx)
	}
	for u.phase != phaseDone {
		if ctx.Err() != nil {
			if u.phase == phaseSoak {
				// The install has held so far: a cancel ends the watch, not the success.
				u.endSoak(ctx, "a cancel ended the soak early")
				break
			}
			dctx, _ := workflow.NewDisconnectedContext(ctx)
			u.cancelCommand(dctx)
			u.finish(dctx, ota.StateCanceled, u.st.ErrorCode, "canceled by operator")
			u.showDetails(ctx)
			return u.st, temporal.NewCanceledError(u.st)
		}
		if u.phase == phaseSend {
			u.send(ctx)
			continue
		}
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(progressCh, func(c workflow.ReceiveChannel, _ bool) {
			var sig ota.ProgressSignal
			c.Receive(ctx, &sig)
			u.onProgress(ctx, sig.Progress)
		})
		sel.AddReceive(statusCh, func(c workflow.ReceiveChannel, _ bool) {
			var sig ota.StatusSignal
			c.Receive(ctx, &sig)
			u.onStatus(ctx, sig.Status)
		})
		sel.AddReceive(ctx.Done(), func(workflow.ReceiveChannel, bool) {})
		u.armTimer(ctx)
		sel.AddFuture(u.timer, func(workflow.Future) {
			u.timer = nil
			u.onTimer(ctx)
		})
		u.showDetails(ctx)
		sel.Select(ctx)
	}
	u.showDetails(ctx)
	switch u.st.State {
	case ota.StateFailed:
		return u.st, temporal.NewNonRetryableApplicationError(u.failureMessage(), ota.ErrTypeUpgradeFailed, nil, u.st)
	case ota.StateTimedOut:
		return u.st, temporal.NewNonRetryableApplicationError(u.failureMessage(), ota.ErrTypeUpgradeTimedOut, nil, u.st)
	case ota.StateReverted:
		return u.st, temporal.NewNonRetryableApplicationError(u.failureMessage(), ota.ErrTypeUpgradeReverted, nil, u.st)
	}
	return u.st, nil
}

// preflight checks a signed package on the worker (CheckPackage) before the first command:
// a failed check ends the upgrade failed, with no command sent. A cancel meanwhile is left to
// the main loop.
func (u *upgrade) preflight(ctx workflow.Context) {
	var a *activities.Activities
	err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, preflightOptions), a.CheckPackage, u.req.PackageCheck()).Get(ctx, nil)
	if err == nil || ctx.Err() != nil {
		return
	}
	u.finish(ctx, ota.StateFailed, 0, "pre-flight check failed, no command was sent: "+checkMessage(err))
}

// checkMessage is what a failed package check (CheckPackage) says, for people: the check's
// own message, without the SDK's wrapping.
func checkMessage(err error) string {
	var appErr *temporal.ApplicationError
	switch {
	case errors.As(err, &appErr):
		return appErr.Message()
	case temporal.IsTimeoutError(err):
		return "the worker could not check the package in time"
	}
	return "the worker could not check the package"
}

// cancelCommand publishes the cancel message of the command a device may be working on, if
// any (on a disconnected context: the workflow is being canceled). A device that has begun
// installing, or speaks protocol 1, ignores it; a failure to publish is logged.
func (u *upgrade) cancelCommand(ctx workflow.Context) {
	id := u.interrupted
	if u.phase == phaseWaiting {
		id = u.st.CommandID
	}
	if id == "" || workflow.GetVersion(ctx, cancelMessageChange, workflow.DefaultVersion, 1) < 1 {
		return
	}
	var a *activities.Activities
	in := ota.CancelCommandInput{DeviceID: u.req.DeviceID, CommandID: id}
	if err := workflow.ExecuteLocalActivity(workflow.WithLocalActivityOptions(ctx, sendOptions), a.SendCancel, in).Get(ctx, nil); err != nil {
		workflow.GetLogger(ctx).Warn("Could not publish the cancel message; the device may go on and install", "Command", id, "Error", err)
	}
}

func (u *upgrade) failureMessage() string {
	msg := fmt.Sprintf("upgrade of %s to %s %s %s after %d attempt(s)", u.req.DeviceID, u.req.Type, u.req.Version, u.st.State, u.st.Attempt)
	if u.st.ErrorCode != 0 {
		msg += fmt.Sprintf(": code %d", u.st.ErrorCode)
	}
	if u.st.Desc != "" {
		msg += ": " + u.st.Desc
	}
	return msg
}

// send starts the next attempt: a new command ID, published by a local activity that also
// records the upgrade as sent (or as skipped when the device already runs the target).
func (u *upgrade) send(ctx workflow.Context) {
	now := workflow.Now(ctx)
	attempt := u.st.Attempt + 1
	cmd := protocol.UpgradeCommand{
		ID:   fmt.Sprintf("%s-%d", u.record.RunID, attempt),
		Type: u.req.Type, Version: u.req.Version, URL: u.req.URL, MD5: u.req.MD5, Size: u.req.Size,
		SHA256: u.req.SHA256, Sig: u.req.Sig, KeyID: u.req.KeyID,
		IssuedAt: now, ExpiresAt: now.Add(u.req.StartTimeout.Std()),
	}
	rec := u.record
	rec.Attempt = attempt
	rec.Progress = 0
	var a *activities.Activities
	var res ota.SendCommandResult
	err := workflow.ExecuteLocalActivity(workflow.WithLocalActivityOptions(ctx, sendOptions), a.SendCommand,
		ota.SendCommandInput{Upgrade: rec, Command: cmd, VersionKey: u.req.VersionKey, CheckSkip: attempt == 1, Compat: u.req.Compat}).Get(ctx, &res)
	now = workflow.Now(ctx)
	u.st.Attempt = attempt
	u.st.UpdatedAt = now
	u.record.Attempt = attempt
	switch {
	case err != nil:
		var appErr *temporal.ApplicationError
		if errors.As(err, &appErr) && appErr.NonRetryable() {
			u.finish(ctx, ota.StateFailed, 0, appErr.Message())
			return
		}
		if ctx.Err() != nil {
			u.interrupted = cmd.ID
			return // canceled while sending; the main loop ends the upgrade
		}
		// In plain words: the desc is what operators read (a string, replay-safe unguarded).
		u.endAttempt(ctx, 0, "could not send the command: "+errtext.Plain(err), false)
	case res.Skipped:
		u.st.Reported = res.Reported
		u.record.State = ota.StateSkipped
		u.setFinal(ctx, ota.StateSkipped)
	default:
		u.st.Reported = res.Reported
		u.st.CommandID = cmd.ID
		u.st.State = ota.StateSent
		u.st.Progress = 0
		u.st.Desc = ""
		u.st.SentAt = &now
		u.record.State = ota.StateSent
		u.record.CommandID = cmd.ID
		u.record.Progress = 0
		u.phase = phaseWaiting
		u.phaseSince = now
		u.upsertState(ctx, ota.StateSent)
	}
}

// onProgress handles a progress report: stale ones (another attempt, type or version) are
// ignored; an error code ends the attempt; 1..99 means downloading, 100 downloaded.
func (u *upgrade) onProgress(ctx workflow.Context, p protocol.Progress) {
	if u.phase != phaseWaiting {
		return
	}
	if (p.ID != "" && p.ID != u.st.CommandID) || p.Type != u.req.Type || p.Version != u.req.Version {
		return
	}
	now := workflow.Now(ctx)
	u.st.UpdatedAt = now
	u.noteReport(now, "progress %d %q", p.Progress, p.Desc)
	if p.IsError() {
		desc := p.Desc
		if desc == "" {
			desc = protocol.CodeText(p.Progress)
		}
		u.endAttempt(ctx, p.Progress, desc, false)
		return
	}
	if u.st.State == ota.StateDownloaded &&
		workflow.GetVersion(ctx, progressAfterDownloadChange, workflow.DefaultVersion, 1) >= 1 {
		return // the download is done; only the status report says how the install went
	}
	u.st.Progress = p.Progress
	u.st.Desc = p.Desc
	u.phaseSince = now
	next := ota.StateDownloading
	if p.Progress == 100 {
		next = ota.StateDownloaded
	}
	if next != u.st.State {
		u.transition(ctx, next, p.Desc)
	}
}

// onStatus handles a status report: the target version under the version key is success, at
// any time; another version after the download means the install did not take.
func (u *upgrade) onStatus(ctx workflow.Context, st protocol.Status) {
	if u.phase == phaseDone {
		return
	}
	reported, ok := st[u.req.VersionKey]
	if ok {
		u.noteReport(workflow.Now(ctx), "status %s=%s", u.req.VersionKey, reported)
	}
	if u.phase == phaseSoak {
		u.onSoakStatus(ctx, reported, ok)
		return
	}
	if !ok && workflow.GetVersion(ctx, statusNeedsKeyChange, workflow.DefaultVersion, 1) >= 1 {
		// A report without the version key (another type's versions) says nothing of
		// this install.
		return
	}
	u.st.Reported = reported
	u.st.UpdatedAt = workflow.Now(ctx)
	if reported == u.req.Version {
		desc := "device reports " + u.req.VersionKey + "=" + reported
		if u.req.Soak > 0 && workflow.GetVersion(ctx, soakChange, workflow.DefaultVersion, 1) >= 1 {
			u.startSoak(ctx, desc)
			return
		}
		u.finish(ctx, ota.StateSucceeded, 0, desc)
		return
	}
	if u.phase == phaseWaiting && u.st.State == ota.StateDownloaded {
		u.endAttempt(ctx, protocol.CodeInstallFailed,
			fmt.Sprintf("device came back with %s=%q after the download: the install did not take", u.req.VersionKey, reported), false)
	}
}

// startSoak records the upgrade as succeeded, as it is unless the device goes back, and
// keeps the workflow open for the soak time: its one timer fires at the soak's end.
func (u *upgrade) startSoak(ctx workflow.Context, desc string) {
	until := workflow.Now(ctx).Add(u.req.Soak.Std())
	u.st.SoakUntil = &until
	u.finish(ctx, ota.StateSucceeded, 0, fmt.Sprintf("%s; soaking for %s", desc, u.req.Soak))
	u.phase = phaseSoak
	if u.timer != nil {
		u.cancelTimer() // a phase deadline that no longer applies
		u.timer = nil
	}
}

// onSoakStatus handles a status report during the soak: the target version again, or a
// report without the version key, keeps the success; another version means the install did
// not hold.
func (u *upgrade) onSoakStatus(ctx workflow.Context, reported string, ok bool) {
	if !ok {
		return
	}
	u.st.Reported = reported
	u.st.UpdatedAt = workflow.Now(ctx)
	if reported == u.req.Version {
		return
	}
	u.finish(ctx, ota.StateReverted, 0, fmt.Sprintf("device went back to %s=%q within the %s soak after it reported %s: the install did not hold",
		u.req.VersionKey, reported, u.req.Soak, u.req.Version))
}

// endSoak ends a soak that saw no other version: the upgrade stays succeeded, as recorded.
func (u *upgrade) endSoak(ctx workflow.Context, why string) {
	u.phase = phaseDone
	u.st.UpdatedAt = workflow.Now(ctx)
	workflow.GetLogger(ctx).Info("Soak over: the upgrade stays succeeded", "Why", why)
}

// phaseDeadline is when the current phase times out.
func (u *upgrade) phaseDeadline() time.Time {
	var d time.Time
	switch {
	case u.phase == phaseSoak:
		return *u.st.SoakUntil // after the success: the overall deadline no longer applies
	case u.phase == phaseBackoff:
		d = u.retryAt
	case u.st.State == ota.StateSent:
		d = u.phaseSince.Add(u.req.StartTimeout.Std())
	case u.st.State == ota.StateDownloading:
		d = u.phaseSince.Add(u.req.SilenceTimeout.Std())
	default: // downloaded
		d = u.phaseSince.Add(u.req.InstallTimeout.Std())
	}
	if u.deadline.Before(d) {
		return u.deadline
	}
	return d
}

// armTimer makes sure a timer fires at or before the phase deadline. A new timer is set for
// the earlier of the deadline and now plus the shortest timeout, so that the deadlines that
// later reports bring (each at least that far from its report) never come before it.
//
// A lean run (ota.UpgradeRevisionLean) hears of few reports: its timer stands at the phase's
// deadline itself, and is set again when the phase changes or the deadline comes earlier
// (two events, in the task that changed it). A later deadline within the phase (a forwarded
// progress report) leaves the timer to fire early, where the stored reports are read.
func (u *upgrade) armTimer(ctx workflow.Context) {
	d := u.phaseDeadline()
	key := phaseKey{u.phase, u.st.State}
	if u.timer != nil {
		if u.lean() {
			if u.timerAt.Equal(d) || (u.timerFor == key && u.timerAt.Before(d)) {
				return
			}
		} else if !u.timerAt.After(d) {
			return
		}
		u.cancelTimer()
	}
	now := workflow.Now(ctx)
	at := d
	if u.phase == phaseWaiting && !u.lean() {
		at = minTime(d, now.Add(u.minTimeout))
	}
	tctx, cancel := workflow.WithCancel(ctx)
	u.timer = workflow.NewTimerWithOptions(tctx, max(at.Sub(now), time.Millisecond), workflow.TimerOptions{Summary: u.timerSummary(d)})
	u.timerAt = at
	u.timerFor = key
	u.cancelTimer = cancel
}

// timerSummary names, for the Web UI's timeline, the deadline d a new timer guards: what
// ends the attempt, the upgrade or the wait when it passes. (The summary changes no command:
// timers replay by ID.)
func (u *upgrade) timerSummary(d time.Time) string {
	switch {
	case u.phase == phaseSoak:
		return "soak"
	case d.Equal(u.deadline):
		return "overall deadline"
	case u.phase == phaseBackoff:
		return fmt.Sprintf("retry backoff before attempt %d", u.st.Attempt+1)
	case u.st.State == ota.StateSent:
		return "start timeout"
	case u.st.State == ota.StateDownloading:
		return "silence timeout"
	}
	return "install timeout"
}

// onTimer acts on a fired timer: the overall deadline ends the upgrade, a phase deadline ends
// the attempt, the end of a backoff sends the next command.
func (u *upgrade) onTimer(ctx workflow.Context) {
	now := workflow.Now(ctx)
	if u.phase == phaseSoak {
		if !now.Before(*u.st.SoakUntil) {
			u.endSoak(ctx, "the soak time passed")
		}
		return
	}
	if !now.Before(u.deadline) {
		u.finish(ctx, ota.StateTimedOut, u.st.ErrorCode,
			fmt.Sprintf("overall deadline of %s passed in state %s", u.req.Deadline, u.st.State))
		return
	}
	if now.Before(u.phaseDeadline()) {
		return // early timer; armTimer sets the next one
	}
	switch {
	case u.phase == phaseBackoff:
		u.phase = phaseSend
	case u.lean() && u.st.State != ota.StateDownloaded && u.catchUp(ctx):
		return // armTimer sets the timer for the new deadline
	case u.st.State == ota.StateSent:
		u.endAttempt(ctx, 0, fmt.Sprintf("no report from the device within %s of the command", u.req.StartTimeout), true)
	case u.st.State == ota.StateDownloading:
		if !u.lean() && workflow.GetVersion(ctx, silenceChange, workflow.DefaultVersion, 1) >= 1 && u.stillReporting(ctx) {
			return // armTimer sets the timer for the new silence deadline
		}
		u.endAttempt(ctx, 0, fmt.Sprintf("no progress for %s while downloading", u.req.SilenceTimeout), true)
	default:
		u.endAttempt(ctx, 0, fmt.Sprintf("no new version reported within %s of the download", u.req.InstallTimeout), true)
	}
}

// stillReporting asks PostgreSQL for the attempt's latest progress report: the bridge stores
// every report but forwards at most one a ProgressInterval, which may be longer than the
// silence timeout. A report within the silence timeout moves the silence deadline and the
// progress on, and the attempt goes on.
func (u *upgrade) stillReporting(ctx workflow.Context) bool {
	last, ok := u.lastStored(ctx)
	if !ok {
		return false
	}
	now := workflow.Now(ctx)
	if !last.Found || !last.ReceivedAt.Add(u.req.SilenceTimeout.Std()).After(now) || !last.ReceivedAt.After(u.phaseSince) {
		return false
	}
	u.phaseSince = last.ReceivedAt
	u.noteReport(last.ReceivedAt, "progress %d %q (stored by the bridge, not forwarded)", last.Progress, last.Desc)
	if last.Progress < 100 && last.Progress > u.st.Progress {
		u.st.Progress, u.st.Desc = last.Progress, last.Desc
	}
	u.st.UpdatedAt = now
	return true
}

// catchUp is a lean run's look at the attempt's reports PostgreSQL stored and the bridge did
// not forward (it forwards the first report and 100 after a short merge window, and
// intermediate ones only when configured to), at a start or silence deadline: the latest
// report moves the attempt to downloading or downloaded as of when it was received. It
// reports whether the attempt's deadline is now later: the attempt goes on.
func (u *upgrade) catchUp(ctx workflow.Context) bool {
	last, ok := u.lastStored(ctx)
	if !ok || !last.Found || !last.ReceivedAt.After(u.phaseSince) || last.Progress < 1 || last.Progress > 100 {
		return false
	}
	u.phaseSince = last.ReceivedAt
	u.noteReport(last.ReceivedAt, "progress %d %q (stored by the bridge, not forwarded)", last.Progress, last.Desc)
	u.st.UpdatedAt = workflow.Now(ctx)
	if last.Progress > u.st.Progress {
		u.st.Progress, u.st.Desc = last.Progress, last.Desc
	}
	next := ota.StateDownloading
	if last.Progress == 100 {
		next = ota.StateDownloaded
	}
	if next != u.st.State {
		u.transition(ctx, next, last.Desc)
	}
	return u.phaseDeadline().After(workflow.Now(ctx))
}

// lastStored reads the attempt's latest progress report PostgreSQL stored (LastProgress); ok
// is false when it cannot be read, and the timeout then applies.
func (u *upgrade) lastStored(ctx workflow.Context) (last ota.LastReport, ok bool) {
	var a *activities.Activities
	in := ota.LastReportInput{DeviceID: u.req.DeviceID,
		Attempt: ota.AttemptKey{CommandID: u.st.CommandID, Type: u.req.Type, Version: u.req.Version}}
	if err := workflow.ExecuteLocalActivity(workflow.WithLocalActivityOptions(ctx, recordOptions), a.LastProgress, in).Get(ctx, &last); err != nil {
		workflow.GetLogger(ctx).Warn("Could not read the device's stored reports; the timeout applies", "Error", err)
		return last, false
	}
	return last, true
}

// endAttempt ends the current attempt with an error code or a timeout, and either waits to
// retry or finishes the upgrade as failed or timed out.
func (u *upgrade) endAttempt(ctx workflow.Context, code int, desc string, timedOut bool) {
	u.timedOut = timedOut
	retry := u.st.Attempt < u.req.MaxAttempts
	if timedOut {
		retry = retry && *u.req.RetryTimeouts
	} else if code != 0 {
		retry = retry && slices.Contains(u.req.RetryCodes, code)
	}
	final := ota.StateFailed
	if timedOut {
		final = ota.StateTimedOut
	}
	now := workflow.Now(ctx)
	backoff := u.req.RetryBackoff.Std()
	for i := 1; i < u.st.Attempt && backoff < ota.DefaultMaxBackoff; i++ {
		backoff *= 2
	}
	backoff = min(backoff, max(ota.DefaultMaxBackoff, u.req.RetryBackoff.Std()))
	if !retry || !now.Add(backoff).Before(u.deadline) {
		u.finish(ctx, final, code, desc)
		return
	}
	u.st.ErrorCode = code
	u.st.Desc = desc
	u.phase = phaseBackoff
	u.retryAt = now.Add(backoff)
	u.record.ErrorCode = code
	u.record.ErrorDesc = desc
	// The attempt's end is recorded as a return to pending until the next command is sent.
	u.transition(ctx, ota.StatePending, fmt.Sprintf("attempt %d ended: %s; retry in %s", u.st.Attempt, desc, backoff))
}

// transition moves to a non-final state, records it and updates the search attribute. A lean
// run leaves downloading and downloaded to the bridge, which records them as it stores the
// reports, and keeps the search attribute at sent meanwhile.
func (u *upgrade) transition(ctx workflow.Context, s ota.State, detail string) {
	u.st.State = s
	u.record.State = s
	u.record.Progress = u.st.Progress
	if u.lean() && (s == ota.StateDownloading || s == ota.StateDownloaded) {
		return
	}
	u.recordState(ctx, detail)
	u.upsertState(ctx, s)
}

// finish ends the upgrade in a final state.
func (u *upgrade) finish(ctx workflow.Context, s ota.State, code int, desc string) {
	if s == ota.StateSucceeded && u.lean() {
		// The device runs the target: its download was complete, whichever reports the
		// bridge forwarded.
		u.st.Progress = 100
	}
	u.st.ErrorCode = code
	u.st.Desc = desc
	u.record.ErrorCode = code
	u.record.ErrorDesc = ""
	if s != ota.StateSucceeded {
		u.record.ErrorDesc = desc
	}
	u.setFinal(ctx, s)
	u.recordState(ctx, desc)
}

// setFinal marks the upgrade final without recording it (SendCommand already did for skipped).
func (u *upgrade) setFinal(ctx workflow.Context, s ota.State) {
	now := workflow.Now(ctx)
	u.phase = phaseDone
	u.st.State = s
	u.st.FinishedAt = &now
	u.record.State = s
	u.record.Progress = u.st.Progress
	u.upsertState(ctx, s)
	countUpgradeFinished(ctx, u)
}

// recordState writes the current state to PostgreSQL. Bookkeeping never fails the upgrade:
// after its retries run out the error is logged and the workflow goes on.
func (u *upgrade) recordState(ctx workflow.Context, detail string) {
	var a *activities.Activities
	in := ota.RecordStateInput{Upgrade: u.record, At: workflow.Now(ctx), Detail: detail}
	record := func(ctx workflow.Context) error {
		return workflow.ExecuteLocalActivity(workflow.WithLocalActivityOptions(ctx, recordOptions), a.RecordState, in).Get(ctx, nil)
	}
	err := record(ctx)
	if err != nil && temporal.IsCanceledError(err) && u.phase == phaseDone &&
		workflow.GetVersion(ctx, finalRecordChange, workflow.DefaultVersion, 1) >= 1 {
		// A cancel request came while the outcome was being recorded: the outcome stands,
		// and is recorded.
		dctx, _ := workflow.NewDisconnectedContext(ctx)
		err = record(dctx)
	}
	if err != nil {
		workflow.GetLogger(ctx).Error("Could not record upgrade state", "State", u.record.State, "Error", err)
	}
}

// upsertState keeps the OtaState search attribute equal to the state.
func (u *upgrade) upsertState(ctx workflow.Context, s ota.State) {
	if u.searchState == string(s) {
		return
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, ota.SearchState.ValueSet(string(s))); err != nil {
		workflow.GetLogger(ctx).Error("Could not upsert the state search attribute", "Error", err)
		return
	}
	u.searchState = string(s)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
