package workflows

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
)

// watch is the last phase of a continuous rollout: after its waves, it upgrades the devices
// that come to be targets later (registered, seen again, changed), found by FindLateTargets
// in the registry's changes after the pre-flight. They start through startDevice like the
// waves' devices, within the same in-flight and rate limits, window and failure threshold;
// they are selected like the pre-flight's targets (compatibility, quarantine). A device is
// taken on once: FindLateTargets skips those with an upgrade of this rollout (other than
// one that timed out) and startDevice those running. The search's cursor, the few devices
// found and not started yet, and counts are all the run carries: the history stays bounded
// however long the rollout stays open, as it continues as new every ContinueAfter starts
// and every maxFindsPerRun searches.
//
// It ends when the rollout is closed, canceled or aborted, once the running upgrades have
// ended.
func (r *rollout) watch(ctx workflow.Context) (ota.RolloutProgress, error) {
	wi := r.lateWave()
	if !r.c.Watching {
		r.c.Watching = true
		r.p.CurrentWave = len(r.p.Waves)
		r.c.Buffer, r.c.Exhausted = nil, false
		r.waveCounts(wi)
	}
	var find workflow.Future // the search under way, if any
	var retryAt time.Time    // when to search again after a failed search
	for {
		if r.c.Cancel != nil && r.c.Cancel.CancelRunning {
			r.cancelRunning()
		}
		stopping := r.c.Cancel != nil || r.c.Aborting || r.c.Closed
		if !stopping && !r.draining && (r.startedThisRun >= r.req.ContinueAfter || r.findsThisRun >= maxFindsPerRun ||
			workflow.GetInfo(ctx).GetContinueAsNewSuggested()) {
			r.draining = true
		}
		if (stopping || r.draining) && find != nil && r.cancelFind != nil {
			r.cancelFind()
		}
		if stopping {
			r.c.Buffer = nil
			if find == nil && len(r.running) == 0 {
				return r.end(ctx)
			}
		}
		if r.draining && find == nil && (len(r.running) == 0 || (r.handover && r.withRunID == len(r.running))) {
			return *r.p, r.continueAsNew(ctx)
		}

		now := workflow.Now(ctx)
		var wake time.Time // when to look again at the latest, and why
		var why string
		active := !stopping && !r.draining && !r.c.Paused
		switch {
		case stopping:
			if r.c.Closed && r.c.Cancel == nil && !r.c.Aborting {
				r.enter(ctx, ota.RolloutWatching, fmt.Sprintf("%s; waiting for %d running upgrade(s) to end", r.c.CloseReason, len(r.running)))
			}
		case !active:
		case !r.inWindow(now):
			wake, why = r.nextWindowOpen(now), timerWindow
			r.enter(ctx, ota.RolloutWaitingWindow, r.windowReason(wake))
			r.p.NextWindowAt = &wake
		default:
			r.p.NextWindowAt = nil
			r.enter(ctx, ota.RolloutWatching, r.watchReason())
			if n := min(r.req.MaxInFlight-len(r.running), len(r.c.Buffer)); n > 0 {
				n, wake = r.allowance(now, n)
				why = timerRate
				if n > 0 {
					started := 0
					for _, id := range r.c.Buffer[:n] {
						if !r.startDevice(ctx, wi, id) {
							break
						}
						started++
					}
					r.c.Buffer = slices.Clip(r.c.Buffer[started:])
					if len(r.c.Buffer) == 0 {
						r.c.Buffer = nil
					}
					continue
				}
			}
			if find == nil && len(r.c.Buffer) == 0 {
				if now.Before(retryAt) {
					wake, why = retryAt, timerFindRetry
				} else {
					find = r.findLate(ctx)
				}
			}
		}

		seen := r.version
		if err := awaitUntil(ctx, now, wake, why, func() bool { return r.version != seen || (find != nil && find.IsReady()) }); err != nil {
			r.onWorkflowCanceled()
			return r.end(ctx)
		}
		if find != nil && find.IsReady() {
			if !r.found(ctx, find) {
				retryAt = workflow.Now(ctx).Add(findRetry)
			}
			find, r.cancelFind = nil, nil
		}
	}
}

// watchReason says what a watching rollout does.
func (r *rollout) watchReason() string {
	late := 0
	if r.p.Late != nil {
		late = r.p.Late.Started
	}
	return fmt.Sprintf("continuous: the waves are done; %d late device(s) taken on so far, %d running; close it with `starter rollout close %s`",
		late, len(r.running), r.req.Name)
}

// findLate starts a search for late devices, cancelable through r.cancelFind.
func (r *rollout) findLate(ctx workflow.Context) workflow.Future {
	fctx, cancel := workflow.WithCancel(workflow.WithActivityOptions(ctx, findOptions))
	r.cancelFind = cancel
	r.findsThisRun++
	var a *activities.Activities
	return workflow.ExecuteActivity(fctx, a.FindLateTargets, ota.FindLateInput{
		Rollout: r.req.Name, LeftOutKey: r.c.Snapshot, Since: r.p.StartedAt, Selector: r.req.Selector(),
		Cursor: r.c.Changes, Limit: r.req.PageSize, MaxWait: ota.Duration(lateMaxWait),
	})
}

// found takes in what a search for late devices found: the devices to start (not those
// running or already waiting), where the next search starts, and the left-out counts. It
// reports false when the search failed other than by being canceled.
func (r *rollout) found(ctx workflow.Context, find workflow.Future) bool {
	var late ota.LateTargets
	if err := find.Get(ctx, &late); err != nil {
		var canceled *temporal.CanceledError
		if errors.As(err, &canceled) {
			return true
		}
		workflow.GetLogger(ctx).Error("The search for late devices failed; trying again later", "Error", err)
		return false
	}
	r.c.Changes = late.Cursor
	r.p.Counts.Incompatible, r.p.Counts.Quarantined = late.LeftOut.Incompatible, late.LeftOut.Quarantined
	for _, id := range late.IDs {
		if _, running := r.running[id]; !running && !slices.Contains(r.c.Buffer, id) {
			r.c.Buffer = append(r.c.Buffer, id)
		}
	}
	r.p.UpdatedAt = workflow.Now(ctx)
	r.version++
	r.showDetails(ctx)
	return true
}
