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

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
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
	ListDevices(ctx context.Context, f ota.DeviceFilter) ([]store.Device, error)
	CountDevices(ctx context.Context, f ota.DeviceFilter) (int, error)
	SnapshotTargets(ctx context.Context, rollout, key string, f ota.DeviceFilter) (int, error)
	SelectTargets(ctx context.Context, sel ota.Selector, how store.Selection) (ota.TargetSelection, error)
	FindLate(ctx context.Context, q store.LateSearch) (ota.LateTargets, error)
	DeleteTargetLists(ctx context.Context, keys []string) error
	LastProgress(ctx context.Context, device string, attempt ota.AttemptKey) (store.ProgressEvent, error)
}

// Activities are OTAflow's activities, with their dependencies.
type Activities struct {
	Publisher Publisher
	Store     Store
	// HTTPClient fetches packages for the pre-flight check; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Temporal reads the results of device upgrades for AwaitWorkflows.
	Temporal WorkflowResults
	// Packages is the worker's package policy (PROTOCOL.md 1.1): the trusted public keys that
	// verify a package's signature before any command for it is sent, and whether a signature
	// is required. Without keys, the worker leaves signatures to the devices.
	Packages pkgsig.Policy
	// LatePoll is how often FindLateTargets looks at the registry's changes while it
	// waits; 0 means DefaultLatePoll.
	LatePoll time.Duration
	// Notify, when set, stores and delivers event notifications (webhooks).
	Notify *Notifications
}

// SendCommand records the upgrade as sent and publishes its command to the device (QoS 1,
// confirmed by the broker); or, with CheckSkip, records it as skipped when the device already
// reports the target version and no command of this run went out before (a retried send must
// not call the device's fresh report of the new version a skip). An invalid command, a
// package whose signature fails the worker's policy, an unknown or disabled device and a
// device that does not fit in.Compat are permanent failures, each of its own type, and
// nothing is sent. Publishing twice is harmless: devices ignore a command ID they have.
func (a *Activities) SendCommand(ctx context.Context, in ota.SendCommandInput) (ota.SendCommandResult, error) {
	if err := in.Command.Validate(); err != nil {
		return ota.SendCommandResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ota.ErrTypeInvalidCommand, err)
	}
	if err := a.checkSignature(pkgsig.PackageOf(in.Command), in.Command.Sig, in.Command.KeyID); err != nil {
		return ota.SendCommandResult{}, err
	}
	dev, err := a.Store.GetDevice(ctx, in.Upgrade.DeviceID)
	if errors.Is(err, store.ErrNotFound) {
		return ota.SendCommandResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("unknown device %s: register it first (starter devices add --device %s)", in.Upgrade.DeviceID, in.Upgrade.DeviceID),
			ota.ErrTypeUnknownDevice, err)
	}
	if err != nil {
		return ota.SendCommandResult{}, fmt.Errorf("read device %s: %w", in.Upgrade.DeviceID, err)
	}
	if dev.Disabled {
		return ota.SendCommandResult{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("device %s is disabled", dev.ID), ota.ErrTypeDeviceDisabled, nil)
	}
	res := ota.SendCommandResult{Reported: dev.Reported[in.VersionKey]}
	if in.CheckSkip && res.Reported == in.Command.Version {
		prev, err := a.Store.GetUpgrade(ctx, in.Upgrade.RunID)
		switch {
		case errors.Is(err, store.ErrNotFound) || (err == nil && prev.CommandID != in.Command.ID):
			u := in.Upgrade
			u.State = ota.StateSkipped
			if err := a.recordUpgrade(ctx, u, in.Command.IssuedAt, "device already reports "+in.VersionKey+"="+res.Reported); err != nil {
				return ota.SendCommandResult{}, err
			}
			res.Skipped = true
			return res, nil
		case err != nil:
			return ota.SendCommandResult{}, fmt.Errorf("read upgrade %s: %w", in.Upgrade.RunID, err)
		}
	}
	if in.Compat != nil {
		if fits, why := in.Compat.Fits(dev.Labels, res.Reported); !fits {
			return ota.SendCommandResult{}, temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("device %s does not fit the package: %s", dev.ID, why), ota.ErrTypeIncompatible, nil)
		}
	}
	payload, err := json.Marshal(in.Command)
	if err != nil {
		return ota.SendCommandResult{}, temporal.NewNonRetryableApplicationError("encode command", ota.ErrTypeInvalidCommand, err)
	}
	// Recorded before it is published: a retry then knows this command may have gone out.
	u := in.Upgrade
	u.State = ota.StateSent
	u.CommandID = in.Command.ID
	if err := a.Store.RecordUpgrade(ctx, store.Upgrade(u), in.Command.IssuedAt, "command "+in.Command.ID+" sent"); err != nil {
		return ota.SendCommandResult{}, err
	}
	if err := a.Publisher.Publish(ctx, protocol.CommandTopic(dev.ID), payload); err != nil {
		return ota.SendCommandResult{}, fmt.Errorf("publish command %s to %s: %w", in.Command.ID, dev.ID, err)
	}
	return res, nil
}

// SendCancel publishes PROTOCOL.md 1.1's cancel message for a command attempt to its device
// (QoS 1, confirmed by the broker): a device working on it stops before it installs and
// reports -4 "canceled"; a device that has begun installing, or never got the command, or
// knows no cancel topic (protocol 1), ignores it. Publishing twice is harmless.
func (a *Activities) SendCancel(ctx context.Context, in ota.CancelCommandInput) error {
	msg := protocol.CancelMessage{ID: in.CommandID}
	if err := msg.Validate(); err != nil {
		return temporal.NewNonRetryableApplicationError("cancel: "+err.Error(), ota.ErrTypeInvalidCommand, err)
	}
	if err := protocol.ValidateDeviceID(in.DeviceID); err != nil {
		return temporal.NewNonRetryableApplicationError("cancel: "+err.Error(), ota.ErrTypeInvalidCommand, err)
	}
	payload, err := json.Marshal(msg)
	if err != nil {
		return temporal.NewNonRetryableApplicationError("encode cancel", ota.ErrTypeInvalidCommand, err)
	}
	if err := a.Publisher.Publish(ctx, protocol.CancelTopic(in.DeviceID), payload); err != nil {
		return fmt.Errorf("publish cancel of %s to %s: %w", in.CommandID, in.DeviceID, err)
	}
	return nil
}

// LastProgress returns the latest progress report PostgreSQL has of an upgrade attempt. The
// bridge stores every report but forwards only some to the workflow, so a workflow whose
// silence timeout fires asks here whether the device is in fact still reporting.
func (a *Activities) LastProgress(ctx context.Context, in ota.LastReportInput) (ota.LastReport, error) {
	e, err := a.Store.LastProgress(ctx, in.DeviceID, in.Attempt)
	if errors.Is(err, store.ErrNotFound) {
		return ota.LastReport{}, nil
	}
	if err != nil {
		return ota.LastReport{}, err
	}
	return ota.LastReport{Found: true, Progress: e.Progress, Desc: e.Desc, ReceivedAt: e.ReceivedAt}, nil
}

// RecordState records a state change of an upgrade in PostgreSQL. It is idempotent.
func (a *Activities) RecordState(ctx context.Context, in ota.RecordStateInput) error {
	return a.recordUpgrade(ctx, in.Upgrade, in.At, in.Detail)
}
