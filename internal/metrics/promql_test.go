package metrics

import (
	"reflect"
	"testing"
)

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (rollout) (rate(otaflow_upgrades_finished_total{state=~"failed|timed_out"}[15m])) / sum by (rollout) (rate(otaflow_upgrades_finished_total[15m])) > 0.1`,
			[]string{"otaflow_upgrades_finished_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(otaflow_bridge_signal_latency_seconds_bucket[5m]))) > 30 or max(a_b / c_d) > 0.8`,
			[]string{"a_b", "c_d", "otaflow_bridge_signal_latency_seconds_bucket"}},
		{`max by (rollout) (x{state="running"}) == 1 unless on (rollout) sum by (rollout) (increase(y[30m])) > 0`, []string{"x", "y"}},
		{`sum(m{kind="device"}) < 0.8 * sum(m{kind="device"} offset 15m)`, []string{"m"}},
		{`sum(rate(a[5m])) * 60 and bool b{l='x{y}'}`, []string{"a", "b"}},
		{`avg without (instance) (c) + ignoring(job) group_left(x) d`, []string{"c", "d"}},
		{`1e3 + 5`, []string{}},
	}
	for _, tt := range tests {
		if got := MetricNames(tt.expr); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("MetricNames(%q) = %v, want %v", tt.expr, got, tt.want)
		}
	}
}
