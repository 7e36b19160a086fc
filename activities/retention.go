package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// CleanupStore is the part of the PostgreSQL store the retention cleanup uses. The cleanup
// activities use Activities.Store when it satisfies CleanupStore, as *store.Store does, and
// fail without retrying (ota.ErrTypeNoCleanupStore) when it does not.
type CleanupStore interface {
	RetentionPolicy(ctx context.Context) (ota.RetentionPolicy, error)
	DeleteExpiredBatch(ctx context.Context, item ota.RetentionItem, before time.Time, cursor ota.CleanupCursor, limit int) (int, ota.CleanupCursor, bool, error)
	ExpiredTargetLists(ctx context.Context, before time.Time, after string, limit int) ([]store.TargetList, error)
	DeleteTargetListBatch(ctx context.Context, key string, limit int) (int, bool, error)
}

var _ CleanupStore = (*store.Store)(nil)

// RolloutLookup tells whether a rollout name is in use: a rollout of it runs, or it has a
// schedule. The cleanup keeps such a name's target lists. Activities.Temporal satisfies it
// when it is a Temporal client.Client.
type RolloutLookup interface {
	DescribeWorkflow(ctx context.Context, workflowID, runID string) (*client.WorkflowExecutionDescription, error)
	CountWorkflow(ctx context.Context, request *workflowservice.CountWorkflowExecutionsRequest) (*workflowservice.CountWorkflowExecutionsResponse, error)
	ScheduleClient() client.ScheduleClient
}

// targetListPage is how many expired target lists DeleteExpired reads at once.
const targetListPage = 100

func (a *Activities) cleanupStore() (CleanupStore, error) {
	cs, ok := a.Store.(CleanupStore)
	if !ok {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("retention cleanup: the worker's store (%T) cannot clean up", a.Store),
			ota.ErrTypeNoCleanupStore, nil)
	}
	return cs, nil
}

// ReadRetentionPolicy returns the retention policy stored in PostgreSQL; the cleanup reads it
// at the start of every run, so that `starter retention set` takes effect at the next one.
func (a *Activities) ReadRetentionPolicy(ctx context.Context) (ota.RetentionPolicy, error) {
	cs, err := a.cleanupStore()
	if err != nil {
		return ota.RetentionPolicy{}, err
	}
	p, err := cs.RetentionPolicy(ctx)
	if err != nil {
		return ota.RetentionPolicy{}, err
	}
	if err := p.Validate(); err != nil { // changed by hand in the database
		return ota.RetentionPolicy{}, temporal.NewNonRetryableApplicationError("the stored retention policy is not valid: "+err.Error(),
			ota.ErrTypeInvalidRequest, err)
	}
	return p, nil
}

// DeleteExpired deletes the rows of in.Item older than in.Before, after in.Cursor, a batch at a
// time: each batch at most in.BatchSize rows in one short transaction, in.BatchPause apart, so
// that no lock is held for long and autovacuum keeps up. It stops when none is left (Done) or
// after in.Budget, returning where it got to. It heartbeats the result after every batch and a
// retried attempt resumes from the last one. For target lists it deletes the expired lists of
// the rollout names no rollout runs with and no schedule has (see RolloutLookup).
func (a *Activities) DeleteExpired(ctx context.Context, in ota.DeleteExpiredInput) (ota.DeleteExpiredResult, error) {
	cs, err := a.cleanupStore()
	if err != nil {
		return ota.DeleteExpiredResult{}, err
	}
	if in.BatchSize <= 0 || in.Budget <= 0 {
		return ota.DeleteExpiredResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("delete expired %s: batch size %d and budget %s must be positive", in.Item, in.BatchSize, in.Budget), ota.ErrTypeInvalidRequest, nil)
	}
	res := ota.DeleteExpiredResult{Cursor: in.Cursor}
	if activity.HasHeartbeatDetails(ctx) {
		var last ota.DeleteExpiredResult
		if err := activity.GetHeartbeatDetails(ctx, &last); err == nil {
			res = last
		}
	}
	deadline := time.Now().Add(in.Budget)
	if in.Item == ota.RetainTargetLists {
		return a.deleteExpiredTargetLists(ctx, cs, in, res, deadline)
	}
	for {
		n, next, done, err := cs.DeleteExpiredBatch(ctx, in.Item, in.Before, res.Cursor, in.BatchSize)
		if err != nil {
			return res, err
		}
		res.Cursor, res.Done = next, done
		countBatch(&res, n)
		activity.RecordHeartbeat(ctx, res)
		if done || time.Now().After(deadline) {
			return res, nil
		}
		if err := pause(ctx, in.BatchPause); err != nil {
			return res, err
		}
	}
}

// countBatch adds a batch of n rows to res; an empty batch (the check that none is left)
// is no batch.
func countBatch(res *ota.DeleteExpiredResult, n int) {
	if n == 0 {
		return
	}
	res.Deleted += int64(n)
	res.Batches++
	res.Largest = max(res.Largest, n)
}

// pause waits d, or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// deleteExpiredTargetLists deletes, a page of lists at a time in key order after the cursor,
// the expired target lists whose rollout name is not in use; res.Deleted counts the lists,
// res.Batches and res.Largest the deletes of their devices, res.InUse the lists kept.
func (a *Activities) deleteExpiredTargetLists(ctx context.Context, cs CleanupStore, in ota.DeleteExpiredInput, res ota.DeleteExpiredResult,
	deadline time.Time) (ota.DeleteExpiredResult, error) {
	lookup, ok := a.Temporal.(RolloutLookup)
	if !ok {
		return res, temporal.NewNonRetryableApplicationError("retention cleanup of target lists: the worker has no Temporal client to tell which rollouts use them",
			ota.ErrTypeNoTemporalClient, nil)
	}
	for {
		lists, err := cs.ExpiredTargetLists(ctx, in.Before, res.Cursor.Key, targetListPage)
		if err != nil {
			return res, err
		}
		inUse := map[string]bool{}
		for _, l := range lists {
			if _, known := inUse[l.Rollout]; known {
				continue
			}
			if inUse[l.Rollout], err = rolloutInUse(ctx, lookup, l.Rollout); err != nil {
				return res, err
			}
		}
		for _, l := range lists {
			if inUse[l.Rollout] {
				res.InUse++
			} else {
				for gone := false; !gone; {
					var n int
					if n, gone, err = cs.DeleteTargetListBatch(ctx, l.Key, in.BatchSize); err != nil {
						return res, err
					}
					if n > 0 {
						res.Batches++
						res.Largest = max(res.Largest, n)
					}
					activity.RecordHeartbeat(ctx, res)
					if !gone {
						if err := pause(ctx, in.BatchPause); err != nil {
							return res, err
						}
					}
				}
				res.Deleted++
			}
			res.Cursor.Key = l.Key
			activity.RecordHeartbeat(ctx, res)
		}
		if len(lists) < targetListPage {
			res.Done = true
			return res, nil
		}
		if time.Now().After(deadline) {
			return res, nil
		}
	}
}

// rolloutInUse reports whether a rollout of the name runs, or a schedule of it exists: then
// its target lists may still be read. A name that is not a valid rollout name (stored by hand)
// counts as in use.
func rolloutInUse(ctx context.Context, c RolloutLookup, name string) (bool, error) {
	if !ota.ValidRolloutName(name) {
		return true, nil
	}
	desc, err := c.DescribeWorkflow(ctx, ota.RolloutWorkflowID(name), "")
	var notFound *serviceerror.NotFound
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return false, fmt.Errorf("describe rollout %s: %w", name, err)
	case desc.Status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
		return true, nil
	}
	// Rollouts started under other IDs (by the schedules of earlier versions), and upgrades of
	// the rollout still running, carry the rollout's name.
	n, err := c.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{
		Query: fmt.Sprintf("%s = '%s' AND ExecutionStatus = 'Running'", ota.SearchRollout.GetName(), name),
	})
	if err != nil {
		return false, fmt.Errorf("look for running workflows of rollout %s: %w", name, err)
	}
	if n.GetCount() > 0 {
		return true, nil
	}
	_, err = c.ScheduleClient().GetHandle(ctx, ota.RolloutScheduleID(name)).Describe(ctx)
	switch {
	case errors.As(err, &notFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("describe the schedule of rollout %s: %w", name, err)
	}
	return true, nil
}
