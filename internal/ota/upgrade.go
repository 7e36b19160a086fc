package ota

import (
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/protocol"
)

// TaskQueue is the task queue the OTAflow worker polls.
const TaskQueue = "otaflow"

// DeviceUpgradeWorkflowName is the registered name of DeviceUpgradeWorkflow.
const DeviceUpgradeWorkflowName = "DeviceUpgrade"

// Signal and query names of DeviceUpgradeWorkflow.
const (
	// SignalProgress carries a ProgressSignal: a device's progress report.
	SignalProgress = "progress"
	// SignalStatus carries a StatusSignal: a device's status report.
	SignalStatus = "status"
	// QueryState returns an UpgradeStatus.
	QueryState = "state"
)

// deviceWorkflowPrefix starts the workflow ID of every device upgrade.
const deviceWorkflowPrefix = "ota-"

// DeviceWorkflowID is the workflow ID of a device's upgrade: at most one runs per device.
func DeviceWorkflowID(deviceID string) string { return deviceWorkflowPrefix + deviceID }

// DeviceFromWorkflowID returns the device of a device upgrade workflow ID.
func DeviceFromWorkflowID(workflowID string) (string, bool) {
	return strings.CutPrefix(workflowID, deviceWorkflowPrefix)
}

// Search attributes OTAflow sets on its workflows, for filtering in the Temporal Web UI
// (for example `OtaDevice = "sensor-1"` or `OtaState = "failed" AND OtaRollout = "fw-1.1"`).
var (
	// SearchDevice is the device ID of a device upgrade.
	SearchDevice = temporal.NewSearchAttributeKeyKeyword("OtaDevice")
	// SearchTargetVersion is the version an upgrade or rollout installs.
	SearchTargetVersion = temporal.NewSearchAttributeKeyKeyword("OtaTargetVersion")
	// SearchType is the upgrade type (app, firmware, os...).
	SearchType = temporal.NewSearchAttributeKeyKeyword("OtaType")
	// SearchState is the upgrade's (or rollout's) current state.
	SearchState = temporal.NewSearchAttributeKeyKeyword("OtaState")
	// SearchRollout is the rollout a device upgrade belongs to, or the rollout's own name.
	SearchRollout = temporal.NewSearchAttributeKeyKeyword("OtaRollout")
)

// SearchAttributeNames lists the custom search attributes with their types, as the Temporal
// server must have them registered (`temporal server start-dev --search-attribute NAME=Keyword`).
var SearchAttributeNames = []string{
	SearchDevice.GetName(), SearchTargetVersion.GetName(), SearchType.GetName(),
	SearchState.GetName(), SearchRollout.GetName(),
}

// Default timeouts and retry settings of a device upgrade.
const (
	DefaultStartTimeout   = 10 * time.Minute
	DefaultSilenceTimeout = 5 * time.Minute
	DefaultInstallTimeout = 15 * time.Minute
	DefaultDeadline       = 24 * time.Hour
	DefaultMaxAttempts    = 3
	DefaultRetryBackoff   = 30 * time.Second
	DefaultMaxBackoff     = 10 * time.Minute
)

// DefaultRetryCodes are the device error codes that start another attempt by default.
var DefaultRetryCodes = []int{protocol.CodeDownloadFailed, protocol.CodeMD5Mismatch, protocol.CodeInstallFailed, protocol.CodeOther}

// UpgradeRequest asks for one device to install one package. Zero timeouts and retry settings
// take the defaults (see WithDefaults).
type UpgradeRequest struct {
	DeviceID   string `json:"device_id"`
	Type       string `json:"type"`
	Version    string `json:"version"`
	URL        string `json:"url"`
	MD5        string `json:"md5"`
	Size       int64  `json:"size"`
	VersionKey string `json:"version_key,omitempty"`
	// Rollout names the rollout this upgrade belongs to, if any.
	Rollout string `json:"rollout,omitempty"`
	// RolloutRun is the first run ID of the rollout that started this upgrade (set by
	// rollouts since issue 10): it tells this rollout's upgrade records from those of other
	// rollouts of the same name (RolloutProgress.FirstRunID).
	RolloutRun string `json:"rollout_run,omitempty"`

	// StartTimeout bounds the wait for the device's first report after a command is sent.
	StartTimeout Duration `json:"start_timeout,omitempty"`
	// SilenceTimeout bounds the silence between progress reports while downloading.
	SilenceTimeout Duration `json:"silence_timeout,omitempty"`
	// InstallTimeout bounds the wait for the new version after progress 100.
	InstallTimeout Duration `json:"install_timeout,omitempty"`
	// Deadline bounds the whole upgrade, all attempts included.
	Deadline Duration `json:"deadline,omitempty"`
	// MaxAttempts is how many commands may be sent in all.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// RetryCodes lists the device error codes that start another attempt; nil means
	// DefaultRetryCodes, an empty non-nil list retries none.
	RetryCodes []int `json:"retry_codes"`
	// RetryTimeouts, when set, makes a timed-out attempt start another; nil means true.
	RetryTimeouts *bool `json:"retry_timeouts,omitempty"`
	// RetryBackoff is the wait before the second attempt; it doubles for each further one,
	// up to DefaultMaxBackoff.
	RetryBackoff Duration `json:"retry_backoff,omitempty"`

	// SHA256, Sig and KeyID are PROTOCOL.md 1.1's package integrity fields, carried in the
	// command when set: the package's SHA-256, and an Ed25519 signature of its publisher
	// (internal/pkgsig) with the ID of the key that made it.
	SHA256 string `json:"sha256,omitempty"`
	Sig    string `json:"sig,omitempty"`
	KeyID  string `json:"key_id,omitempty"`
	// Compat, when set, names the devices the package fits; a device that does not fit is
	// never sent a command.
	Compat *Compatibility `json:"compat,omitempty"`
	// Soak, when more than 0, keeps the upgrade open that long after success: a device that
	// reports another version meanwhile has reverted (StateReverted), a failure.
	Soak Duration `json:"soak,omitempty"`

	// Revision is the revision of DeviceUpgradeWorkflow's behaviour the request was made for
	// (UpgradeRevision when started by StartDeviceUpgrade or a rollout; 0 in requests made
	// before revisions existed). See UpgradeRevisionLean.
	Revision int `json:"revision,omitempty"`
}

// Revisions of what DeviceUpgradeWorkflow records. A run's request, in the first event of its
// history, carries the revision it was started for, so that the run keeps that behaviour on
// replay: what workflow.GetVersion does, without the marker and the TemporalChangeVersion
// upsert (two history events and a visibility write) GetVersion costs every new run.
const (
	// UpgradeRevisionOriginal records and upserts every state change: sent, downloading,
	// downloaded, pending, the final state.
	UpgradeRevisionOriginal = 0
	// UpgradeRevisionLean (issue 14) leaves downloading and downloaded out of the workflow's
	// records and search attribute: the bridge records them in the upgrade's row as it stores
	// the reports, the OtaState search attribute stays "sent" until the final state (or a
	// retry's pending), and the workflow's one timer stands at the current deadline, where
	// it reads the stored reports the bridge did not forward before it times anything out.
	UpgradeRevisionLean = 1
	// UpgradeRevision is the revision new requests are made for.
	UpgradeRevision = UpgradeRevisionLean
)

// PackageCheck is the pre-flight check of the request's package.
func (r UpgradeRequest) PackageCheck() PackageCheck {
	return PackageCheck{URL: r.URL, MD5: r.MD5, Size: r.Size, Type: r.Type, Version: r.Version,
		SHA256: r.SHA256, Sig: r.Sig, KeyID: r.KeyID}
}

// WithDefaults returns r with every zero setting replaced by its default.
func (r UpgradeRequest) WithDefaults() UpgradeRequest {
	if r.VersionKey == "" {
		r.VersionKey = protocol.VersionKey(r.Type)
	}
	setDefault(&r.StartTimeout, DefaultStartTimeout)
	setDefault(&r.SilenceTimeout, DefaultSilenceTimeout)
	setDefault(&r.InstallTimeout, DefaultInstallTimeout)
	setDefault(&r.Deadline, DefaultDeadline)
	setDefault(&r.RetryBackoff, DefaultRetryBackoff)
	if r.MaxAttempts == 0 {
		r.MaxAttempts = DefaultMaxAttempts
	}
	if r.RetryCodes == nil {
		r.RetryCodes = append([]int(nil), DefaultRetryCodes...)
	}
	if r.RetryTimeouts == nil {
		yes := true
		r.RetryTimeouts = &yes
	}
	return r
}

func setDefault(d *Duration, def time.Duration) {
	if *d == 0 {
		*d = Duration(def)
	}
}

// Validate checks a request (after WithDefaults) and says what is wrong with it.
func (r UpgradeRequest) Validate() error {
	if err := protocol.ValidateDeviceID(r.DeviceID); err != nil {
		return err
	}
	// The command a device gets must itself be valid.
	cmd := protocol.UpgradeCommand{ID: "check", Type: r.Type, Version: r.Version, URL: r.URL, MD5: r.MD5, Size: r.Size,
		SHA256: r.SHA256, Sig: r.Sig, KeyID: r.KeyID}
	if err := cmd.Validate(); err != nil {
		return err
	}
	if r.Compat != nil {
		if err := r.Compat.Validate(); err != nil {
			return err
		}
	}
	if r.Soak < 0 {
		return fmt.Errorf("soak must not be negative, not %s", r.Soak)
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"start timeout", r.StartTimeout}, {"silence timeout", r.SilenceTimeout},
		{"install timeout", r.InstallTimeout}, {"deadline", r.Deadline}, {"retry backoff", r.RetryBackoff}} {
		if d.v < 0 {
			return fmt.Errorf("%s must be positive, not %s", d.name, d.v)
		}
	}
	if r.MaxAttempts < 1 || r.MaxAttempts > 100 {
		return fmt.Errorf("max attempts must be 1 to 100, not %d", r.MaxAttempts)
	}
	for _, c := range r.RetryCodes {
		if c < protocol.CodeOther || c > protocol.CodeDownloadFailed {
			return fmt.Errorf("retry code %d is not a device error code (-1..-4)", c)
		}
	}
	if r.VersionKey == "" || len(r.VersionKey) > 64 {
		return fmt.Errorf("version key must be 1 to 64 characters")
	}
	if r.Revision < 0 || r.Revision > UpgradeRevision {
		return fmt.Errorf("request revision %d is unknown to this worker (it knows up to %d): upgrade the workers first", r.Revision, UpgradeRevision)
	}
	return nil
}

// ProgressSignal is the payload of SignalProgress.
type ProgressSignal struct {
	Progress   protocol.Progress `json:"progress"`
	ReceivedAt time.Time         `json:"received_at"`
}

// StatusSignal is the payload of SignalStatus.
type StatusSignal struct {
	Status     protocol.Status `json:"status"`
	ReceivedAt time.Time       `json:"received_at"`
}

// UpgradeStatus is what QueryState returns and what DeviceUpgradeWorkflow returns (also as
// the details of its failure).
type UpgradeStatus struct {
	DeviceID    string `json:"device_id"`
	Type        string `json:"type"`
	Version     string `json:"version"`
	Rollout     string `json:"rollout,omitempty"`
	State       State  `json:"state"`
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"max_attempts"`
	CommandID   string `json:"command_id,omitempty"`
	Progress    int    `json:"progress"`
	Desc        string `json:"desc,omitempty"`
	ErrorCode   int    `json:"error_code,omitempty"`
	// Reported is the version the device last reported under the version key.
	Reported   string     `json:"reported,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	SentAt     *time.Time `json:"sent_at,omitempty"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// SoakUntil is set while a succeeded upgrade soaks (UpgradeRequest.Soak): the workflow
	// stays open until then, and a report of another version meanwhile makes it reverted.
	SoakUntil *time.Time `json:"soak_until,omitempty"`
}

// Error types of a failed DeviceUpgradeWorkflow; the failure's details hold an UpgradeStatus.
const (
	ErrTypeUpgradeFailed   = "UpgradeFailed"
	ErrTypeUpgradeTimedOut = "UpgradeTimedOut"
	ErrTypeInvalidRequest  = "InvalidRequest"
	// ErrTypeUpgradeReverted: the device reported the target version, then another one within
	// the soak time (StateReverted).
	ErrTypeUpgradeReverted = "UpgradeReverted"
)
