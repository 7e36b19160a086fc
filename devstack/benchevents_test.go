package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/converter"

	"github.com/otaflow/otaflow/internal/ota"
)

func events(types ...enumspb.EventType) []*historypb.HistoryEvent {
	out := make([]*historypb.HistoryEvent, len(types))
	for i, t := range types {
		out[i] = &historypb.HistoryEvent{EventId: int64(i + 1), EventType: t}
	}
	return out
}

const (
	started   = enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
	completed = enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
	scheduled = enumspb.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
	wtStarted = enumspb.EVENT_TYPE_WORKFLOW_TASK_STARTED
	wtDone    = enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
	marker    = enumspb.EVENT_TYPE_MARKER_RECORDED
	signaled  = enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
	upsert    = enumspb.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
	memo      = enumspb.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED
	canRun    = enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
	timedOut  = enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT
	childInit = enumspb.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
)

func TestEventCounts(t *testing.T) {
	for _, tc := range []struct {
		name       string
		histories  [][]*historypb.HistoryEvent
		want       eventCounts
		total      int
		visibility int
	}{
		{name: "no history", want: eventCounts{}},
		{name: "minimal upgrade", histories: [][]*historypb.HistoryEvent{
			events(started, scheduled, wtStarted, wtDone, marker, signaled, scheduled, wtStarted, wtDone, completed)},
			want:  eventCounts{started: 1, scheduled: 2, wtStarted: 2, wtDone: 2, marker: 1, signaled: 1, completed: 1},
			total: 10, visibility: 2},
		{name: "upserts and a memo change are visibility writes", histories: [][]*historypb.HistoryEvent{
			events(started, scheduled, wtStarted, wtDone, upsert, memo, upsert, scheduled, wtStarted, wtDone, completed)},
			want:  eventCounts{started: 1, scheduled: 2, wtStarted: 2, wtDone: 2, upsert: 2, memo: 1, completed: 1},
			total: 11, visibility: 5},
		{name: "runs of a rollout add up, continue-as-new closes a run", histories: [][]*historypb.HistoryEvent{
			events(started, scheduled, wtStarted, wtDone, childInit, childInit, canRun),
			events(started, scheduled, wtStarted, wtDone, upsert, completed)},
			want:  eventCounts{started: 2, scheduled: 2, wtStarted: 2, wtDone: 2, childInit: 2, canRun: 1, upsert: 1, completed: 1},
			total: 13, visibility: 5},
		{name: "a timed-out run closes too", histories: [][]*historypb.HistoryEvent{events(started, scheduled, timedOut)},
			want: eventCounts{started: 1, scheduled: 1, timedOut: 1}, total: 3, visibility: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := eventCounts{}
			for _, h := range tc.histories {
				got.add(countEvents(h))
			}
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.total, got.total())
			assert.Equal(t, tc.visibility, got.visibilityWrites())
		})
	}
}

func TestEventBreakdownLines(t *testing.T) {
	b := eventBreakdown{
		device:   eventCounts{started: 2, signaled: 3, completed: 2, upsert: 4},
		upgrades: 2,
		rollout:  eventCounts{started: 1, childInit: 4, completed: 1},
		devices:  4,
	}
	lines := b.lines()
	row := func(name string) []string {
		for _, l := range lines {
			if f := strings.Fields(l); len(f) == 3 && f[0] == name {
				return f[1:]
			}
		}
		t.Fatalf("no row %s in\n%s", name, strings.Join(lines, "\n"))
		return nil
	}
	for _, tc := range []struct {
		row             string
		device, rollout string
	}{
		{"WorkflowExecutionStarted", "1.00", "0.25"},
		{"WorkflowExecutionSignaled", "1.50", "0.00"},
		{"UpsertWorkflowSearchAttributes", "2.00", "0.00"},
		{"StartChildWorkflowExecutionInitiated", "0.00", "1.00"},
		{"WorkflowExecutionCompleted", "1.00", "0.25"},
		{"total", "5.50", "1.50"},
	} {
		assert.Equal(t, []string{tc.device, tc.rollout}, row(tc.row), tc.row)
	}
	// The event types come in the enumeration's order, each once.
	var order []string
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) == 3 && f[0] != "total" {
			order = append(order, f[0])
		}
	}
	assert.Equal(t, []string{"WorkflowExecutionStarted", "WorkflowExecutionCompleted", "WorkflowExecutionSignaled",
		"StartChildWorkflowExecutionInitiated", "UpsertWorkflowSearchAttributes"}, order)
	var vis string
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "visibility writes per upgrade"); ok {
			vis = strings.Join(strings.Fields(rest), " ")
		}
	}
	assert.Equal(t, "4.00 0.50", vis, "device (2 starts + 2 closes + 4 upserts) / 2; rollout (1 + 1) / 4")

	// Nothing counted divides by nothing.
	for _, l := range (eventBreakdown{device: eventCounts{}, rollout: eventCounts{}}).lines() {
		assert.NotContains(t, l, "NaN")
		assert.NotContains(t, l, "Inf")
	}
}

func TestUpgradeSucceeded(t *testing.T) {
	result := func(st ota.State) *commonpb.Payloads {
		p, err := converter.GetDefaultDataConverter().ToPayloads(ota.UpgradeStatus{DeviceID: "d1", State: st})
		require.NoError(t, err)
		return p
	}
	completedWith := func(p *commonpb.Payloads) *historypb.HistoryEvent {
		return &historypb.HistoryEvent{EventType: completed, Attributes: &historypb.HistoryEvent_WorkflowExecutionCompletedEventAttributes{
			WorkflowExecutionCompletedEventAttributes: &historypb.WorkflowExecutionCompletedEventAttributes{Result: p}}}
	}
	for _, tc := range []struct {
		name   string
		events []*historypb.HistoryEvent
		want   bool
	}{
		{"empty history", nil, false},
		{"still running", events(started, scheduled, wtStarted, wtDone), false},
		{"succeeded", append(events(started), completedWith(result(ota.StateSucceeded))), true},
		{"completed failed", append(events(started), completedWith(result(ota.StateFailed))), false},
		{"completed timed out", append(events(started), completedWith(result(ota.StateTimedOut))), false},
		{"completed with no result", append(events(started), completedWith(nil)), false},
		{"workflow timed out", events(started, timedOut), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, upgradeSucceeded(tc.events))
		})
	}
}
