package workflows

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/stretchr/testify/mock"
)

// fakeDevices is an in-memory activities.Store and activities.Publisher for workflow unit tests.
type fakeDevices struct {
	mu       sync.Mutex
	devices  map[string]store.Device
	commands []protocol.UpgradeCommand
	records  []store.Upgrade
	// lists are the stored target lists by name.
	lists map[string]map[string]bool
	// progress are the progress reports the bridge stored, oldest first.
	progress []store.ProgressEvent
	// cancels are the command IDs of the cancel messages published, in order.
	cancels []string
	// quarantined are devices in quarantine; changes the IDs of the devices changed, in
	// order (FindLate's cursor is an index into it); taken the devices a rollout took on.
	quarantined map[string]bool
	changes     []string
	taken       map[string]bool
	leftOut     map[string]bool // found incompatible
	// finds counts FindLate's calls.
	finds int
}

// change registers or updates a device, as a status report or registration would.
func (f *fakeDevices) change(d store.Device) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices[d.ID] = d
	f.changes = append(f.changes, d.ID)
}

// candidate is how a selector sees device d.
func (f *fakeDevices) candidate(d store.Device) ota.Candidate {
	return ota.Candidate{ID: d.ID, Disabled: d.Disabled, Seen: len(d.Reported) > 0, Labels: d.Labels,
		Reported: d.Reported, Quarantined: f.quarantined[d.ID]}
}

func (f *fakeDevices) SelectTargets(ctx context.Context, sel ota.Selector, how store.Selection) (ota.TargetSelection, error) {
	devices, err := f.ListDevices(ctx, sel.Filter)
	if err != nil {
		return ota.TargetSelection{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := ota.TargetSelection{Changes: ota.ChangeCursor{XID: fmt.Sprint(len(f.changes))}}
	if f.lists == nil {
		f.lists = map[string]map[string]bool{}
	}
	f.lists[how.Key] = map[string]bool{}
	for _, d := range devices {
		reason := sel.Judge(f.candidate(d))
		out.LeftOut.Add(reason)
		if reason == "" {
			out.Targets++
			f.lists[how.Key][d.ID] = true
		}
	}
	return out, nil
}

func (f *fakeDevices) FindLate(_ context.Context, q store.LateSearch) (ota.LateTargets, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.finds++
	var from int
	fmt.Sscan(q.Cursor.XID, &from)
	out := ota.LateTargets{}
	i := from
	for ; i < len(f.changes) && len(out.IDs) < q.Limit; i++ {
		d := f.devices[f.changes[i]]
		if !strings.HasPrefix(d.ID, q.Selector.Filter.Prefix) || f.taken[d.ID] {
			continue
		}
		if f.leftOut == nil {
			f.leftOut = map[string]bool{}
		}
		switch q.Selector.Judge(f.candidate(d)) {
		case "":
			out.IDs = append(out.IDs, d.ID)
			delete(f.leftOut, d.ID)
		case ota.LeftIncompatible:
			f.leftOut[d.ID] = true
		}
	}
	out.LeftOut.Incompatible = len(f.leftOut)
	out.Cursor = ota.ChangeCursor{XID: fmt.Sprint(i)}
	return out, nil
}

func newFakeDevices(reported protocol.Status) *fakeDevices {
	return &fakeDevices{devices: map[string]store.Device{"dev-1": {ID: "dev-1", Reported: reported}}}
}

func (f *fakeDevices) GetDevice(_ context.Context, id string) (store.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[id]
	if !ok {
		return store.Device{}, fmt.Errorf("device %s: %w", id, store.ErrNotFound)
	}
	return d, nil
}

func (f *fakeDevices) RecordUpgrade(_ context.Context, u store.Upgrade, _ time.Time, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records = append(f.records, u)
	return nil
}

func (f *fakeDevices) GetUpgrade(_ context.Context, runID string) (store.Upgrade, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.records) - 1; i >= 0; i-- {
		if f.records[i].RunID == runID {
			return f.records[i], nil
		}
	}
	return store.Upgrade{}, fmt.Errorf("upgrade %s: %w", runID, store.ErrNotFound)
}

func (f *fakeDevices) ListDevices(_ context.Context, filter ota.DeviceFilter) ([]store.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.devices))
	for id := range f.devices {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []store.Device
	for _, id := range ids {
		d := f.devices[id]
		if id <= filter.After || !strings.HasPrefix(id, filter.Prefix) {
			continue
		}
		if filter.List != "" && !f.lists[filter.List][id] {
			continue
		}
		if filter.NotReportingKey != "" && d.Reported[filter.NotReportingKey] == filter.NotReportingValue {
			continue
		}
		out = append(out, d)
		if filter.Limit > 0 && len(out) == filter.Limit {
			break
		}
	}
	return out, nil
}

func (f *fakeDevices) CountDevices(ctx context.Context, filter ota.DeviceFilter) (int, error) {
	filter.After, filter.Limit = "", 0
	d, err := f.ListDevices(ctx, filter)
	return len(d), err
}

func (f *fakeDevices) SnapshotTargets(ctx context.Context, _, key string, filter ota.DeviceFilter) (int, error) {
	filter.After, filter.Limit = "", 0
	devices, err := f.ListDevices(ctx, filter)
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lists == nil {
		f.lists = map[string]map[string]bool{}
	}
	if f.lists[key] == nil {
		f.lists[key] = map[string]bool{}
	}
	for _, d := range devices {
		if !d.Disabled {
			f.lists[key][d.ID] = true
		}
	}
	return len(f.lists[key]), nil
}

func (f *fakeDevices) DeleteTargetLists(_ context.Context, keys []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		delete(f.lists, k)
	}
	return nil
}

func (f *fakeDevices) LastProgress(_ context.Context, device string, a ota.AttemptKey) (store.ProgressEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.progress) - 1; i >= 0; i-- {
		e := f.progress[i]
		if e.DeviceID == device && e.Progress > 0 && (e.CommandID == a.CommandID || (e.CommandID == "" && e.Type == a.Type && e.Version == a.Version)) {
			return e, nil
		}
	}
	return store.ProgressEvent{}, fmt.Errorf("progress of %s: %w", device, store.ErrNotFound)
}

func (f *fakeDevices) Publish(_ context.Context, topic string, payload []byte) error {
	if _, kind, err := protocol.ParseTopic(topic); err == nil && kind == protocol.KindCancel {
		c, err := protocol.ParseCancel(payload)
		if err != nil {
			return err
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.cancels = append(f.cancels, c.ID)
		return nil
	}
	cmd, err := protocol.ParseCommand(payload)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commands = append(f.commands, cmd)
	return nil
}

func (f *fakeDevices) lastCommand() protocol.UpgradeCommand {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.commands) == 0 {
		return protocol.UpgradeCommand{}
	}
	return f.commands[len(f.commands)-1]
}

func (f *fakeDevices) states() []ota.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ota.State
	for _, r := range f.records {
		out = append(out, r.State)
	}
	return out
}

func testRequest() ota.UpgradeRequest {
	return ota.UpgradeRequest{DeviceID: "dev-1", Type: "firmware", Version: "1.1",
		URL: "http://files.local/fw-1.1.bin", MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1024}
}

// step is one device report, sent at a virtual time after the start.
type step struct {
	at       time.Duration
	progress int    // 0: no progress report
	status   string // "": no status report; otherwise firmware_ver
	staleID  bool   // the progress carries an old command ID
	version  string // progress version, default the target
	cancel   bool
	// storedOnly: the bridge stored the progress report but did not forward it (it forwards
	// at most one a ProgressInterval).
	storedOnly bool
	// rawStatus is a status report sent as it is.
	rawStatus protocol.Status
}

// every returns progress steps every interval from from (inclusive) to to (exclusive).
func every(from, to, interval time.Duration, progress int, storedOnly bool) []step {
	var steps []step
	for at := from; at < to; at += interval {
		steps = append(steps, step{at: at, progress: progress, storedOnly: storedOnly})
	}
	return steps
}

type harness struct {
	testsuite.WorkflowTestSuite
	env *testsuite.TestWorkflowEnvironment
	dev *fakeDevices
}

// newHarness runs the workflow with the activities on fake devices; the worker's package
// policy is policy, if given.
func newHarness(t *testing.T, reported protocol.Status, policy ...pkgsig.Policy) *harness {
	h := &harness{dev: newFakeDevices(reported)}
	h.env = h.NewTestWorkflowEnvironment()
	a := &activities.Activities{Publisher: h.dev, Store: h.dev}
	if len(policy) > 0 {
		a.Packages = policy[0]
	}
	h.env.RegisterActivity(a)
	return h
}

func (h *harness) schedule(steps []step) {
	for _, s := range steps {
		h.env.RegisterDelayedCallback(func() {
			switch {
			case s.cancel:
				h.env.CancelWorkflow()
			case s.progress != 0:
				cmd := h.dev.lastCommand()
				p := protocol.Progress{ID: cmd.ID, Type: "firmware", Version: "1.1", Progress: s.progress, Desc: "downloading"}
				if s.staleID {
					p.ID = "old-attempt"
				}
				if s.version != "" {
					p.Version = s.version
				}
				h.dev.mu.Lock()
				h.dev.progress = append(h.dev.progress, store.ProgressEvent{DeviceID: "dev-1", CommandID: p.ID, Type: p.Type,
					Version: p.Version, Progress: p.Progress, Desc: p.Desc, ReceivedAt: h.env.Now()})
				h.dev.mu.Unlock()
				if !s.storedOnly {
					h.env.SignalWorkflow(ota.SignalProgress, ota.ProgressSignal{Progress: p})
				}
			case s.rawStatus != nil:
				h.env.SignalWorkflow(ota.SignalStatus, ota.StatusSignal{Status: s.rawStatus})
			case s.status != "":
				h.env.SignalWorkflow(ota.SignalStatus, ota.StatusSignal{Status: protocol.Status{"firmware_ver": s.status}})
			}
		}, s.at)
	}
}

func (h *harness) run(t *testing.T, req ota.UpgradeRequest) (ota.UpgradeStatus, error) {
	t.Helper()
	h.env.ExecuteWorkflow(DeviceUpgradeWorkflow, req)
	if !h.env.IsWorkflowCompleted() {
		t.Fatal("workflow did not complete")
	}
	var st ota.UpgradeStatus
	err := h.env.GetWorkflowResult(&st)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.HasDetails() {
		if derr := appErr.Details(&st); derr != nil {
			t.Fatalf("decode failure details: %v", derr)
		}
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) && canceled.HasDetails() {
		if derr := canceled.Details(&st); derr != nil {
			t.Fatalf("decode cancel details: %v", derr)
		}
	}
	return st, err
}

func TestDeviceUpgradeWorkflow(t *testing.T) {
	noRetry := []int{}
	tests := []struct {
		name         string
		reported     string
		req          func(*ota.UpgradeRequest)
		steps        []step
		wantState    ota.State
		wantCode     int
		wantAttempts int
		wantCommands int
		wantErrType  string
		// wantEnd bounds the virtual time at which the workflow must have ended.
		wantEndAfter, wantEndBefore time.Duration
		// leanOnly: the case runs at ota.UpgradeRevisionLean only (every other runs at both
		// revisions, with the same outcome).
		leanOnly bool
	}{
		{
			name: "happy path", reported: "1.0",
			steps: []step{{at: time.Second, progress: 10}, {at: 5 * time.Second, progress: 100},
				{at: 40 * time.Second, status: "1.1"}},
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
			wantEndAfter: 40 * time.Second, wantEndBefore: 41 * time.Second,
		},
		{
			name: "success without any progress", reported: "1.0",
			steps:     []step{{at: 3 * time.Minute, status: "1.1"}},
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
		},
		{
			name: "already on target is skipped", reported: "1.1",
			wantState: ota.StateSkipped, wantAttempts: 1, wantCommands: 0,
		},
		{
			name: "progress 100 alone never succeeds", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			steps:     []step{{at: time.Second, progress: 100}},
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			wantEndAfter: ota.DefaultInstallTimeout, wantEndBefore: ota.DefaultInstallTimeout + 2*time.Second,
		},
		{
			name: "status with an old version after the download is an install failure", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.RetryCodes = noRetry },
			steps:     []step{{at: time.Second, progress: 100}, {at: time.Minute, status: "1.0"}},
			wantState: ota.StateFailed, wantCode: protocol.CodeInstallFailed, wantAttempts: 1, wantCommands: 1,
			wantErrType: ota.ErrTypeUpgradeFailed,
		},
		{
			name: "status with an old version before the download is ignored", reported: "1.0",
			steps: []step{{at: time.Second, status: "1.0"}, {at: 2 * time.Second, progress: 50},
				{at: 3 * time.Second, progress: 100}, {at: 4 * time.Second, status: "1.1"}},
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
		},
		{
			name: "stale progress is ignored", reported: "1.0",
			req: func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			// Only stale reports: the attempt must time out at the start timeout.
			steps: []step{{at: time.Second, progress: 100, staleID: true}, {at: 2 * time.Second, progress: -3, staleID: true},
				{at: 3 * time.Second, progress: 50, version: "0.9"}},
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			wantEndAfter: ota.DefaultStartTimeout, wantEndBefore: ota.DefaultStartTimeout + time.Second,
		},
		{
			name: "no first report: start timeout, retried, then timed out", reported: "1.0",
			wantState: ota.StateTimedOut, wantAttempts: 3, wantCommands: 3, wantErrType: ota.ErrTypeUpgradeTimedOut,
			// 3 start timeouts + backoffs of 30 s and 60 s.
			wantEndAfter: 3*ota.DefaultStartTimeout + 90*time.Second, wantEndBefore: 3*ota.DefaultStartTimeout + 91*time.Second,
		},
		{
			name: "silence while downloading times out", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			steps:     []step{{at: time.Second, progress: 10}, {at: 2 * time.Minute, progress: 20}},
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			wantEndAfter: 2*time.Minute + ota.DefaultSilenceTimeout, wantEndBefore: 2*time.Minute + ota.DefaultSilenceTimeout + time.Second,
		},
		{
			name: "error on first attempt, success on second", reported: "1.0",
			steps: []step{{at: time.Second, progress: -1}, {at: 40 * time.Second, progress: 100},
				{at: 50 * time.Second, status: "1.1"}},
			wantState: ota.StateSucceeded, wantAttempts: 2, wantCommands: 2,
		},
		{
			name: "codes not configured to retry fail at once", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.RetryCodes = []int{protocol.CodeDownloadFailed} },
			steps:     []step{{at: time.Second, progress: -2}},
			wantState: ota.StateFailed, wantCode: protocol.CodeMD5Mismatch, wantAttempts: 1, wantCommands: 1,
			wantErrType: ota.ErrTypeUpgradeFailed,
		},
		{
			name: "cancel ends canceled", reported: "1.0",
			steps:     []step{{at: time.Second, progress: 10}, {at: 10 * time.Second, cancel: true}},
			wantState: ota.StateCanceled, wantAttempts: 1, wantCommands: 1,
		},
		{
			// Issue 15, defect 7.
			name: "a status without the version key after the download says nothing", reported: "1.0",
			req: func(r *ota.UpgradeRequest) { r.RetryCodes = noRetry },
			steps: []step{{at: time.Second, progress: 100}, {at: 10 * time.Second, rawStatus: protocol.Status{"app_ver": "9"}},
				{at: 20 * time.Second, status: "1.1"}},
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
			wantEndAfter: 20 * time.Second, wantEndBefore: 21 * time.Second,
		},
		{
			// Issue 15, defect 8: reports every 2 s against a 10 s silence timeout, of which
			// the bridge forwards one a minute.
			name: "a device reporting more often than the bridge forwards is not timed out", reported: "1.0",
			req: func(r *ota.UpgradeRequest) { r.SilenceTimeout = ota.Duration(10 * time.Second) },
			steps: slices.Concat([]step{{at: time.Second, progress: 10}},
				every(3*time.Second, 61*time.Second, 2*time.Second, 20, true),
				[]step{{at: 61 * time.Second, progress: 50}},
				every(63*time.Second, 121*time.Second, 2*time.Second, 70, true),
				[]step{{at: 121 * time.Second, progress: 100}, {at: 125 * time.Second, status: "1.1"}}),
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
			wantEndAfter: 125 * time.Second, wantEndBefore: 126 * time.Second,
		},
		{
			name: "a device whose stored reports stop is timed out at the silence timeout", reported: "1.0",
			req: func(r *ota.UpgradeRequest) { r.SilenceTimeout = ota.Duration(10 * time.Second); r.MaxAttempts = 1 },
			steps: slices.Concat([]step{{at: time.Second, progress: 10}},
				every(3*time.Second, 30*time.Second, 2*time.Second, 20, true)),
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			// The last report at 29 s, silent from then on.
			wantEndAfter: 39 * time.Second, wantEndBefore: 40 * time.Second,
		},
		{
			name: "progress going back after the download is ignored", reported: "1.0",
			req: func(r *ota.UpgradeRequest) { r.RetryCodes = noRetry },
			steps: []step{{at: time.Second, progress: 100}, {at: 2 * time.Second, progress: 50},
				{at: 3 * time.Second, status: "1.0"}},
			// Still downloaded: the old version is an install failure.
			wantState: ota.StateFailed, wantCode: protocol.CodeInstallFailed, wantAttempts: 1, wantCommands: 1,
			wantErrType: ota.ErrTypeUpgradeFailed,
		},
		{
			name: "a repeated 100 does not restart the install timeout", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			steps:     []step{{at: time.Second, progress: 100}, {at: 10 * time.Minute, progress: 100}},
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			wantEndAfter: time.Second + ota.DefaultInstallTimeout, wantEndBefore: 2*time.Second + ota.DefaultInstallTimeout,
		},
		{
			name: "soak: no report within it keeps the success", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.Soak = ota.Duration(10 * time.Minute) },
			steps:     []step{{at: time.Second, progress: 100}, {at: 10 * time.Second, status: "1.1"}},
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
			wantEndAfter: 10*time.Second + 10*time.Minute, wantEndBefore: 11*time.Second + 10*time.Minute,
		},
		{
			name: "soak: the target again, another type's version and late progress keep the success", reported: "1.0",
			req: func(r *ota.UpgradeRequest) { r.Soak = ota.Duration(10 * time.Minute) },
			steps: []step{{at: time.Second, progress: 100}, {at: 10 * time.Second, status: "1.1"},
				{at: time.Minute, rawStatus: protocol.Status{"app_ver": "9"}}, {at: 2 * time.Minute, status: "1.1"},
				{at: 3 * time.Minute, progress: -3}},
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
			wantEndAfter: 10*time.Second + 10*time.Minute, wantEndBefore: 11*time.Second + 10*time.Minute,
		},
		{
			name: "soak: the old version within it is reverted", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.Soak = ota.Duration(10 * time.Minute) },
			steps:     []step{{at: time.Second, progress: 100}, {at: 10 * time.Second, status: "1.1"}, {at: 2 * time.Minute, status: "1.0"}},
			wantState: ota.StateReverted, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeReverted,
			wantEndAfter: 2 * time.Minute, wantEndBefore: 2*time.Minute + time.Second,
		},
		{
			name: "soak: a cancel ends it early, still succeeded", reported: "1.0",
			req:       func(r *ota.UpgradeRequest) { r.Soak = ota.Duration(time.Hour) },
			steps:     []step{{at: 10 * time.Second, status: "1.1"}, {at: time.Minute, cancel: true}},
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
			wantEndAfter: time.Minute, wantEndBefore: time.Minute + time.Second,
		},
		{
			name: "soak: the overall deadline does not cut it", reported: "1.0",
			req: func(r *ota.UpgradeRequest) {
				r.Soak = ota.Duration(time.Hour)
				r.Deadline = ota.Duration(30 * time.Minute)
			},
			steps:     []step{{at: 10 * time.Second, status: "1.1"}, {at: 50 * time.Minute, status: "1.0"}},
			wantState: ota.StateReverted, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeReverted,
			wantEndAfter: 50 * time.Minute, wantEndBefore: 50*time.Minute + time.Second,
		},
		{
			// Issue 14: the bridge forwards few reports; at the start deadline the stored
			// ones show the download going on.
			name: "lean: stored reports carry a download past the start timeout", reported: "1.0", leanOnly: true,
			req: func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			steps: slices.Concat(every(time.Minute, 12*time.Minute, 10*time.Second, 50, true),
				[]step{{at: 12 * time.Minute, progress: 100, storedOnly: true}, {at: 12*time.Minute + 5*time.Second, status: "1.1"}}),
			wantState: ota.StateSucceeded, wantAttempts: 1, wantCommands: 1,
			wantEndAfter: 12*time.Minute + 5*time.Second, wantEndBefore: 12*time.Minute + 6*time.Second,
		},
		{
			name: "lean: a stored 100 starts the install timeout", reported: "1.0", leanOnly: true,
			req:       func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			steps:     []step{{at: time.Second, progress: 10, storedOnly: true}, {at: 2 * time.Minute, progress: 100, storedOnly: true}},
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			wantEndAfter: 2*time.Minute + ota.DefaultInstallTimeout, wantEndBefore: 2*time.Minute + ota.DefaultInstallTimeout + time.Second,
		},
		{
			// Known only when the start deadline reads the store: 10 min, not 3 + 5.
			name: "lean: stored reports that stop are timed out when the start deadline reads them", reported: "1.0", leanOnly: true,
			req:       func(r *ota.UpgradeRequest) { r.MaxAttempts = 1 },
			steps:     every(time.Second, 3*time.Minute, 10*time.Second, 30, true),
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			wantEndAfter: ota.DefaultStartTimeout, wantEndBefore: ota.DefaultStartTimeout + time.Second,
		},
		{
			name: "overall deadline", reported: "1.0",
			req: func(r *ota.UpgradeRequest) {
				r.Deadline = ota.Duration(3 * time.Minute)
				r.StartTimeout = ota.Duration(time.Hour)
				r.SilenceTimeout = ota.Duration(time.Hour)
			},
			wantState: ota.StateTimedOut, wantAttempts: 1, wantCommands: 1, wantErrType: ota.ErrTypeUpgradeTimedOut,
			wantEndAfter: 3 * time.Minute, wantEndBefore: 3*time.Minute + time.Second,
		},
	}
	for _, code := range []int{-1, -2, -3, -4} {
		tests = append(tests, struct {
			name                        string
			reported                    string
			req                         func(*ota.UpgradeRequest)
			steps                       []step
			wantState                   ota.State
			wantCode                    int
			wantAttempts                int
			wantCommands                int
			wantErrType                 string
			wantEndAfter, wantEndBefore time.Duration
			leanOnly                    bool
		}{
			name: fmt.Sprintf("error code %d retried then failed", code), reported: "1.0",
			// Each attempt reports the error a second after its command.
			steps: []step{{at: time.Second, progress: code}, {at: 32 * time.Second, progress: code},
				{at: 93 * time.Second, progress: code}},
			wantState: ota.StateFailed, wantCode: code, wantAttempts: 3, wantCommands: 3, wantErrType: ota.ErrTypeUpgradeFailed,
		})
	}
	for _, tt := range tests {
		for _, rev := range []int{ota.UpgradeRevisionOriginal, ota.UpgradeRevisionLean} {
			if tt.leanOnly && rev != ota.UpgradeRevisionLean {
				continue
			}
			t.Run(fmt.Sprintf("%s/revision %d", tt.name, rev), func(t *testing.T) {
				h := newHarness(t, protocol.Status{"firmware_ver": tt.reported})
				req := testRequest()
				req.Revision = rev
				if tt.req != nil {
					tt.req(&req)
				}
				h.schedule(tt.steps)
				start := h.env.Now()
				st, err := h.run(t, req)
				elapsed := h.env.Now().Sub(start)
				if st.State != tt.wantState || st.ErrorCode != tt.wantCode || st.Attempt != tt.wantAttempts {
					t.Fatalf("got state %s code %d attempts %d (desc %q, err %v); want %s code %d attempts %d",
						st.State, st.ErrorCode, st.Attempt, st.Desc, err, tt.wantState, tt.wantCode, tt.wantAttempts)
				}
				if got := len(h.dev.commands); got != tt.wantCommands {
					t.Errorf("commands sent = %d, want %d", got, tt.wantCommands)
				}
				switch {
				case tt.wantErrType != "":
					var appErr *temporal.ApplicationError
					if !errors.As(err, &appErr) || appErr.Type() != tt.wantErrType {
						t.Errorf("error = %v, want application error %s", err, tt.wantErrType)
					}
				case tt.wantState == ota.StateCanceled:
					var canceled *temporal.CanceledError
					if !errors.As(err, &canceled) {
						t.Errorf("error = %v, want canceled", err)
					}
				case err != nil:
					t.Errorf("error = %v, want none", err)
				}
				if tt.wantEndBefore > 0 && (elapsed < tt.wantEndAfter || elapsed > tt.wantEndBefore) {
					t.Errorf("ended after %s of virtual time, want between %s and %s", elapsed, tt.wantEndAfter, tt.wantEndBefore)
				}
				states := h.dev.states()
				if len(states) == 0 || states[len(states)-1] != tt.wantState {
					t.Errorf("recorded states %v, want the last to be %s", states, tt.wantState)
				}
			})
		}
	}
}

// TestDeviceUpgradeLeanRecords: a lean run records and upserts only what the bridge cannot
// (issue 14): no downloading or downloaded, OtaState only at the end or on a retry.
func TestDeviceUpgradeLeanRecords(t *testing.T) {
	tests := []struct {
		name        string
		rev         int
		steps       []step
		wantRecords []ota.State
		wantUpserts []string
	}{
		{
			name:        "original revision records every state",
			rev:         ota.UpgradeRevisionOriginal,
			steps:       []step{{at: time.Second, progress: 10}, {at: 5 * time.Second, progress: 100}, {at: 40 * time.Second, status: "1.1"}},
			wantRecords: []ota.State{ota.StateSent, ota.StateDownloading, ota.StateDownloaded, ota.StateSucceeded},
			wantUpserts: []string{"downloading", "downloaded", "succeeded"},
		},
		{
			name:        "lean: sent and the outcome",
			rev:         ota.UpgradeRevisionLean,
			steps:       []step{{at: time.Second, progress: 10}, {at: 5 * time.Second, progress: 100}, {at: 40 * time.Second, status: "1.1"}},
			wantRecords: []ota.State{ota.StateSent, ota.StateSucceeded},
			wantUpserts: []string{"succeeded"},
		},
		{
			name: "lean: a retry is recorded and upserted",
			rev:  ota.UpgradeRevisionLean,
			steps: []step{{at: time.Second, progress: 10}, {at: 2 * time.Second, progress: -1},
				{at: 40 * time.Second, progress: 100}, {at: 50 * time.Second, status: "1.1"}},
			wantRecords: []ota.State{ota.StateSent, ota.StatePending, ota.StateSent, ota.StateSucceeded},
			wantUpserts: []string{"pending", "sent", "succeeded"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
			var upserts []string
			h.env.OnUpsertTypedSearchAttributes(mock.Anything).Run(func(args mock.Arguments) {
				v, _ := args.Get(0).(temporal.SearchAttributes).GetKeyword(ota.SearchState)
				upserts = append(upserts, v)
			}).Return(nil)
			h.schedule(tt.steps)
			req := testRequest()
			req.Revision = tt.rev
			if err := h.env.SetTypedSearchAttributesOnStart(ota.UpgradeSearchAttributes(req)); err != nil {
				t.Fatal(err)
			}
			st, err := h.run(t, req)
			if err != nil || st.State != ota.StateSucceeded {
				t.Fatalf("state %s, err %v", st.State, err)
			}
			if got := h.dev.states(); fmt.Sprint(got) != fmt.Sprint(tt.wantRecords) {
				t.Errorf("recorded states %v, want %v", got, tt.wantRecords)
			}
			if fmt.Sprint(upserts) != fmt.Sprint(tt.wantUpserts) {
				t.Errorf("OtaState upserts %v, want %v", upserts, tt.wantUpserts)
			}
		})
	}
}

func TestDeviceUpgradeCommands(t *testing.T) {
	h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
	h.schedule([]step{{at: time.Second, progress: -1}, {at: 40 * time.Second, status: "1.1"}})
	st, err := h.run(t, testRequest())
	if err != nil || st.State != ota.StateSucceeded {
		t.Fatalf("state %s, err %v", st.State, err)
	}
	if len(h.dev.commands) != 2 {
		t.Fatalf("commands = %d, want 2", len(h.dev.commands))
	}
	first, second := h.dev.commands[0], h.dev.commands[1]
	if first.ID == second.ID {
		t.Errorf("retry reused command ID %s", first.ID)
	}
	if got := first.ExpiresAt.Sub(first.IssuedAt); got != ota.DefaultStartTimeout {
		t.Errorf("command expires %s after issue, want %s", got, ota.DefaultStartTimeout)
	}
	want := []ota.State{ota.StateSent, ota.StatePending, ota.StateSent, ota.StateSucceeded}
	if got := h.dev.states(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("recorded states %v, want %v", got, want)
	}
}

func TestDeviceUpgradeQuery(t *testing.T) {
	h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
	h.schedule([]step{{at: time.Second, progress: 42}, {at: time.Minute, status: "1.1"}})
	var mid ota.UpgradeStatus
	h.env.RegisterDelayedCallback(func() {
		v, err := h.env.QueryWorkflow(ota.QueryState)
		if err != nil {
			t.Errorf("query: %v", err)
			return
		}
		if err := v.Get(&mid); err != nil {
			t.Errorf("decode query: %v", err)
		}
	}, 2*time.Second)
	if _, err := h.run(t, testRequest()); err != nil {
		t.Fatal(err)
	}
	if mid.State != ota.StateDownloading || mid.Progress != 42 || mid.Attempt != 1 || mid.CommandID == "" {
		b, _ := json.Marshal(mid)
		t.Fatalf("query mid-download = %s", b)
	}
}

func TestDeviceUpgradeInvalidRequest(t *testing.T) {
	h := newHarness(t, nil)
	req := testRequest()
	req.MD5 = "not-an-md5"
	_, err := h.run(t, req)
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || appErr.Type() != ota.ErrTypeInvalidRequest {
		t.Fatalf("error = %v, want %s", err, ota.ErrTypeInvalidRequest)
	}
	if len(h.dev.commands) != 0 {
		t.Fatal("a command was sent for an invalid request")
	}
}

func TestDeviceUpgradeUnknownDevice(t *testing.T) {
	h := newHarness(t, nil)
	req := testRequest()
	req.DeviceID = "ghost"
	st, err := h.run(t, req)
	if st.State != ota.StateFailed || err == nil {
		t.Fatalf("state %s err %v, want failed", st.State, err)
	}
}

// TestDeviceUpgradeOutcomeWithCancel: a cancel request that comes while the outcome of an
// upgrade is being recorded does not lose the record: the outcome stands and is recorded.
func TestDeviceUpgradeOutcomeWithCancel(t *testing.T) {
	h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
	var a *activities.Activities
	real := &activities.Activities{Publisher: h.dev, Store: h.dev}
	interrupted := false
	h.env.OnActivity(a.RecordState, mock.Anything, mock.Anything).Return(func(ctx context.Context, in ota.RecordStateInput) error {
		if in.Upgrade.State == ota.StateSucceeded && !interrupted {
			// The cancel request comes while the outcome is being recorded.
			interrupted = true
			h.env.CancelWorkflow()
			<-ctx.Done()
			return ctx.Err()
		}
		return real.RecordState(ctx, in)
	})
	h.schedule([]step{{at: 10 * time.Second, status: "1.1"}})
	st, _ := h.run(t, testRequest())
	states := h.dev.states()
	if !interrupted || st.State != ota.StateSucceeded || len(states) == 0 || states[len(states)-1] != ota.StateSucceeded {
		t.Fatalf("workflow ended %s (record interrupted: %v), recorded states %v: the last record must be the outcome", st.State, interrupted, states)
	}
}

// TestDeviceUpgradeSoakRecords: during the soak the upgrade is succeeded (recorded so, with
// the soak's end in its status); a report of the old version then records it reverted.
func TestDeviceUpgradeSoakRecords(t *testing.T) {
	h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
	req := testRequest()
	req.Soak = ota.Duration(10 * time.Minute)
	h.schedule([]step{{at: time.Second, progress: 100}, {at: 10 * time.Second, status: "1.1"}, {at: 5 * time.Minute, status: "1.0"}})
	var mid ota.UpgradeStatus
	h.env.RegisterDelayedCallback(func() {
		v, err := h.env.QueryWorkflow(ota.QueryState)
		if err == nil {
			err = v.Get(&mid)
		}
		if err != nil {
			t.Errorf("query: %v", err)
		}
	}, time.Minute)
	start := h.env.Now()
	st, err := h.run(t, req)
	if mid.State != ota.StateSucceeded || mid.SoakUntil == nil || !mid.SoakUntil.Equal(start.Add(10*time.Second+10*time.Minute)) {
		t.Errorf("state during the soak: %s, soak until %v; want succeeded until 10m10s after the start", mid.State, mid.SoakUntil)
	}
	var appErr *temporal.ApplicationError
	if st.State != ota.StateReverted || !errors.As(err, &appErr) || appErr.Type() != ota.ErrTypeUpgradeReverted ||
		st.Reported != "1.0" || !strings.Contains(st.Desc, `device went back to firmware_ver="1.0" within the 10m0s soak`) {
		t.Fatalf("ended %s (%q, reported %q), err %v; want reverted", st.State, st.Desc, st.Reported, err)
	}
	want := []ota.State{ota.StateSent, ota.StateDownloaded, ota.StateSucceeded, ota.StateReverted}
	if got := h.dev.states(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("recorded states %v, want %v", got, want)
	}
	last := h.dev.records[len(h.dev.records)-1]
	if last.ErrorDesc != st.Desc {
		t.Errorf("recorded error %q, want %q", last.ErrorDesc, st.Desc)
	}
}

// TestDeviceUpgradeCancelMessage: a cancel while a command is out publishes its cancel
// message; in a backoff no command is out, and none is published.
func TestDeviceUpgradeCancelMessage(t *testing.T) {
	tests := []struct {
		name   string
		steps  []step
		cancel bool // a cancel message for the last command is published
	}{
		{"before any report", []step{{at: 10 * time.Second, cancel: true}}, true},
		{"while downloading", []step{{at: time.Second, progress: 30}, {at: 10 * time.Second, cancel: true}}, true},
		{"after the download", []step{{at: time.Second, progress: 100}, {at: 10 * time.Second, cancel: true}}, true},
		{"in a backoff", []step{{at: time.Second, progress: -1}, {at: 10 * time.Second, cancel: true}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
			h.schedule(tt.steps)
			st, err := h.run(t, testRequest())
			var canceled *temporal.CanceledError
			if st.State != ota.StateCanceled || !errors.As(err, &canceled) {
				t.Fatalf("ended %s, err %v; want canceled", st.State, err)
			}
			var want []string
			if tt.cancel {
				want = []string{h.dev.lastCommand().ID}
			}
			if fmt.Sprint(h.dev.cancels) != fmt.Sprint(want) {
				t.Errorf("cancel messages for %v, want %v", h.dev.cancels, want)
			}
		})
	}
}

// TestDeviceUpgradePreflight: a single upgrade of a signed package has the worker check it
// first; a failed check ends it failed with the check's message, before any command.
func TestDeviceUpgradePreflight(t *testing.T) {
	signed := func(r *ota.UpgradeRequest) {
		r.SHA256 = strings.Repeat("ab", 32)
		r.Sig = base64.StdEncoding.EncodeToString(make([]byte, 64))
		r.KeyID = "release-1"
	}
	tests := []struct {
		name      string
		req       func(*ota.UpgradeRequest)
		check     error // CheckPackage's answer
		wantCheck bool
		wantState ota.State
		wantDesc  string
	}{
		{name: "signed, passes", req: signed, wantCheck: true, wantState: ota.StateSucceeded},
		{name: "signed, bad signature", req: signed, wantCheck: true, wantState: ota.StateFailed,
			check:    temporal.NewNonRetryableApplicationError("bad signature: key \"release-1\" did not sign ...", ota.ErrTypeBadSignature, nil),
			wantDesc: "pre-flight check failed, no command was sent: bad signature: key \"release-1\" did not sign ..."},
		{name: "signed, sha256 mismatch", req: signed, wantCheck: true, wantState: ota.StateFailed,
			check:    temporal.NewNonRetryableApplicationError("sha256 mismatch: the package's sha256 is ...", ota.ErrTypeSHA256Mismatch, nil),
			wantDesc: "pre-flight check failed, no command was sent: sha256 mismatch: the package's sha256 is ..."},
		{name: "signed, in a rollout: the rollout checked it", req: func(r *ota.UpgradeRequest) { signed(r); r.Rollout = "fw-1.1" },
			wantState: ota.StateSucceeded},
		{name: "unsigned", wantState: ota.StateSucceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
			req := testRequest()
			if tt.req != nil {
				tt.req(&req)
			}
			var a *activities.Activities
			var checked []ota.PackageCheck
			h.env.OnActivity(a.CheckPackage, mock.Anything, mock.Anything).Return(func(_ context.Context, p ota.PackageCheck) error {
				checked = append(checked, p)
				return tt.check
			})
			h.schedule([]step{{at: 10 * time.Second, status: "1.1"}})
			st, err := h.run(t, req)
			if (len(checked) > 0) != tt.wantCheck || (tt.wantCheck && checked[0] != req.PackageCheck()) {
				t.Errorf("package checks %+v; want one of the request's package: %v", checked, tt.wantCheck)
			}
			if st.State != tt.wantState {
				t.Fatalf("ended %s (%q), err %v; want %s", st.State, st.Desc, err, tt.wantState)
			}
			if tt.wantState == ota.StateSucceeded {
				cmd := h.dev.lastCommand()
				if len(h.dev.commands) != 1 || cmd.SHA256 != req.SHA256 || cmd.Sig != req.Sig || cmd.KeyID != req.KeyID {
					t.Errorf("commands %+v; want one with the request's sha256, sig and key_id", h.dev.commands)
				}
				return
			}
			var appErr *temporal.ApplicationError
			if !errors.As(err, &appErr) || appErr.Type() != ota.ErrTypeUpgradeFailed || st.Desc != tt.wantDesc || st.Attempt != 0 {
				t.Errorf("error %v, desc %q, attempt %d; want %s with %q after 0 attempts", err, st.Desc, st.Attempt, ota.ErrTypeUpgradeFailed, tt.wantDesc)
			}
			if len(h.dev.commands) != 0 {
				t.Errorf("%d commands sent after a failed pre-flight check", len(h.dev.commands))
			}
			if states := h.dev.states(); fmt.Sprint(states) != "[failed]" {
				t.Errorf("recorded states %v, want [failed]", states)
			}
		})
	}
}

// TestDeviceUpgradeRefusedBeforeSend: the worker's require-signatures policy and a
// compatibility rule the device does not meet end the upgrade failed before any command.
func TestDeviceUpgradeRefusedBeforeSend(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pkgsig.NewTrustedKeys(map[string]ed25519.PublicKey{"release-1": pub})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		policy   pkgsig.Policy
		req      func(*ota.UpgradeRequest)
		wantDesc string
	}{
		{name: "unsigned under the require-signatures policy", policy: pkgsig.Policy{Keys: keys, RequireSignature: true},
			wantDesc: "missing signature: the package is not signed, and a signature is required"},
		{name: "a label the device lacks", req: func(r *ota.UpgradeRequest) {
			r.Compat = &ota.Compatibility{Labels: map[string]string{"model": "pump-v2"}}
		}, wantDesc: `device dev-1 does not fit the package: label model is "", the package needs "pump-v2"`},
		{name: "a version outside the range", req: func(r *ota.UpgradeRequest) {
			r.Compat = &ota.Compatibility{Versions: ">=2.0"}
		}, wantDesc: "device dev-1 does not fit the package: version 1.0 is outside >=2.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, protocol.Status{"firmware_ver": "1.0"}, tt.policy)
			req := testRequest()
			if tt.req != nil {
				tt.req(&req)
			}
			st, err := h.run(t, req)
			if st.State != ota.StateFailed || st.Desc != tt.wantDesc || len(h.dev.commands) != 0 {
				t.Fatalf("ended %s (%q), err %v, %d commands; want failed with %q and no command", st.State, st.Desc, err, len(h.dev.commands), tt.wantDesc)
			}
		})
	}
}

// TestDeviceUpgradeSendFailureIsPlain: an attempt whose command could not be sent (the
// broker unreachable for longer than the send's retries) records why in the activity's words,
// without the SDK's wrapping; the next attempt goes on.
func TestDeviceUpgradeSendFailureIsPlain(t *testing.T) {
	h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
	var a *activities.Activities
	real := &activities.Activities{Publisher: h.dev, Store: h.dev}
	calls := 0
	h.env.OnActivity(a.SendCommand, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in ota.SendCommandInput) (ota.SendCommandResult, error) {
			if in.Upgrade.Attempt == 1 {
				calls++
				return ota.SendCommandResult{}, errors.New("publish command to dev-1: broker unreachable")
			}
			return real.SendCommand(ctx, in)
		})
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(ota.SignalStatus, ota.StatusSignal{Status: protocol.Status{"firmware_ver": "1.1"}})
	}, 10*time.Minute)
	st, err := h.run(t, testRequest())
	if st.State != ota.StateSucceeded || err != nil || calls < 2 {
		t.Fatalf("upgrade ended %s (%v) after %d failed sends; want the second attempt to succeed", st.State, err, calls)
	}
	const want = "could not send the command: publish command to dev-1: broker unreachable"
	found := false
	for _, r := range h.dev.records {
		if r.State == ota.StatePending && r.Attempt == 1 {
			found = true
			if r.ErrorDesc != want {
				t.Errorf("the failed attempt's desc = %q\nwant                        %q", r.ErrorDesc, want)
			}
		}
	}
	if !found {
		t.Errorf("no record of the failed attempt: %+v", h.dev.records)
	}
}

// TestDeviceUpgradeRecordsItsRolloutRun: an upgrade a rollout started records the rollout's
// first run with every state, so that the rollout's records are its own.
func TestDeviceUpgradeRecordsItsRolloutRun(t *testing.T) {
	h := newHarness(t, protocol.Status{"firmware_ver": "1.0"})
	h.schedule([]step{{at: 10 * time.Second, status: "1.1"}})
	req := testRequest()
	req.Rollout, req.RolloutRun = "fw", "first-run"
	if st, err := h.run(t, req); err != nil || st.State != ota.StateSucceeded {
		t.Fatalf("upgrade ended %s (%v)", st.State, err)
	}
	if len(h.dev.records) == 0 {
		t.Fatal("nothing recorded")
	}
	for _, r := range h.dev.records {
		if r.Rollout != "fw" || r.RolloutRun != "first-run" {
			t.Errorf("record %s: rollout %q run %q, want fw, first-run", r.State, r.Rollout, r.RolloutRun)
		}
	}
}
