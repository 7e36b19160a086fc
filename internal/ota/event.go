package ota

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
)

// EventSchema names the version of the event notifications' JSON (docs/events.schema.json).
const EventSchema = "otaflow.event/v1"

// Types of event notifications.
const (
	// EventUpgradeFinished: a device upgrade ended, in any final state.
	EventUpgradeFinished = "upgrade.finished"
	// EventRolloutWaveFinished: every device upgrade of a rollout's wave ended.
	EventRolloutWaveFinished = "rollout.wave_finished"
	// EventRolloutPaused: a rollout paused (an operator, or a failure or success threshold).
	EventRolloutPaused = "rollout.paused"
	// EventRolloutCompleted, EventRolloutAborted, EventRolloutCanceled, EventRolloutFailed: a
	// rollout ended.
	EventRolloutCompleted = "rollout.completed"
	EventRolloutAborted   = "rollout.aborted"
	EventRolloutCanceled  = "rollout.canceled"
	EventRolloutFailed    = "rollout.failed"
)

// Event is one event notification, as a webhook receiver gets it (the body of the POST).
// ID is its idempotency key: every delivery of the event carries the same one.
type Event struct {
	Schema     string        `json:"schema"`
	ID         string        `json:"id"`
	Type       string        `json:"type"`
	OccurredAt time.Time     `json:"occurred_at"`
	Upgrade    *UpgradeEvent `json:"upgrade,omitempty"`
	Rollout    *RolloutEvent `json:"rollout,omitempty"`
}

// UpgradeEvent is what an upgrade.finished event tells of the upgrade.
type UpgradeEvent struct {
	DeviceID   string     `json:"device_id"`
	WorkflowID string     `json:"workflow_id"`
	RunID      string     `json:"run_id"`
	Rollout    string     `json:"rollout,omitempty"`
	Type       string     `json:"type"`
	Version    string     `json:"version"`
	State      State      `json:"state"`
	Attempt    int        `json:"attempt"`
	ErrorCode  int        `json:"error_code,omitempty"`
	ErrorDesc  string     `json:"error_desc,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// RolloutEvent is what a rollout.* event tells of the rollout.
type RolloutEvent struct {
	Name    string       `json:"name"`
	Type    string       `json:"type"`
	Version string       `json:"version"`
	State   RolloutState `json:"state"`
	Reason  string       `json:"reason,omitempty"`
	// Wave is the wave the event is about (1-based), or the current one; Waves how many
	// there are.
	Wave  int `json:"wave"`
	Waves int `json:"waves"`
	// Total is how many devices the rollout targets; Counts how its upgrades stand, and
	// WaveCounts those of Wave.
	Total      int     `json:"total"`
	Counts     Counts  `json:"counts"`
	WaveCounts *Counts `json:"wave_counts,omitempty"`
}

// UpgradeFinishedEvent is the upgrade.finished event of an upgrade recorded in a final state
// at at. Its ID is the same for every recording of the run's end.
func UpgradeFinishedEvent(u UpgradeRecord, at time.Time) Event {
	fin := at
	return Event{Schema: EventSchema, ID: "upgrade/" + u.WorkflowID + "/" + u.RunID, Type: EventUpgradeFinished, OccurredAt: at,
		Upgrade: &UpgradeEvent{DeviceID: u.DeviceID, WorkflowID: u.WorkflowID, RunID: u.RunID, Rollout: u.Rollout, Type: u.Type,
			Version: u.Version, State: u.State, Attempt: u.Attempt, ErrorCode: u.ErrorCode, ErrorDesc: u.ErrorDesc, FinishedAt: &fin}}
}

// Stream is the order events are delivered in: one device's events in the order they
// happened, and one rollout's.
func (e Event) Stream() string {
	switch {
	case e.Upgrade != nil:
		return "device/" + e.Upgrade.DeviceID
	case e.Rollout != nil:
		return "rollout/" + e.Rollout.Name
	}
	return ""
}

// RolloutName is the rollout the event belongs to, if any.
func (e Event) RolloutName() string {
	switch {
	case e.Upgrade != nil:
		return e.Upgrade.Rollout
	case e.Rollout != nil:
		return e.Rollout.Name
	}
	return ""
}

// NotifierWorkflowName is the registered name of the workflow that delivers event
// notifications (workflows.NotifierWorkflow); NotifierWorkflowID its one execution's ID.
const (
	NotifierWorkflowName = "Notifier"
	NotifierWorkflowID   = "otaflow-notifier"
)

// NotifierInput is the argument of the notifier workflow.
type NotifierInput struct {
	// Rounds counts the delivery rounds of earlier runs (continue-as-new).
	Rounds int `json:"rounds,omitempty"`
}

// DeliverInput is the argument of the DeliverNotifications activity: deliver what is due
// for Run, then return.
type DeliverInput struct {
	Run time.Duration `json:"run"`
}

// DeliverResult says what one delivery round did.
type DeliverResult struct {
	Delivered int `json:"delivered"`
	Failed    int `json:"failed"`
	GivenUp   int `json:"given_up"`
}

// StartNotifier starts the notifier workflow unless it runs: every worker and every start of
// a rollout with its own receiver may call it.
func StartNotifier(ctx context.Context, c client.Client) error {
	_, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                       NotifierWorkflowID,
		TaskQueue:                TaskQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		StaticSummary:            "Delivers OTAflow's event notifications (webhooks)",
	}, NotifierWorkflowName, NotifierInput{})
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("start the notifier workflow: %w", err)
	}
	return nil
}

// ValidateWebhookURL checks a receiver's URL: http or https, with a host, at most 2,048
// characters.
func ValidateWebhookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(raw) > 2048 {
		return fmt.Errorf("webhook URL %q must be an http:// or https:// URL with a host", redactURL(raw))
	}
	return nil
}

// redactURL drops the user information and query of a URL for messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}
