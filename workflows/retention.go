package workflows

import (
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
)

// cleanupCallBudget bounds one DeleteExpired call: the workflow then calls again from where
// it got to, so that its history shows the progress and a lost worker costs little work.
const cleanupCallBudget = time.Minute

// cleanupHistoryLimit is the history length past which a cleanup continues as new between
// two calls (about 160 calls, each six events).
const cleanupHistoryLimit = 1000

// ErrTypeCleanupIncomplete is the failure of a cleanup that could not clean up some item; it
// carries the CleanupReport, and went on with the other items.
const ErrTypeCleanupIncomplete = "CleanupIncomplete"

var (
	// policyOptions read the policy: quick, retried for a while.
	policyOptions = workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Second,
		RetryPolicy:         &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second, MaximumAttempts: 10},
		Summary:             "read the retention policy from PostgreSQL",
	}
	// deleteOptions delete a call's batches: the heartbeat after every batch shows a lost
	// worker, and a retry resumes from the last batch. An item whose deletes keep failing is
	// given up until the next cleanup.
	deleteOptions = workflow.ActivityOptions{
		StartToCloseTimeout: cleanupCallBudget + 5*time.Minute,
		HeartbeatTimeout:    2 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2,
			MaximumInterval: time.Minute, MaximumAttempts: 10},
	}
)

// RetentionCleanupWorkflow deletes what the retention policy says has expired. Its Temporal
// Schedule (ota.RetentionCleanupScheduleID, made by `starter setup`) starts it every hour as
// retention-cleanup-<time>. It reads the policy from PostgreSQL (ReadRetentionPolicy), counts
// every cutoff back from its start, and for each item in ota.RetentionItems that the policy
// does not keep forever calls DeleteExpired until nothing expired is left: batches of at most
// the policy's batch size, each its own short transaction, a pause apart, at most a minute per
// call. The Web UI shows each call's summary ("delete progress_events received before ...")
// and, while it runs, how far it got. It returns a CleanupReport; when an item could not be
// cleaned up it goes on with the others and then fails (ErrTypeCleanupIncomplete, with the
// report), for the next run to try again.
func RetentionCleanupWorkflow(ctx workflow.Context, in ota.CleanupInput) (ota.CleanupReport, error) {
	var t *activities.Activities
	var r ota.CleanupReport
	if in.Carry != nil {
		r = *in.Carry
	} else {
		r.StartedAt = workflow.Now(ctx)
		if err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, policyOptions), t.ReadRetentionPolicy).Get(ctx, &r.Policy); err != nil {
			return r, fmt.Errorf("read the retention policy: %w", err)
		}
	}
	for r.Next < len(ota.RetentionItems) {
		item := ota.RetentionItems[r.Next]
		if len(r.Items) == r.Next {
			r.Items = append(r.Items, ota.CleanupResult{Item: item})
		}
		res := &r.Items[r.Next]
		keep := r.Policy.Keep(item)
		if keep == 0 {
			res.Kept = true
			nextItem(&r)
			continue
		}
		res.Before = r.StartedAt.Add(-keep)
		opts := deleteOptions
		opts.Summary = fmt.Sprintf("delete %s %s before %s", item, timeColumn(item), res.Before.UTC().Format(time.RFC3339))
		in := ota.DeleteExpiredInput{Item: item, Before: res.Before, Cursor: r.Cursor, BatchSize: r.Policy.BatchSize,
			BatchPause: r.Policy.BatchPause, Budget: cleanupCallBudget}
		var out ota.DeleteExpiredResult
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, opts), t.DeleteExpired, in).Get(ctx, &out)
		res.Calls++
		if err != nil {
			res.Error = err.Error()
			workflow.GetLogger(ctx).Error("Retention cleanup of an item failed; going on with the next", "Item", item, "Error", err)
			nextItem(&r)
			continue
		}
		res.Deleted += out.Deleted
		res.Batches += out.Batches
		res.Largest = max(res.Largest, out.Largest)
		res.InUse += out.InUse
		r.Cursor = out.Cursor
		if out.Done {
			nextItem(&r)
		}
		workflow.SetCurrentDetails(ctx, cleanupDetails(r))
		if !out.Done && (workflow.GetInfo(ctx).GetContinueAsNewSuggested() || workflow.GetInfo(ctx).GetCurrentHistoryLength() > cleanupHistoryLimit) {
			return r, workflow.NewContinueAsNewError(ctx, ota.RetentionCleanupWorkflowName, ota.CleanupInput{Carry: &r})
		}
	}
	workflow.SetCurrentDetails(ctx, cleanupDetails(r))
	var failed []string
	for _, res := range r.Items {
		if res.Error != "" {
			failed = append(failed, fmt.Sprintf("%s: %s", res.Item, res.Error))
		}
	}
	if len(failed) > 0 {
		return r, temporal.NewNonRetryableApplicationError("retention cleanup incomplete: "+strings.Join(failed, "; "), ErrTypeCleanupIncomplete, nil, r)
	}
	return r, nil
}

// nextItem moves the cleanup on to the next item, from its beginning.
func nextItem(r *ota.CleanupReport) {
	r.Next++
	r.Cursor = ota.CleanupCursor{}
}

// timeColumn says, for people, which time of an item's rows the cutoff applies to.
func timeColumn(item ota.RetentionItem) string {
	switch item {
	case ota.RetainShedReports:
		return "counted"
	case ota.RetainUpgrades:
		return "finished"
	case ota.RetainTargetLists:
		return "stored"
	}
	return "received"
}

// cleanupDetails is what the Web UI shows of a cleanup while it runs, a line per item.
func cleanupDetails(r ota.CleanupReport) string {
	var lines []string
	for i, res := range r.Items {
		switch {
		case res.Kept:
			lines = append(lines, fmt.Sprintf("%s: kept forever", res.Item))
		case res.Error != "":
			lines = append(lines, fmt.Sprintf("%s: failed after %d deleted: %s", res.Item, res.Deleted, res.Error))
		default:
			state := "done"
			if i == r.Next {
				state = "deleting"
			}
			lines = append(lines, fmt.Sprintf("%s: %s, %d deleted in %d batches (%s before %s)", res.Item, state, res.Deleted, res.Batches,
				timeColumn(res.Item), res.Before.UTC().Format(time.RFC3339)))
		}
	}
	return strings.Join(lines, "\n")
}
