package metrics

// Metrics OTAflow's workflows emit through workflow.GetMetricsHandler, as the Temporal SDK's
// handler names them. The handler is replay-safe: a workflow replayed on another worker does
// not count again what it counted before (a workflow task that fails after counting, and
// runs again, may count twice: the counters are at least once, rarely more). Exported with
// the suffixes Prometheus expects: counters _total, the timer _seconds.
const (
	// UpgradesStarted counts device upgrades started (labels type, rollout).
	UpgradesStarted = "otaflow_upgrades_started"
	// UpgradesFinished counts device upgrades ended, by final state and the device's error
	// code (0 for none) (labels type, rollout, state, error_code).
	UpgradesFinished = "otaflow_upgrades_finished"
	// UpgradeAttempts counts the commands sent by the upgrades that ended (labels type,
	// rollout, state): attempts per upgrade = its rate over UpgradesFinished's.
	UpgradeAttempts = "otaflow_upgrade_attempts"
	// UpgradeDuration is the time from the start of a device upgrade to its success, a
	// histogram (labels type, rollout).
	UpgradeDuration = "otaflow_upgrade_duration"
	// RolloutsStarted counts rollouts started (labels rollout, type).
	RolloutsStarted = "otaflow_rollouts_started"
	// RolloutDevicesStarted counts the device upgrades a rollout started, its start rate
	// (label rollout).
	RolloutDevicesStarted = "otaflow_rollout_devices_started"
	// RolloutPauses counts pauses (labels rollout, cause: operator or threshold).
	RolloutPauses = "otaflow_rollout_pauses"
	// RolloutWavesFinished counts the waves rollouts finished (label rollout).
	RolloutWavesFinished = "otaflow_rollout_waves_finished"
	// RolloutsFinished counts rollouts ended, by final state: completed, aborted, canceled
	// or failed (labels rollout, state).
	RolloutsFinished = "otaflow_rollouts_finished"
)

// Label names. A rollout's name is a label; a device ID never is.
const (
	LabelType      = "type"
	LabelRollout   = "rollout"
	LabelState     = "state"
	LabelErrorCode = "error_code"
	LabelCause     = "cause"
)

// Causes of a rollout pause.
const (
	CauseOperator  = "operator"
	CauseThreshold = "threshold"
)
