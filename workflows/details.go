package workflows

import (
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/internal/ota"
)

// The Web UI shows a workflow's current details (Temporal markdown) under its summary. The
// workflows set them with workflow.SetCurrentDetails whenever what they show changes; that
// costs no history event and no command (the UI reads them with the workflow metadata
// query, answered by a worker), so running workflows recorded before replay unchanged.

// The details are built with fmt.Sprintf and strings.Builder.WriteString, not fmt.Fprintf,
// which workflowcheck takes for I/O.

// uiTime formats a time for the details: UTC, to the second.
func uiTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }

// report is the last report a device upgrade took in, for its details.
type report struct {
	what string
	at   time.Time
}

// showDetails sets the upgrade's current details: its state, attempt and progress, the device's last
// report, and what the upgrade waits for.
func (u *upgrade) showDetails(ctx workflow.Context) {
	workflow.SetCurrentDetails(ctx, u.details())
}

// details renders the upgrade's state for the Web UI, in at most four lines (the UI's box
// shows about five): the state and attempt, how the last attempt or the upgrade ended, the
// device's last report, and the deadline the upgrade waits for.
func (u *upgrade) details() string {
	var b strings.Builder
	st := u.st
	b.WriteString(fmt.Sprintf("**%s**", st.State))
	if st.State == ota.StateDownloading || st.State == ota.StateDownloaded {
		b.WriteString(fmt.Sprintf(" %d%%", st.Progress))
	}
	switch {
	case st.Attempt == 0:
		b.WriteString(fmt.Sprintf(" · no command sent yet (up to %d attempts)", st.MaxAttempts))
	case u.phase == phaseSoak:
		b.WriteString(fmt.Sprintf(" at attempt %d of %d, soaking", st.Attempt, st.MaxAttempts))
	case st.State.Final():
		b.WriteString(fmt.Sprintf(" after attempt %d of %d", st.Attempt, st.MaxAttempts))
	default:
		b.WriteString(fmt.Sprintf(" · attempt %d of %d", st.Attempt, st.MaxAttempts))
	}
	b.WriteString("\n\n")
	item := func(format string, args ...any) { b.WriteString("- " + fmt.Sprintf(format, args...) + "\n") }
	code := ""
	if st.ErrorCode != 0 {
		code = fmt.Sprintf(" (code %d)", st.ErrorCode)
	}
	switch {
	case st.Desc == "":
	case u.phase == phaseBackoff:
		item("attempt %d ended: %s%s", st.Attempt, st.Desc, code)
	case st.State.Final():
		item("%s%s", st.Desc, code)
	}
	switch {
	case u.last.what != "":
		item("last report: %s at %s", u.last.what, uiTime(u.last.at))
	case st.Attempt > 0 && st.Reported != "":
		item("no report from the device yet (it reported %s=%s before)", u.req.VersionKey, st.Reported)
	case st.Attempt > 0 && !st.State.Final():
		item("no report from the device yet")
	}
	switch {
	case u.phase == phaseSoak:
		item("soaking until %s: another version before then makes it reverted", uiTime(*st.SoakUntil))
	case u.phase == phaseWaiting || u.phase == phaseBackoff:
		item("next: %s at %s", u.timerSummary(u.phaseDeadline()), uiTime(u.phaseDeadline()))
	case st.FinishedAt != nil:
		item("finished %s", uiTime(*st.FinishedAt))
	}
	return b.String()
}

// noteReport keeps what a device reported, for the details.
func (u *upgrade) noteReport(at time.Time, format string, args ...any) {
	u.last = report{what: fmt.Sprintf(format, args...), at: at}
}

// showDetails sets the rollout's current details: its state and why, its wave, and its counts.
func (r *rollout) showDetails(ctx workflow.Context) {
	workflow.SetCurrentDetails(ctx, r.details(workflow.Now(ctx)))
}

// details renders the rollout's state for the Web UI.
func (r *rollout) details(now time.Time) string {
	var b strings.Builder
	p := r.p
	b.WriteString(fmt.Sprintf("**%s**", p.State))
	switch {
	case len(p.Waves) == 0:
		b.WriteString(" · checking the package and fixing the targets")
	case r.c.Watching:
		b.WriteString(fmt.Sprintf(" · waves done (%d)", len(p.Waves)))
	default:
		b.WriteString(fmt.Sprintf(" · wave %d of %d", min(max(p.CurrentWave, 1), len(p.Waves)), len(p.Waves)))
	}
	b.WriteString("\n\n")
	item := func(format string, args ...any) { b.WriteString("- " + fmt.Sprintf(format, args...) + "\n") }
	if p.Reason != "" {
		item("%s", p.Reason)
	}
	if len(p.Waves) > 0 {
		item("%d targets, %d started: %s", p.Total, p.Counts.Started, countsText(p.Counts))
		if w := p.CurrentWave; w >= 1 && w <= len(p.Waves) && !r.c.Watching {
			wp := p.Waves[w-1]
			item("wave %d: %d of %d started: %s", wp.Number, wp.Counts.Started, wp.Target, countsText(wp.Counts))
		}
	}
	if p.Late != nil {
		item("late devices: %d started: %s", p.Late.Started, countsText(*p.Late))
	}
	if left := p.LeftOut.Total(); left > 0 {
		item("%d left out at pre-flight (%d up to date, %d incompatible, %d quarantined, %d disabled, %d never seen)",
			left, p.LeftOut.UpToDate, p.LeftOut.Incompatible, p.LeftOut.Quarantined, p.LeftOut.Disabled, p.LeftOut.NeverSeen)
	}
	if !p.State.Final() {
		if rate := r.rate(now); rate > 0 {
			item("start rate %.1f a minute", rate)
		}
		if p.NextWindowAt != nil {
			item("the maintenance window opens %s", uiTime(*p.NextWindowAt))
		}
	}
	if p.Runs > 1 {
		item("run %d (the rollout continues as new every %d starts)", p.Runs, r.req.ContinueAfter)
	}
	if p.FinishedAt != nil {
		item("finished %s", uiTime(*p.FinishedAt))
	}
	return b.String()
}

// countsText lists the non-zero counts of the upgrades started, by outcome, and those
// running.
func countsText(c ota.Counts) string {
	var parts []string
	for _, kv := range []struct {
		n    int
		name string
	}{
		{c.Running(), "running"}, {c.Succeeded, "succeeded"}, {c.Skipped, "skipped"}, {c.Failed, "failed"},
		{c.TimedOut, "timed out"}, {c.Reverted, "reverted"}, {c.Canceled, "canceled"}, {c.Conflict, "conflict"},
	} {
		if kv.n != 0 {
			parts = append(parts, fmt.Sprintf("%d %s", kv.n, kv.name))
		}
	}
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, ", ")
}
