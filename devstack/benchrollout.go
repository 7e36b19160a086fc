package main

import (
	"context"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/ota"
)

// Floor 3 is the least a rollout can do: a parent workflow that starts floor 2's minimal
// upgrade as a child workflow per device, at most InFlight at a time, counts the failed ones
// and completes when all are done. Like the real rollout, it continues as new after
// ContinueAfter children and hands the children still running to the next run, which waits
// for them with one activity.

// minimalRolloutName is the floor-3 workflow's type name.
const minimalRolloutName = "BenchMinimalRollout"

// minimalRolloutInput is what a run of the minimal rollout works on: the devices
// simulator.DeviceID(Prefix, Next+1) to simulator.DeviceID(Prefix, Count) are left to start.
type minimalRolloutInput struct {
	Prefix        string
	Count         int
	Next          int
	InFlight      int
	ContinueAfter int
	Upgrade       ota.UpgradeRequest
	// Handed are the children an earlier run left running; Failed the children that failed
	// in earlier runs.
	Handed []workflow.Execution
	Failed int
}

// minimalRollout runs floor 3. It returns how many device upgrades failed.
func minimalRollout(ctx workflow.Context, in minimalRolloutInput) (int, error) {
	if in.InFlight < 1 || in.ContinueAfter < 1 {
		return 0, fmt.Errorf("minimal rollout: in-flight limit %d and continue-after %d must be at least 1", in.InFlight, in.ContinueAfter)
	}
	failed := in.Failed
	running := map[string]*workflow.Execution{} // by device; each filled in once started
	starting := 0                               // children not yet started
	handed := len(in.Handed)
	if handed > 0 {
		var a *minimalActivities
		actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 5 * time.Minute})
		fut := workflow.ExecuteActivity(actx, a.AwaitRuns, in.Handed)
		workflow.Go(ctx, func(gctx workflow.Context) {
			var n int
			if err := fut.Get(gctx, &n); err != nil {
				n = len(in.Handed)
			}
			failed += n
			handed = 0
		})
	}
	opts := workflow.ChildWorkflowOptions{TaskQueue: minimalTaskQueue, WorkflowExecutionTimeout: minimalTimeout,
		ParentClosePolicy: enumspb.PARENT_CLOSE_POLICY_ABANDON}
	for startedThisRun := 0; in.Next < in.Count && startedThisRun < in.ContinueAfter; startedThisRun++ {
		if err := workflow.Await(ctx, func() bool { return len(running)+handed < in.InFlight }); err != nil {
			return 0, err
		}
		id := simulator.DeviceID(in.Prefix, in.Next+1)
		in.Next++
		req := in.Upgrade
		req.DeviceID = id
		o := opts
		o.WorkflowID = ota.DeviceWorkflowID(id)
		fut := workflow.ExecuteChildWorkflow(workflow.WithChildOptions(ctx, o), minimalUpgradeName, req)
		exec := &workflow.Execution{}
		running[id] = exec
		starting++
		workflow.Go(ctx, func(gctx workflow.Context) {
			// A child that could not start fails its Get below at once.
			_ = fut.GetChildWorkflowExecution().Get(gctx, exec)
			starting--
			if err := fut.Get(gctx, nil); err != nil {
				failed++
			}
			delete(running, id)
		})
	}
	if in.Next < in.Count {
		// Hand over the children once each has started (its run ID is known), as they stand
		// at that moment.
		if err := workflow.Await(ctx, func() bool { return starting == 0 }); err != nil {
			return 0, err
		}
		next := in
		next.Failed, next.Handed = failed, nil
		if handed > 0 { // the earlier run's children, not yet awaited
			next.Handed = append(next.Handed, in.Handed...)
		}
		for _, id := range workflow.DeterministicKeys(running) {
			next.Handed = append(next.Handed, *running[id])
		}
		return 0, workflow.NewContinueAsNewError(ctx, minimalRolloutName, next)
	}
	if err := workflow.Await(ctx, func() bool { return len(running) == 0 && handed == 0 }); err != nil {
		return 0, err
	}
	return failed, nil
}

// AwaitRuns waits for the workflow runs an earlier run of the minimal rollout handed over and
// returns how many of them failed.
func (m *minimalActivities) AwaitRuns(ctx context.Context, runs []workflow.Execution) (int, error) {
	failed := 0
	for _, r := range runs {
		if err := m.client.GetWorkflow(ctx, r.ID, r.RunID).Get(ctx, nil); err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			failed++
		}
	}
	return failed, nil
}

// benchMinimalRollout runs floor 3: the minimal rollout over ids (simulator.DeviceID("sim",
// 1) to simulator.DeviceID("sim", len(ids))), inFlight children at a time, continuing as new
// after continueAfter.
func (s *Stack) benchMinimalRollout(ctx context.Context, ids []string, version string, inFlight, continueAfter int) (benchResult, error) {
	stop, err := s.startMinimalWorker(ctx, "bench-minimal-rollout-worker")
	if err != nil {
		return benchResult{}, err
	}
	defer stop()
	for i, id := range ids {
		if want := simulator.DeviceID("sim", i+1); id != want {
			return benchResult{}, fmt.Errorf("device %d is %s, not %s", i+1, id, want)
		}
	}
	in := minimalRolloutInput{Prefix: "sim", Count: len(ids), InFlight: inFlight, ContinueAfter: continueAfter,
		Upgrade: ota.UpgradeRequest{Type: "firmware", Version: version, URL: s.Package.URL, MD5: s.Package.MD5, Size: s.Package.Size}}
	start := time.Now()
	run, err := s.Client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "bench-minimal-rollout-" + start.UTC().Format("20060102-150405"),
		TaskQueue: minimalTaskQueue}, minimalRolloutName, in)
	if err != nil {
		return benchResult{}, err
	}
	var failed int
	if err := run.Get(ctx, &failed); err != nil {
		return benchResult{}, err
	}
	elapsed := time.Since(start)
	if failed > 0 {
		s.say("  (floor 3: %d devices never answered)", failed)
	}
	if failed == len(ids) {
		return benchResult{}, fmt.Errorf("every device upgrade of the minimal rollout failed")
	}
	return benchResult{name: "minimal rollout", devices: len(ids) - failed, elapsed: elapsed}, nil
}
