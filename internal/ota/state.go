package ota

// State is the cloud-side state of one device upgrade.
type State string

// Upgrade states, as PROTOCOL.md names them.
const (
	StatePending     State = "pending"
	StateSent        State = "sent"
	StateDownloading State = "downloading"
	StateDownloaded  State = "downloaded"
	StateSucceeded   State = "succeeded"
	StateFailed      State = "failed"
	StateTimedOut    State = "timed_out"
	StateCanceled    State = "canceled"
	StateSkipped     State = "skipped"
	// StateReverted: the device reported the target version, then, within the upgrade's
	// soak time, another one: the install did not hold. A failure.
	StateReverted State = "reverted"
)

// AllStates lists every state in lifecycle order, for reports that count by state.
var AllStates = []State{StatePending, StateSent, StateDownloading, StateDownloaded,
	StateSucceeded, StateSkipped, StateFailed, StateTimedOut, StateCanceled, StateReverted}

// Final reports whether no further change can happen in this state.
func (s State) Final() bool {
	switch s {
	case StateSucceeded, StateFailed, StateTimedOut, StateCanceled, StateSkipped, StateReverted:
		return true
	}
	return false
}

// Successful reports whether the device ends on the target version in this state.
func (s State) Successful() bool { return s == StateSucceeded || s == StateSkipped }
