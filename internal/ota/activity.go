package ota

import (
	"time"

	"github.com/otaflow/otaflow/internal/protocol"
)

// The types below are the inputs and results of OTAflow's activities, as they travel in
// workflow histories. PostgreSQL's row types (package store) do not: the activities convert.

// UpgradeRecord is what a device upgrade records of itself in PostgreSQL: the store's row of
// the run, as the workflow sees it.
type UpgradeRecord struct {
	RunID      string     `json:"run_id"`
	WorkflowID string     `json:"workflow_id"`
	DeviceID   string     `json:"device_id"`
	Rollout    string     `json:"rollout,omitempty"`
	RolloutRun string     `json:"rollout_run,omitempty"`
	Type       string     `json:"type"`
	Version    string     `json:"version"`
	URL        string     `json:"url"`
	MD5        string     `json:"md5"`
	Size       int64      `json:"size"`
	State      State      `json:"state"`
	Attempt    int        `json:"attempt"`
	CommandID  string     `json:"command_id,omitempty"`
	Progress   int        `json:"progress"`
	ErrorCode  int        `json:"error_code,omitempty"`
	ErrorDesc  string     `json:"error_desc,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// DeviceFilter selects a rollout's devices from the registry, one page at a time.
type DeviceFilter struct {
	// Prefix keeps the devices whose ID starts with it.
	Prefix string `json:"prefix,omitempty"`
	// Labels keeps the devices that carry every one of these labels, or, for a key that is
	// not a label, report this value under that status key.
	Labels map[string]string `json:"labels,omitempty"`
	// NotReportingKey and NotReportingValue keep the devices whose status does not show the
	// value under the key.
	NotReportingKey   string `json:"not_reporting_key,omitempty"`
	NotReportingValue string `json:"not_reporting_value,omitempty"`
	// List keeps the devices of the stored target list of this key; "" means no list.
	List string `json:"list,omitempty"`
	// After starts the page after this device ID; Limit is the page size.
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// AttemptKey names the upgrade attempt a progress report belongs to: its command ID, or,
// for a report without one, the type and version it installs.
type AttemptKey struct {
	CommandID string `json:"command_id"`
	Type      string `json:"type"`
	Version   string `json:"version"`
}

// Error types of non-retryable activity failures.
const (
	ErrTypeUnknownDevice  = "UnknownDevice"
	ErrTypeDeviceDisabled = "DeviceDisabled"
	ErrTypeInvalidCommand = "InvalidCommand"
	// ErrTypeIncompatible: the device does not fit the upgrade's Compatibility (its labels or
	// its current version), so no command is sent.
	ErrTypeIncompatible = "Incompatible"
)

// Error types of a package that fails one of PROTOCOL.md 1.1's checks on the worker, before
// any command is sent: one type per check (internal/pkgsig's), each failure non-retryable.
const (
	// ErrTypeMissingSignature: the package is not signed, and the worker requires signatures.
	ErrTypeMissingSignature = "MissingSignature"
	// ErrTypeUnknownKey: the signature's key_id names none of the worker's trusted keys.
	ErrTypeUnknownKey = "UnknownKey"
	// ErrTypeBadSignature: the signature does not verify under its key.
	ErrTypeBadSignature = "BadSignature"
	// ErrTypeSHA256Mismatch: the package downloaded does not have the sha256 announced.
	ErrTypeSHA256Mismatch = "SHA256Mismatch"
)

// SendCommandInput is what SendCommand needs: the upgrade record to write as sent and the
// command to publish.
type SendCommandInput struct {
	Upgrade UpgradeRecord           `json:"upgrade"`
	Command protocol.UpgradeCommand `json:"command"`
	// VersionKey is the status key that holds the upgraded version.
	VersionKey string `json:"version_key"`
	// CheckSkip asks to skip the upgrade, sending nothing, when the device already reports the
	// target version.
	CheckSkip bool `json:"check_skip"`
	// Compat, when set, is checked against the device's labels and current version before
	// the command is sent: a device that does not fit fails with ErrTypeIncompatible.
	Compat *Compatibility `json:"compat,omitempty"`
}

// CancelCommandInput names the command attempt whose cancel message (PROTOCOL.md 1.1) is to
// be published to its device.
type CancelCommandInput struct {
	DeviceID  string `json:"device_id"`
	CommandID string `json:"command_id"`
}

// SendCommandResult says what SendCommand did.
type SendCommandResult struct {
	// Skipped is set when the device already runs the target version; nothing was sent.
	Skipped bool `json:"skipped"`
	// Reported is the version the device last reported under the version key.
	Reported string `json:"reported"`
}

// LastReportInput names a device and the upgrade attempt whose reports it asks about.
type LastReportInput struct {
	DeviceID string     `json:"device_id"`
	Attempt  AttemptKey `json:"attempt"`
}

// LastReport is the latest stored progress report of an attempt, if any.
type LastReport struct {
	Found      bool      `json:"found"`
	Progress   int       `json:"progress,omitempty"`
	Desc       string    `json:"desc,omitempty"`
	ReceivedAt time.Time `json:"received_at,omitempty"`
}

// RecordStateInput is one state change of an upgrade, at the workflow's time.
type RecordStateInput struct {
	Upgrade UpgradeRecord `json:"upgrade"`
	At      time.Time     `json:"at"`
	Detail  string        `json:"detail,omitempty"`
}

// Error types of a failed pre-flight check of a rollout's package (CheckPackage); both are
// permanent.
const (
	// ErrTypePackageMismatch: the package does not match the md5 or size the rollout
	// announces, or its server refuses it (HTTP 4xx).
	ErrTypePackageMismatch = "PackageMismatch"
	// ErrTypeBadPackageURL: the package URL cannot be requested at all.
	ErrTypeBadPackageURL = "BadPackageURL"
)

// SnapshotInput names the list to store a rollout's targets under and selects them.
type SnapshotInput struct {
	Rollout string       `json:"rollout"`
	Key     string       `json:"key"`
	Filter  DeviceFilter `json:"filter"`
}

// PackageCheck is a package to check before a rollout, or a single upgrade of a signed
// package, sends it to any device: downloaded once, it must have the size, md5 and (when
// given) sha256 announced, and its signature must satisfy the worker's policy.
type PackageCheck struct {
	URL  string `json:"url"`
	MD5  string `json:"md5"`
	Size int64  `json:"size"`
	// Type and Version, with Size and SHA256, are what the signature covers.
	Type    string `json:"type,omitempty"`
	Version string `json:"version,omitempty"`
	SHA256  string `json:"sha256,omitempty"`
	Sig     string `json:"sig,omitempty"`
	KeyID   string `json:"key_id,omitempty"`
}

// ErrTypeNoTemporalClient is the failure of AwaitWorkflows on a worker whose Activities have
// no Temporal client.
const ErrTypeNoTemporalClient = "NoTemporalClient"

// Execution names one workflow execution.
type Execution struct {
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
}

// AwaitWorkflowsInput lists the executions to wait for. Once one has ended, AwaitWorkflows
// waits at most Gather more for others before it returns, so that executions ending together
// come back together.
type AwaitWorkflowsInput struct {
	Executions []Execution `json:"executions"`
	Gather     Duration    `json:"gather"`
}

// Outcome is how one device upgrade execution ended: its result, or the type of its failure.
type Outcome struct {
	WorkflowID string `json:"workflow_id"`
	// Result is the upgrade's final status when it completed, or when it failed with the
	// status in its failure's details.
	Result *UpgradeStatus `json:"result,omitempty"`
	// Failed is set when it did not complete; ErrorType is then the application error's type,
	// if any, Canceled tells a canceled execution, and Error says what happened.
	Failed    bool   `json:"failed,omitempty"`
	ErrorType string `json:"error_type,omitempty"`
	Canceled  bool   `json:"canceled,omitempty"`
	Error     string `json:"error,omitempty"`
}
