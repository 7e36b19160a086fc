package workflows

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/ota"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// TestReplayRecordedHistories replays histories recorded by earlier versions of the
// workflows, as a new worker replays the runs still open when it is deployed: a change to the
// commands a recorded run issued (activities, timers, children, markers, search attribute
// upserts, in their order) without a workflow.GetVersion guard fails here with a
// nondeterminism error.
//
//   - testdata/rollout-before-handover.json: a rollout run recorded before versionHandover
//     that waited for its running upgrades to end before it continued as new (ContinueAfter
//     3, MaxInFlight 2). (The SDK's replayer does not notice a run that would close earlier
//     than recorded, which is all that the handover would alter in it without its guard.)
//   - testdata/v1/: upgrades and rollouts recorded by internal/e2e's TestRecordHistories
//     before the changes of issue 15 (versionControl, statusNeedsKeyChange,
//     progressAfterDownloadChange, silenceChange): retries, timeouts, cancels, a status
//     without the version key, progress going back, pauses, approvals, hand-overs, a
//     threshold pause and a Temporal cancel.
//   - testdata/issue11-device/: upgrades recorded by the same test before issue 11's device
//     side (preflightChange, soakChange, cancelMessageChange): a cancel in each phase of an
//     attempt, a signed package, a soak time and a compatibility rule the device does not
//     meet, which the code before them ignored; and again the paths of v1.
//   - testdata/v2-rollouts/: rollouts recorded by TestRecordHistories at versionControl,
//     before the changes of issue 11 (targets chosen by compatibility and quarantine,
//     continuous rollouts): the scenarios of v1, and a wave below its success threshold
//     that aborts.
//   - testdata/v2/: rollouts and an upgrade recorded (TestRecordHistories/ends) before the
//     changes of issue 10 (plain reasons, records scoped to the rollout's run): a rollout
//     that completes, one continued as new twice, one whose pre-flight fails, one that
//     matches no device, and the upgrade of an unknown device.
//   - testdata/issue12/: the same situations, and a threshold abort, recorded before the
//     changes of issue 12 (metrics, and the rollout's notification events behind notifyChange).
//   - testdata/issue12-after/: the rollouts again, recorded after them: with the
//     notify-rollout-events marker and a RecordRolloutEvent local activity at each wave end,
//     pause and end.
//   - testdata/retention/: a RetentionCleanupWorkflow run recorded by TestRecordHistories
//     (its cleanup scenario) when the workflow was new (issue 13): batches of 100 over old
//     and young rows, upgrades kept forever.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("testdata/*/*.json")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, more...)
	if len(files) < 83 {
		t.Fatalf("found %d recorded histories, want the 83 recorded so far", len(files))
	}
	for _, file := range files {
		t.Run(strings.TrimPrefix(file, "testdata/"), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(RolloutWorkflow, workflow.RegisterOptions{Name: ota.RolloutWorkflowName})
			r.RegisterWorkflowWithOptions(DeviceUpgradeWorkflow, workflow.RegisterOptions{Name: ota.DeviceUpgradeWorkflowName})
			r.RegisterWorkflowWithOptions(ScheduledRolloutWorkflow, workflow.RegisterOptions{Name: ota.ScheduledRolloutWorkflowName})
			r.RegisterWorkflowWithOptions(RetentionCleanupWorkflow, workflow.RegisterOptions{Name: ota.RetentionCleanupWorkflowName})
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, file); err != nil {
				t.Fatal(err)
			}
		})
	}
}
