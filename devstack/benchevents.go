package main

import (
	"context"
	"fmt"
	"slices"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/converter"

	"github.com/otaflow/otaflow/internal/ota"
)

// eventCounts counts history events by type.
type eventCounts map[enumspb.EventType]int

// countEvents counts the events of a history by type.
func countEvents(events []*historypb.HistoryEvent) eventCounts {
	c := eventCounts{}
	for _, e := range events {
		c[e.GetEventType()]++
	}
	return c
}

// add adds o's counts to c.
func (c eventCounts) add(o eventCounts) {
	for t, n := range o {
		c[t] += n
	}
}

// total is the number of events counted.
func (c eventCounts) total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// closeEvents end a workflow run; each closes its visibility record (continue-as-new too:
// every run has a record of its own).
var closeEvents = []enumspb.EventType{
	enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
	enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
	enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
	enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
	enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
	enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}

// visibilityWrites is how many visibility writes the counted events caused: one at each
// run's start and close, one per search-attribute upsert and one per memo change
// (WorkflowPropertiesModified).
func (c eventCounts) visibilityWrites() int {
	n := c[enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED] +
		c[enumspb.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES] +
		c[enumspb.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED]
	for _, t := range closeEvents {
		n += c[t]
	}
	return n
}

// eventBreakdown is the history events of the successful device upgrades of a sample, and
// those of the rollout that started them, by type.
type eventBreakdown struct {
	device   eventCounts // summed over the sample
	upgrades int         // successful device upgrades in the sample
	rollout  eventCounts // summed over the rollout's runs
	devices  int         // device upgrades the rollout started
}

// per divides n by d (0 when d is 0).
func per(n, d int) float64 {
	if d == 0 {
		return 0
	}
	return float64(n) / float64(d)
}

// lines formats the breakdown as a table: the average events per successful device upgrade
// in its own history and the rollout's per device, by event type in the order of the
// event type enumeration, then their totals and the visibility writes.
func (b eventBreakdown) lines() []string {
	types := map[enumspb.EventType]bool{}
	for _, c := range []eventCounts{b.device, b.rollout} {
		for t := range c {
			types[t] = true
		}
	}
	order := make([]enumspb.EventType, 0, len(types))
	for t := range types {
		order = append(order, t)
	}
	slices.Sort(order)
	out := []string{fmt.Sprintf("  %-44s %8s %8s", "history events by type, per device upgrade", "device", "rollout")}
	for _, t := range order {
		out = append(out, fmt.Sprintf("    %-42s %8.2f %8.2f", t.String(), per(b.device[t], b.upgrades), per(b.rollout[t], b.devices)))
	}
	out = append(out,
		fmt.Sprintf("    %-42s %8.2f %8.2f", "total", per(b.device.total(), b.upgrades), per(b.rollout.total(), b.devices)),
		fmt.Sprintf("  %-44s %8.2f %8.2f", "visibility writes per upgrade", per(b.device.visibilityWrites(), b.upgrades),
			per(b.rollout.visibilityWrites(), b.devices)),
		fmt.Sprintf("  (device: its own history, average of %d successful upgrades; rollout: the rollout's runs' histories / %d devices;",
			b.upgrades, b.devices),
		"   visibility writes: run starts and closes, search-attribute upserts and memo changes)")
	return out
}

// upgradeSucceeded reports whether a device upgrade's history ends with the workflow
// completed in state succeeded.
func upgradeSucceeded(events []*historypb.HistoryEvent) bool {
	if len(events) == 0 {
		return false
	}
	attrs := events[len(events)-1].GetWorkflowExecutionCompletedEventAttributes()
	if attrs == nil {
		return false
	}
	var st ota.UpgradeStatus
	if err := converter.GetDefaultDataConverter().FromPayloads(attrs.GetResult(), &st); err != nil {
		return false
	}
	return st.State == ota.StateSucceeded
}

// history reads the whole history of a workflow run (the latest run when runID is "").
func (s *Stack) history(ctx context.Context, workflowID, runID string) ([]*historypb.HistoryEvent, error) {
	it := s.Client.GetWorkflowHistory(ctx, workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var events []*historypb.HistoryEvent
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("history of %s: %w", workflowID, err)
		}
		events = append(events, e)
	}
	return events, nil
}
