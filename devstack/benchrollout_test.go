package main

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/internal/ota"
)

// TestMinimalRollout runs floor 3's rollout in the SDK's test environment over 7 devices, 2 in
// flight, continuing as new after 3, with children that take 10 s and fail for two devices:
// each run starts at most 3, never more than 2 run at once (handed-over ones included), the
// running ones are handed over and awaited, and the last run counts every failure once.
func TestMinimalRollout(t *testing.T) {
	var mu sync.Mutex
	var order []string
	running, peak := 0, 0
	failing := map[string]bool{ota.DeviceWorkflowID("sim-00002"): true, ota.DeviceWorkflowID("sim-00006"): true}
	child := func(ctx workflow.Context, req ota.UpgradeRequest) error {
		mu.Lock()
		order = append(order, req.DeviceID)
		running++
		peak = max(peak, running)
		mu.Unlock()
		err := workflow.Sleep(ctx, 10*time.Second)
		mu.Lock()
		running--
		mu.Unlock()
		if err == nil && failing[ota.DeviceWorkflowID(req.DeviceID)] {
			err = errors.New("never answered")
		}
		return err
	}
	in := minimalRolloutInput{Prefix: "sim", Count: 7, InFlight: 2, ContinueAfter: 3, Upgrade: ota.UpgradeRequest{Type: "firmware", Version: "1.3"}}
	var suite testsuite.WorkflowTestSuite
	var handedOver [][]string
	for runs := 1; ; runs++ {
		require.LessOrEqual(t, runs, 3, "more runs than 7 devices / 3 per run")
		env := suite.NewTestWorkflowEnvironment()
		env.RegisterWorkflowWithOptions(minimalRollout, workflow.RegisterOptions{Name: minimalRolloutName})
		env.RegisterWorkflowWithOptions(child, workflow.RegisterOptions{Name: minimalUpgradeName})
		var a *minimalActivities
		var awaited []string
		if len(in.Handed) > 0 {
			// The handed-over children end 5 s into the run, when the activity returns.
			env.OnActivity(a.AwaitRuns, mock.Anything, mock.Anything).Return(func(_ context.Context, runs []workflow.Execution) (int, error) {
				failed := 0
				for _, r := range runs {
					awaited = append(awaited, r.ID)
					if failing[r.ID] {
						failed++
					}
				}
				mu.Lock()
				running -= len(runs)
				mu.Unlock()
				return failed, nil
			}).After(5 * time.Second).Once()
		}
		mu.Lock()
		before := len(order)
		mu.Unlock()
		env.ExecuteWorkflow(minimalRolloutName, in)
		require.True(t, env.IsWorkflowCompleted())
		mu.Lock()
		startedThisRun := len(order) - before
		mu.Unlock()
		assert.LessOrEqual(t, startedThisRun, in.ContinueAfter, "run %d", runs)
		var handed []string
		for _, e := range in.Handed {
			handed = append(handed, e.ID)
		}
		assert.Equal(t, handed, awaited, "run %d awaits what the run before handed over", runs)
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if errors.As(err, &can) {
			var next minimalRolloutInput
			require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
			require.Equal(t, in.Next+startedThisRun, next.Next)
			var ids []string
			for _, e := range next.Handed {
				assert.NotEmpty(t, e.RunID, "handed over with its run ID")
				ids = append(ids, e.ID)
			}
			handedOver = append(handedOver, ids)
			// The test environment ends with the run: its children count as running until
			// the next run's AwaitRuns returns.
			mu.Lock()
			running = len(next.Handed)
			mu.Unlock()
			in = next
			continue
		}
		require.NoError(t, err)
		var failed int
		require.NoError(t, env.GetWorkflowResult(&failed))
		assert.Equal(t, 2, failed)
		assert.Equal(t, 3, runs)
		break
	}
	assert.Equal(t, []string{"sim-00001", "sim-00002", "sim-00003", "sim-00004", "sim-00005", "sim-00006", "sim-00007"}, order)
	assert.Equal(t, 2, peak, "at most 2 in flight")
	// Run 1 started 1 and 2, then 3 when they ended at 10 s, and handed 3 over; run 2 started 4
	// beside it, 5 when it was awaited (5 s) and 6 when 4 ended (10 s), and handed 5 and 6 over.
	assert.Equal(t, [][]string{{ota.DeviceWorkflowID("sim-00003")}, {ota.DeviceWorkflowID("sim-00005"), ota.DeviceWorkflowID("sim-00006")}}, handedOver)
}
