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

// The broker's metrics, the same names for the same figures whichever broker they come from:
// the embedded broker of devstack and the tests exports them itself (internal/dev/broker), the
// production broker's (Mosquitto's) are read from its $SYS topics by the bridge with
// --broker-metrics (internal/brokersys).
const (
	// BrokerClientsConnected is a gauge of the clients connected (label kind: device and
	// service on the embedded broker; KindAll on Mosquitto, which does not tell them apart).
	BrokerClientsConnected = "otaflow_broker_clients_connected"
	// BrokerSessionsDisconnected is a gauge of the persistent sessions kept for clients that
	// are not connected.
	BrokerSessionsDisconnected = "otaflow_broker_sessions_disconnected"
	// BrokerMessagesQueued is a gauge of the QoS 1 and 2 messages held for sessions: sent and
	// not yet acknowledged, or queued for clients offline or reading slowly.
	BrokerMessagesQueued = "otaflow_broker_messages_queued"
	// BrokerMessagesDropped counts the messages the broker dropped rather than deliver.
	BrokerMessagesDropped = "otaflow_broker_messages_dropped_total"
	// BrokerMessagesReceived and BrokerMessagesSent count PUBLISH packets.
	BrokerMessagesReceived = "otaflow_broker_messages_received_total"
	BrokerMessagesSent     = "otaflow_broker_messages_sent_total"

	// LabelKind is the label of BrokerClientsConnected; KindDevice, KindService and KindAll
	// its values.
	LabelKind   = "kind"
	KindDevice  = "device"
	KindService = "service"
	KindAll     = "all"
)
