package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	commonpb "go.temporal.io/api/common/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/converter"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// TestTemporalHandler: what the SDK's handler records comes out of the registry under
// Prometheus's names: counters with _total, timers as histograms in seconds with the bucket
// set of their kind.
func TestTemporalHandler(t *testing.T) {
	reg := NewRegistry()
	h, err := TemporalHandler(reg)
	if err != nil {
		t.Fatal(err)
	}
	tagged := h.WithTags(map[string]string{LabelType: "firmware", LabelRollout: "fw-2"})
	tagged.Counter(UpgradesStarted).Inc(3)
	tagged.Timer(UpgradeDuration).Record(90 * time.Second)
	h.Timer("temporal_request_latency").Record(3 * time.Millisecond)

	want := `
# HELP otaflow_upgrades_started_total
# TYPE otaflow_upgrades_started_total counter
otaflow_upgrades_started_total{rollout="fw-2",type="firmware"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "otaflow_upgrades_started_total"); err != nil {
		t.Error(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	buckets := map[string]int{}
	for _, f := range fams {
		if m := f.GetMetric(); len(m) > 0 && m[0].Histogram != nil {
			buckets[f.GetName()] = len(m[0].GetHistogram().GetBucket())
			if f.GetName() == "otaflow_upgrade_duration_seconds" && m[0].GetHistogram().GetSampleSum() != 90 {
				t.Errorf("upgrade duration sum %v, want 90 (seconds)", m[0].GetHistogram().GetSampleSum())
			}
		}
	}
	if buckets["otaflow_upgrade_duration_seconds"] != len(UpgradeBuckets) || buckets["temporal_request_latency_seconds"] != len(LatencyBuckets) {
		t.Errorf("histogram buckets %v, want %d for upgrades and %d for SDK latencies", buckets, len(UpgradeBuckets), len(LatencyBuckets))
	}
}

func TestListenServesMetrics(t *testing.T) {
	reg := NewRegistry()
	srv, err := Listen("127.0.0.1:0", reg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if !strings.HasPrefix(srv.URL(), "http://127.0.0.1:") || !strings.HasSuffix(srv.URL(), "/metrics") {
		t.Fatalf("URL %s", srv.URL())
	}
	resp, err := http.Get(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "go_goroutines") {
		t.Errorf("GET /metrics: %s\n%.200s", resp.Status, b)
	}
}

type fakeFleet struct {
	asked []string
	reads int
}

func (f *fakeFleet) FleetCounts(_ context.Context, rollouts []string, silent []time.Duration) (store.FleetCounts, error) {
	f.asked = rollouts
	f.reads++
	return store.FleetCounts{Devices: 10, Disabled: 2, Silent: map[time.Duration]int{time.Hour: 3, 24 * time.Hour: 1},
		InFlight: map[string]int{"firmware": 4},
		Rollouts: map[string]map[ota.State]int{"fw-2": {ota.StateSucceeded: 5, ota.StateSent: 2}}}, nil
}

type fakeVisibility struct{}

func (fakeVisibility) ListWorkflow(context.Context, *workflowservice.ListWorkflowExecutionsRequest) (*workflowservice.ListWorkflowExecutionsResponse, error) {
	sa := func(name, state string) *commonpb.SearchAttributes {
		p1, _ := converter.GetDefaultDataConverter().ToPayload(name)
		p2, _ := converter.GetDefaultDataConverter().ToPayload(state)
		return &commonpb.SearchAttributes{IndexedFields: map[string]*commonpb.Payload{
			ota.SearchRollout.GetName(): p1, ota.SearchState.GetName(): p2}}
	}
	return &workflowservice.ListWorkflowExecutionsResponse{Executions: []*workflowpb.WorkflowExecutionInfo{
		{SearchAttributes: sa("fw-2", "paused")}}}, nil
}

// TestFleetCollector: the running rollouts from visibility, their counts and the fleet's from
// the store; read at most once an interval.
func TestFleetCollector(t *testing.T) {
	st := &fakeFleet{}
	c := &FleetCollector{Store: st, Temporal: fakeVisibility{}, Interval: time.Hour}
	want := `
# HELP otaflow_devices Registered devices, by state (enabled or disabled).
# TYPE otaflow_devices gauge
otaflow_devices{state="disabled"} 2
otaflow_devices{state="enabled"} 8
# HELP otaflow_devices_silent Enabled devices not heard from (no message at all) for longer than the label says, or never.
# TYPE otaflow_devices_silent gauge
otaflow_devices_silent{for="1h"} 3
otaflow_devices_silent{for="24h"} 1
# HELP otaflow_rollout_state Running rollouts: 1 for the state each is in (running, paused, baking, waiting_approval, ...).
# TYPE otaflow_rollout_state gauge
otaflow_rollout_state{rollout="fw-2",state="paused"} 1
# HELP otaflow_upgrades_in_flight Device upgrades started and not finished, by type (PostgreSQL).
# TYPE otaflow_upgrades_in_flight gauge
otaflow_upgrades_in_flight{type="firmware"} 4
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "otaflow_devices", "otaflow_devices_silent",
		"otaflow_rollout_state", "otaflow_upgrades_in_flight"); err != nil {
		t.Error(err)
	}
	if len(st.asked) != 1 || st.asked[0] != "fw-2" {
		t.Errorf("asked the store about %v, want the running rollout fw-2", st.asked)
	}
	if n := testutil.CollectAndCount(c, "otaflow_rollout_devices"); n != len(ota.AllStates) {
		t.Errorf("%d otaflow_rollout_devices series, want one per state (%d)", n, len(ota.AllStates))
	}
	if st.reads != 1 {
		t.Errorf("%d reads for three collections within the interval, want 1", st.reads)
	}
}
