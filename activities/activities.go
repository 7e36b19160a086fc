// Package activities holds the side effects of OTAflow's workflows: publishing upgrade commands
// to devices over MQTT and recording upgrade state in PostgreSQL. Workflows call them through a
// nil *Activities, as the worker registers one instance with its dependencies.
package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// Error types of non-retryable activity failures.
const (
	ErrTypeUnknownDevice  = "UnknownDevice"
	ErrTypeDeviceDisabled = "DeviceDisabled"
	ErrTypeInvalidCommand = "InvalidCommand"
)

// Publisher sends a message to the MQTT broker and returns once the broker confirmed it.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Store is the part of the PostgreSQL store the activities use.
type Store interface {
	GetDevice(ctx context.Context, id string) (store.Device, error)
	RecordUpgrade(ctx context.Context, u store.Upgrade, at time.Time, detail string) error
	GetUpgrade(ctx context.Context, runID string) (store.Upgrade, error)
	ListDevices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error)
	CountDevices(ctx context.Context, f store.DeviceFilter) (int, error)
	SnapshotTargets(ctx context.Context, rollout, key string, f store.DeviceFilter) (int, error)
	DeleteTargetLists(ctx context.Context, keys []string) error
	LastProgress(ctx context.Context, device string, attempt store.AttemptKey) (store.ProgressEvent, error)
}

// Activities are OTAflow's activities, with their dependencies.
type Activities struct {
	Publisher Publisher
	Store     Store
	// HTTPClient fetches packages for the pre-flight check; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Temporal reads the results of device upgrades for AwaitWorkflows.
	Temporal WorkflowResults
}

// SendCommandInput is what SendCommand needs: the upgrade record to write as sent and the
// command to publish.
type SendCommandInput struct {
	Upgrade store.Upgrade           `json:"upgrade"`
	Command protocol.UpgradeCommand `json:"command"`
	// VersionKey is the status key that holds the upgraded version.
	VersionKey string `json:"version_key"`
	// CheckSkip asks to skip the upgrade, sending nothing, when the device already reports the
	// target version.
	CheckSkip bool `json:"check_skip"`
}

// SendCommandResult says what SendCommand did.
type SendCommandResult struct {
	// Skipped is set when the device already runs the target version; nothing was sent.
	Skipped bool `json:"skipped"`
	// Reported is the version the device last reported under the version key.
	Reported string `json:"reported"`
}

// SendCommand records the upgrade as sent and publishes its command to the device (QoS 1,
// confirmed by the broker); or, with CheckSkip, records it as skipped when the device already
// reports the target version and no command of this run went out before (a retried send must
// not call the device's fresh report of the new version a skip). An unknown or disabled device
// is a permanent failure. Publishing twice is harmless: devices ignore a command ID they have.
func (a *Activities) SendCommand(ctx context.Context, in SendCommandInput) (SendCommandResult, error) {
	dev, err := a.Store.GetDevice(ctx, in.Upgrade.DeviceID)
	if errors.Is(err, store.ErrNotFound) {
		return SendCommandResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("unknown device %s: register it first (starter devices add --device %s)", in.Upgrade.DeviceID, in.Upgrade.DeviceID),
			ErrTypeUnknownDevice, err)
	}
	if err != nil {
		return SendCommandResult{}, fmt.Errorf("read device %s: %w", in.Upgrade.DeviceID, err)
	}
	if dev.Disabled {
		return SendCommandResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("device %s is disabled", dev.ID), ErrTypeDeviceDisabled, nil)
	}
	if err := in.Command.Validate(); err != nil {
		return SendCommandResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidCommand, err)
	}
	res := SendCommandResult{Reported: dev.Reported[in.VersionKey]}
	if in.CheckSkip && res.Reported == in.Command.Version {
		prev, err := a.Store.GetUpgrade(ctx, in.Upgrade.RunID)
		switch {
		case errors.Is(err, store.ErrNotFound) || (err == nil && prev.CommandID != in.Command.ID):
			u := in.Upgrade
			u.State = protocol.StateSkipped
			if err := a.Store.RecordUpgrade(ctx, u, in.Command.IssuedAt, "device already reports "+in.VersionKey+"="+res.Reported); err != nil {
				return SendCommandResult{}, err
			}
			res.Skipped = true
			return res, nil
		case err != nil:
			return SendCommandResult{}, fmt.Errorf("read upgrade %s: %w", in.Upgrade.RunID, err)
		}
	}
	payload, err := json.Marshal(in.Command)
	if err != nil {
		return SendCommandResult{}, temporal.NewNonRetryableApplicationError("encode command", ErrTypeInvalidCommand, err)
	}
	// Recorded before it is published: a retry then knows this command may have gone out.
	u := in.Upgrade
	u.State = protocol.StateSent
	u.CommandID = in.Command.ID
	if err := a.Store.RecordUpgrade(ctx, u, in.Command.IssuedAt, "command "+in.Command.ID+" sent"); err != nil {
		return SendCommandResult{}, err
	}
	if err := a.Publisher.Publish(ctx, protocol.CommandTopic(dev.ID), payload); err != nil {
		return SendCommandResult{}, fmt.Errorf("publish command %s to %s: %w", in.Command.ID, dev.ID, err)
	}
	return res, nil
}

// LastReportInput names a device and the upgrade attempt whose reports it asks about.
type LastReportInput struct {
	DeviceID string           `json:"device_id"`
	Attempt  store.AttemptKey `json:"attempt"`
}

// LastReport is the latest stored progress report of an attempt, if any.
type LastReport struct {
	Found      bool      `json:"found"`
	Progress   int       `json:"progress,omitempty"`
	Desc       string    `json:"desc,omitempty"`
	ReceivedAt time.Time `json:"received_at,omitempty"`
}

// LastProgress returns the latest progress report PostgreSQL has of an upgrade attempt. The
// bridge stores every report but forwards only some to the workflow, so a workflow whose
// silence timeout fires asks here whether the device is in fact still reporting.
func (a *Activities) LastProgress(ctx context.Context, in LastReportInput) (LastReport, error) {
	e, err := a.Store.LastProgress(ctx, in.DeviceID, in.Attempt)
	if errors.Is(err, store.ErrNotFound) {
		return LastReport{}, nil
	}
	if err != nil {
		return LastReport{}, err
	}
	return LastReport{Found: true, Progress: e.Progress, Desc: e.Desc, ReceivedAt: e.ReceivedAt}, nil
}

// RecordStateInput is one state change of an upgrade, at the workflow's time.
type RecordStateInput struct {
	Upgrade store.Upgrade `json:"upgrade"`
	At      time.Time     `json:"at"`
	Detail  string        `json:"detail,omitempty"`
}

// RecordState records a state change of an upgrade in PostgreSQL. It is idempotent.
func (a *Activities) RecordState(ctx context.Context, in RecordStateInput) error {
	return a.Store.RecordUpgrade(ctx, in.Upgrade, in.At, in.Detail)
}
