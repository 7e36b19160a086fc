package workflows

import (
	"testing"

	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// TestReplayRecordedHistories replays histories recorded by earlier versions of the
// workflows, as a new worker replays the runs still open when it is deployed: a change to the
// commands a recorded run issued (activities, timers, children, markers, in their order)
// without a workflow.GetVersion guard fails here with a nondeterminism error. (The SDK's
// replayer does not notice a run that would close earlier than recorded, which is all that
// handoverChange would alter in this history without its guard.)
func TestReplayRecordedHistories(t *testing.T) {
	tests := []struct {
		name, file string
	}{
		// A rollout run, recorded before handoverChange, that waited for its running
		// upgrades to end before it continued as new (ContinueAfter 3, MaxInFlight 2).
		{"rollout draining before continue-as-new", "testdata/rollout-before-handover.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(RolloutWorkflow, workflow.RegisterOptions{Name: RolloutWorkflowName})
			r.RegisterWorkflowWithOptions(DeviceUpgradeWorkflow, workflow.RegisterOptions{Name: DeviceUpgradeWorkflowName})
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, tt.file); err != nil {
				t.Fatal(err)
			}
		})
	}
}
