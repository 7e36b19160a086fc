package workflows

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"go.temporal.io/sdk/client"
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
//   - testdata/issue12-ui/: upgrades and rollouts recorded by TestRecordHistories with
//     durations as strings (ota.Duration) and summaries on timers, with the scenarios of
//     issue11-device and v2-rollouts. (Histories before it hold durations as nanoseconds:
//     TestReplayNanosecondDurations.)
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
	if len(files) < 142 {
		t.Fatalf("found %d recorded histories, want the 142 recorded so far", len(files))
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

// durationKeys are the JSON names of the contract's ota.Duration fields, which histories
// recorded before ota.Duration hold as numbers of nanoseconds.
var durationKeys = map[string]bool{"start_timeout": true, "silence_timeout": true, "install_timeout": true,
	"deadline": true, "retry_backoff": true, "soak": true, "bake": true, "step": true, "gather": true, "max_wait": true}

// TestReplayNanosecondDurations: the recorded histories whose workflow inputs hold durations
// as numbers of nanoseconds (time.Duration's JSON, before ota.Duration) still decode and
// replay. Each such input decodes into today's types, every duration to the number
// recorded, and encodes again as a duration string; then the history replays. Replay alone
// would not notice a duration lost (timers match by ID, not by length), hence the decode.
func TestReplayNanosecondDurations(t *testing.T) {
	files, err := filepath.Glob("testdata/*/*.json")
	if err != nil {
		t.Fatal(err)
	}
	top, err := filepath.Glob("testdata/*.json")
	if err != nil {
		t.Fatal(err)
	}
	withNanos := map[string]int{} // by workflow type
	for _, file := range append(top, files...) {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		h, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		started := h.Events[0].GetWorkflowExecutionStartedEventAttributes()
		raw := started.GetInput().GetPayloads()[0].GetData()
		recorded := map[string]float64{} // path: nanoseconds
		var doc any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		walkDurations(doc, "", func(path string, v any) {
			if n, ok := v.(float64); ok {
				recorded[path] = n
			}
		})
		if len(recorded) == 0 {
			continue
		}
		wfType := started.GetWorkflowType().GetName()
		withNanos[wfType]++
		t.Run(strings.TrimPrefix(file, "testdata/"), func(t *testing.T) {
			var in any = new(ota.RolloutInput)
			if wfType == ota.DeviceUpgradeWorkflowName {
				in = new(ota.UpgradeRequest)
			}
			if err := json.Unmarshal(raw, in); err != nil {
				t.Fatalf("decode the recorded %s input: %v", wfType, err)
			}
			again, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			var now any
			if err := json.Unmarshal(again, &now); err != nil {
				t.Fatal(err)
			}
			seen := 0
			walkDurations(now, "", func(path string, v any) {
				n, ok := recorded[path]
				if !ok {
					return
				}
				seen++
				s, _ := v.(string)
				if d, err := time.ParseDuration(s); err != nil || float64(d) != n {
					t.Errorf("%s: recorded %.0f ns, decoded and encoded again as %v", path, n, v)
				}
			})
			if seen != len(recorded) {
				t.Errorf("%d of the %d recorded durations came back (recorded %v, now %s)", seen, len(recorded), recorded, again)
			}
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(RolloutWorkflow, workflow.RegisterOptions{Name: ota.RolloutWorkflowName})
			r.RegisterWorkflowWithOptions(DeviceUpgradeWorkflow, workflow.RegisterOptions{Name: ota.DeviceUpgradeWorkflowName})
			r.RegisterWorkflowWithOptions(ScheduledRolloutWorkflow, workflow.RegisterOptions{Name: ota.ScheduledRolloutWorkflowName})
			if err := r.ReplayWorkflowHistory(nil, h); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The recordings so far: every upgrade and rollout input has its timeouts as numbers.
	for _, name := range []string{ota.DeviceUpgradeWorkflowName, ota.RolloutWorkflowName, ota.ScheduledRolloutWorkflowName} {
		if withNanos[name] == 0 {
			t.Errorf("no recorded %s history has durations in nanoseconds: the test shows nothing for it", name)
		}
	}
}

// walkDurations calls fn with the path and value of every duration field in a decoded JSON
// document.
func walkDurations(v any, path string, fn func(path string, v any)) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if durationKeys[k] {
				fn(path+"."+k, x)
				continue
			}
			walkDurations(x, path+"."+k, fn)
		}
	case []any:
		for i, x := range v {
			walkDurations(x, fmt.Sprintf("%s[%d]", path, i), fn)
		}
	}
}
