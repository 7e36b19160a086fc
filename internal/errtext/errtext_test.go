package errtext

import (
	"errors"
	"fmt"
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	failurepb "go.temporal.io/api/failure/v1"
	"go.temporal.io/sdk/temporal"
)

// mismatch is the pre-flight's failure, as CheckPackage returns it.
const mismatch = "package http://127.0.0.1:8070/fw.bin is 65536 bytes with md5 92f6eb8d4d4bba759c46ecce14a663c4, " +
	"but the rollout says 65536 bytes with md5 00000000000000000000000000000000"

// fromFailure is the error the SDK makes of a failure, as a workflow sees an activity's or a
// child's.
func fromFailure(f *failurepb.Failure) error {
	return temporal.GetDefaultFailureConverter().FailureToError(f)
}

func appFailure(msg, typ string, nonRetryable bool, cause *failurepb.Failure) *failurepb.Failure {
	return &failurepb.Failure{Message: msg, Cause: cause, FailureInfo: &failurepb.Failure_ApplicationFailureInfo{
		ApplicationFailureInfo: &failurepb.ApplicationFailureInfo{Type: typ, NonRetryable: nonRetryable}}}
}

func activityFailure(cause *failurepb.Failure) *failurepb.Failure {
	return &failurepb.Failure{Message: "activity error", Cause: cause, FailureInfo: &failurepb.Failure_ActivityFailureInfo{
		ActivityFailureInfo: &failurepb.ActivityFailureInfo{ScheduledEventId: 7, StartedEventId: 8, Identity: "1234@vm@",
			ActivityType: &commonpb.ActivityType{Name: "CheckPackage"}, ActivityId: "7"}}}
}

func TestPlain(t *testing.T) {
	preflight := fromFailure(activityFailure(appFailure(mismatch, "PackageMismatch", true, appFailure("package mismatch", "", false, nil))))
	child := fromFailure(&failurepb.Failure{Message: "child workflow execution error",
		Cause: appFailure("upgrade of d1 to firmware 1.1 failed after 3 attempt(s): code -2: md5 mismatch", "UpgradeFailed", true, nil),
		FailureInfo: &failurepb.Failure_ChildWorkflowExecutionFailureInfo{ChildWorkflowExecutionFailureInfo: &failurepb.ChildWorkflowExecutionFailureInfo{
			WorkflowExecution: &commonpb.WorkflowExecution{WorkflowId: "ota-d1", RunId: "r1"},
			WorkflowType:      &commonpb.WorkflowType{Name: "DeviceUpgrade"}, InitiatedEventId: 5, StartedEventId: 6}}})
	timeout := fromFailure(activityFailure(&failurepb.Failure{Message: "activity StartToClose timeout",
		FailureInfo: &failurepb.Failure_TimeoutFailureInfo{TimeoutFailureInfo: &failurepb.TimeoutFailureInfo{
			TimeoutType: enumspb.TIMEOUT_TYPE_START_TO_CLOSE}}}))
	retried := fromFailure(activityFailure(appFailure("fetch package http://x/fw.bin: dial tcp 127.0.0.1:1: connect: connection refused", "wrapError", false, nil)))

	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"plain Go error", errors.New("read device d1: connection refused"), "read device d1: connection refused"},
		{"activity failure", preflight, mismatch},
		{"wrapped by the workflow", fmt.Errorf("pre-flight check failed, no device was touched: %w", preflight),
			"pre-flight check failed, no device was touched: " + mismatch},
		{"retryable error that ran out of attempts", fmt.Errorf("resolve targets: %w", retried),
			"resolve targets: fetch package http://x/fw.bin: dial tcp 127.0.0.1:1: connect: connection refused"},
		{"child workflow", child, "upgrade of d1 to firmware 1.1 failed after 3 attempt(s): code -2: md5 mismatch"},
		{"timeout", fmt.Errorf("could not send the command: %w", timeout), "could not send the command: activity StartToClose timeout"},
		{"application error", temporal.NewNonRetryableApplicationError("unknown device d1: register it first", "UnknownDevice",
			errors.New("device d1: not found")), "unknown device d1: register it first"},
		{"canceled", fmt.Errorf("wait: %w", temporal.NewCanceledError()), "wait: canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Plain(tc.err); got != tc.want {
				t.Errorf("Plain(%v)\n = %q\nwant %q", tc.err, got, tc.want)
			}
		})
	}
}

func TestPlainText(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain", "paused by operator: checking", "paused by operator: checking"},
		{"empty", "", ""},
		// What a rollout recorded before issue 10 (workflows/testdata/v2/rollout-preflight-failed.json).
		{"recorded pre-flight reason",
			"pre-flight check failed, no device was touched: activity error (type: CheckPackage, scheduledEventID: 7, startedEventID: 8, identity: 14774@vm@): " +
				mismatch + " (type: PackageMismatch, retryable: false): package mismatch",
			"pre-flight check failed, no device was touched: " + mismatch},
		// The rollout's workflow error, as the client reads it: the message, then the causes.
		{"workflow error", "workflow execution error (type: Rollout, workflowID: rollout-r1, runID: 01a2): pre-flight check failed, no device was touched: " +
			"activity error (type: CheckPackage, scheduledEventID: 7, startedEventID: 8, identity: 14774@vm@): " + mismatch +
			" (type: PackageMismatch, retryable: false): package mismatch (type: UpgradeFailed, retryable: false): pre-flight check failed",
			"pre-flight check failed, no device was touched: " + mismatch},
		{"upgrade desc", "could not send the command: activity error (type: SendCommand, scheduledEventID: 0, startedEventID: 0, identity: w@h@): " +
			"activity StartToClose timeout (type: StartToClose)", "could not send the command: activity StartToClose timeout"},
		{"child", "child workflow execution error (type: DeviceUpgrade, workflowID: ota-d1, runID: r1, initiatedEventID: 5, startedEventID: 6): " +
			"upgrade of d1 failed (type: UpgradeFailed, retryable: false)", "upgrade of d1 failed"},
		{"a type that is no SDK's", "wave 1 (type: canary) failed", "wave 1 (type: canary) failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := PlainText(tc.in); got != tc.want {
				t.Errorf("PlainText(%q)\n = %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}
