package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
)

// deliverRun is how long one DeliverNotifications round runs: the activity reads the outbox
// every half second and delivers what is due, so a round costs the notifier's history six
// events however many notifications it delivers.
const deliverRun = 5 * time.Minute

// notifierRounds is how many rounds one notifier run makes before it continues as new
// (about 1,200 history events, 16 hours).
const notifierRounds = 200

var deliverOptions = workflow.ActivityOptions{
	StartToCloseTimeout: deliverRun + time.Minute,
	HeartbeatTimeout:    time.Minute,
	// A worker without notifications (ErrTypeNoNotifications) is retried too: another
	// worker may have them.
	RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute},
}

// NotifierWorkflow delivers event notifications for as long as it runs (ota.NotifierWorkflowID,
// started by workers with --notify-url and by rollouts with receivers of their own): round
// after round of the DeliverNotifications activity, which delivers what the outbox holds. The
// outbox, not this history, holds the events: upgrades and rollouts add none to it.
func NotifierWorkflow(ctx workflow.Context, in ota.NotifierInput) error {
	var a *activities.Activities
	actx := workflow.WithActivityOptions(ctx, deliverOptions)
	for i := 0; i < notifierRounds; i++ {
		var res ota.DeliverResult
		if err := workflow.ExecuteActivity(actx, a.DeliverNotifications, ota.DeliverInput{Run: deliverRun}).Get(ctx, &res); err != nil {
			if ctx.Err() != nil {
				return err
			}
			workflow.GetLogger(ctx).Error("Delivery round failed", "Error", err)
		}
	}
	return workflow.NewContinueAsNewError(ctx, ota.NotifierWorkflowName, ota.NotifierInput{Rounds: in.Rounds + notifierRounds})
}

// notifyChange: a rollout records an event for its notification receivers when a wave
// finishes, when it pauses and when it ends (a local activity each, one marker event). Asked
// only there, so that a rollout recorded before it replays without.
const notifyChange = "notify-rollout-events"

// notify records a rollout event of type typ about wave (1-based; 0 for the current one).
// Bookkeeping: a failure is logged and the rollout goes on.
func (r *rollout) notify(ctx workflow.Context, typ string, wave int) {
	if workflow.GetVersion(ctx, notifyChange, workflow.DefaultVersion, 1) < 1 {
		return
	}
	if wave == 0 {
		wave = r.p.CurrentWave
	}
	info := workflow.GetInfo(ctx)
	ev := ota.Event{Schema: ota.EventSchema, Type: typ, OccurredAt: workflow.Now(ctx),
		ID: fmt.Sprintf("rollout/%s/%s/%d/%s-%d", r.req.Name, info.WorkflowExecution.RunID, info.GetCurrentHistoryLength(), typ, wave),
		Rollout: &ota.RolloutEvent{Name: r.req.Name, Type: r.req.Upgrade.Type, Version: r.req.Upgrade.Version, State: r.p.State,
			Reason: r.p.Reason, Wave: wave, Waves: len(r.p.Waves), Total: r.p.Total, Counts: r.p.Counts}}
	if wave >= 1 && wave <= len(r.p.Waves) {
		c := r.p.Waves[wave-1].Counts
		ev.Rollout.WaveCounts = &c
	}
	var a *activities.Activities
	if err := workflow.ExecuteLocalActivity(workflow.WithLocalActivityOptions(ctx, recordOptions), a.RecordRolloutEvent, ev).Get(ctx, nil); err != nil {
		workflow.GetLogger(ctx).Error("Could not record the rollout event", "Event", typ, "Error", err)
	}
}

// rolloutEvents are the events of a rollout's final states.
var rolloutEvents = map[ota.RolloutState]string{
	ota.RolloutCompleted: ota.EventRolloutCompleted,
	ota.RolloutAborted:   ota.EventRolloutAborted,
	ota.RolloutCanceled:  ota.EventRolloutCanceled,
	ota.RolloutFailed:    ota.EventRolloutFailed,
}
