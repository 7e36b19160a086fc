package workflows

import (
	"strconv"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/ota"
)

// The metrics below go through workflow.GetMetricsHandler, which emits nothing while a
// workflow replays: they add no command and no history event, so they need no GetVersion.

// countUpgradeStarted counts a device upgrade's start.
func countUpgradeStarted(ctx workflow.Context, req ota.UpgradeRequest) {
	workflow.GetMetricsHandler(ctx).WithTags(map[string]string{
		metrics.LabelType: req.Type, metrics.LabelRollout: req.Rollout,
	}).Counter(metrics.UpgradesStarted).Inc(1)
}

// countUpgradeFinished counts a device upgrade's end in its final state: the upgrade, its
// attempts and, for a success, the time it took.
func countUpgradeFinished(ctx workflow.Context, u *upgrade) {
	h := workflow.GetMetricsHandler(ctx).WithTags(map[string]string{
		metrics.LabelType: u.req.Type, metrics.LabelRollout: u.req.Rollout,
	})
	h.WithTags(map[string]string{metrics.LabelState: string(u.st.State), metrics.LabelErrorCode: strconv.Itoa(u.st.ErrorCode)}).
		Counter(metrics.UpgradesFinished).Inc(1)
	h.WithTags(map[string]string{metrics.LabelState: string(u.st.State)}).Counter(metrics.UpgradeAttempts).Inc(int64(u.st.Attempt))
	if u.st.State == ota.StateSucceeded && u.st.FinishedAt != nil {
		h.Timer(metrics.UpgradeDuration).Record(u.st.FinishedAt.Sub(u.st.StartedAt))
	}
}

// rolloutMetrics returns the metrics handler of a rollout, with its name as a label.
func (r *rollout) metrics(ctx workflow.Context) client.MetricsHandler {
	return workflow.GetMetricsHandler(ctx).WithTags(map[string]string{metrics.LabelRollout: r.req.Name})
}
