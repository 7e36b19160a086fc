package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// lockTargets holds an exclusive lock on the rollout target lists until the returned
// function is called, so that ResolveTargets blocks (as when PostgreSQL is slow).
func (e *env) lockTargets() (release func()) {
	e.t.Helper()
	conn, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	tx, err := conn.Begin(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := tx.Exec(e.ctx, `LOCK TABLE rollout_targets IN ACCESS EXCLUSIVE MODE`); err != nil {
		e.t.Fatal(err)
	}
	done := false
	release = func() {
		if !done {
			done = true
			_ = tx.Rollback(context.Background())
			_ = conn.Close(context.Background())
		}
	}
	e.t.Cleanup(release)
	return release
}

// pendingActivity reports whether the workflow waits on an activity of that type.
func (e *env) pendingActivity(workflowID, activityType string) (bool, error) {
	d, err := e.c.DescribeWorkflow(e.ctx, workflowID, "")
	if err != nil {
		return false, err
	}
	for _, a := range d.RawResponse.GetPendingActivities() {
		if a.GetActivityType().GetName() == activityType {
			return true, nil
		}
	}
	return false, nil
}

// childStartsAroundUpdate counts the device upgrades a rollout run started before and after
// it accepted the first update named update, from the run's history.
func (e *env) childStartsAroundUpdate(workflowID, runID, update string) (before, after int, accepted bool) {
	e.t.Helper()
	it := e.c.GetWorkflowHistory(e.ctx, workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			e.t.Fatal(err)
		}
		switch ev.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
			if ev.GetWorkflowExecutionUpdateAcceptedEventAttributes().GetAcceptedRequest().GetInput().GetName() == update {
				accepted = true
			}
		case enumspb.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
			if accepted {
				after++
			} else {
				before++
			}
		}
	}
	return before, after, accepted
}

// TestNoStartAfterControlDuringTargetResolution: once a pause or cancel is acknowledged, no
// device gets a command, also when the acknowledgement comes while the rollout resolves its
// next page of targets (issue 15, defect 2). PostgreSQL is held up by a lock on the target
// lists.
func TestNoStartAfterControlDuringTargetResolution(t *testing.T) {
	tests := []struct {
		name   string
		update string
		arg    any
	}{
		{"ctlpause", ota.UpdatePause, "test"},
		{"ctlcancel", ota.UpdateCancel, ota.CancelRequest{Reason: "test"}},
		{"ctlcancelrun", ota.UpdateCancel, ota.CancelRequest{CancelRunning: true, Reason: "test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			timing := fastTiming
			timing.InstallDelay = 2 * time.Second
			e := newEnv(t, system.Config{Devices: 15, Prefix: tt.name, Timing: timing})
			req := e.rollout(tt.name, tt.name)
			req.PageSize, req.MaxInFlight = 5, 5
			run := e.startRollout(req)
			require.Eventually(t, func() bool {
				p, err := e.queryProgress(run)
				return err == nil && p.Counts.Started == 5
			}, 30*time.Second, 50*time.Millisecond, "the first page started")
			release := e.lockTargets()
			// When one of the five ends, the rollout resolves the next page, which blocks.
			require.Eventually(t, func() bool {
				pending, err := e.pendingActivity(run.GetID(), "ResolveTargets")
				return err == nil && pending
			}, 30*time.Second, 50*time.Millisecond, "ResolveTargets waiting on the lock")
			if err := e.update(run, tt.update, tt.arg); err != nil {
				t.Fatal(err)
			}
			received := map[string]bool{}
			for _, id := range e.sys.Fleet.IDs() {
				if d, _ := e.sys.Fleet.Device(id); len(d.Received) > 0 {
					received[id] = true
				}
			}
			release()
			require.Eventually(t, func() bool {
				pending, err := e.pendingActivity(run.GetID(), "ResolveTargets")
				return err == nil && !pending
			}, 30*time.Second, 50*time.Millisecond, "the page resolved")
			if tt.update == ota.UpdatePause {
				// The rollout stays paused; cancel it to end the test.
				if err := e.update(run, ota.UpdateCancel, ota.CancelRequest{Reason: "end of test"}); err != nil {
					t.Fatal(err)
				}
			}
			p, err := e.finish(run)
			if err != nil || p.State != ota.RolloutCanceled || p.Counts.Started != 5 {
				t.Fatalf("ended %s with %+v, err %v; want canceled with the first page only", p.State, p.Counts, err)
			}
			if _, starts, accepted := e.childStartsAroundUpdate(run.GetID(), "", tt.update); !accepted || starts > 0 {
				t.Errorf("%d device upgrades started after the %s was accepted (accepted %v)", starts, tt.update, accepted)
			}
			for _, id := range e.sys.Fleet.IDs() {
				if d, _ := e.sys.Fleet.Device(id); len(d.Received) > 0 && !received[id] {
					t.Errorf("%s got a command after the %s was acknowledged", id, tt.update)
				}
			}
			e.checkRecords(tt.name, p)
		})
	}
}

// TestReportingDeviceNotTimedOutBySilence: a device that reports every 2 s is not timed out
// by a 10 s silence timeout, although the bridge forwards one progress report a minute
// (issue 15, defect 8).
func TestReportingDeviceNotTimedOutBySilence(t *testing.T) {
	e := newEnv(t, system.Config{})
	d := e.scriptedDevice("chatty", protocol.Status{"firmware_ver": "1.0"})
	req := e.request("chatty")
	timeout := ota.Duration(10 * time.Second)
	req.StartTimeout, req.SilenceTimeout, req.InstallTimeout = timeout, timeout, timeout
	req.MaxAttempts = 1
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
	if err != nil {
		t.Fatal(err)
	}
	cmd := d.command()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for pct := 1; pct <= 15; pct++ { // 30 s of reports, three silence timeouts
		d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: pct * 6})
		<-tick.C
	}
	d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
	d.status(protocol.Status{"firmware_ver": "1.1"})
	st, err := ota.UpgradeResult(e.ctx, run)
	if err != nil || st.State != ota.StateSucceeded || st.Attempt != 1 {
		t.Fatalf("upgrade %s after %d attempts (%s), err %v; want succeeded in one", st.State, st.Attempt, st.Desc, err)
	}
	select {
	case extra := <-d.commands:
		t.Errorf("the device got a second command %s mid-download", extra.ID)
	default:
	}
}

// TestRecordEqualsWorkflow: after retries, the PostgreSQL record of an upgrade equals the
// workflow's final status in every final state: state, attempt, progress, error code
// (issue 15, defect 9). Device reports the workflow never saw (a backoff under the previous
// command ID) do not change the record.
func TestRecordEqualsWorkflow(t *testing.T) {
	e := newEnv(t, system.Config{})
	type drive func(d *scripted, run client.WorkflowRun)
	report := func(d *scripted, cmd protocol.UpgradeCommand, n int) {
		d.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: n})
	}
	tests := []struct {
		name  string
		state ota.State
		tweak func(*ota.UpgradeRequest)
		drive drive
	}{
		{"rec-succeeded", ota.StateSucceeded, nil, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			report(d, cmd, 70)
			report(d, cmd, -1)
			report(d, cmd, 90) // during the backoff, under the first command
			cmd = d.command()
			report(d, cmd, 30)
			d.status(protocol.Status{"firmware_ver": "1.1"})
		}},
		{"rec-failed", ota.StateFailed, func(r *ota.UpgradeRequest) { r.MaxAttempts = 2 }, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			report(d, cmd, 100)
			report(d, cmd, -3)
			cmd = d.command()
			report(d, cmd, 40)
			report(d, cmd, -1)
		}},
		{"rec-timedout", ota.StateTimedOut, func(r *ota.UpgradeRequest) { r.MaxAttempts = 2 }, func(d *scripted, _ client.WorkflowRun) {
			cmd := d.command()
			report(d, cmd, 70)
			cmd = d.command() // after the silence timeout
			report(d, cmd, 20)
		}},
		{"rec-canceled", ota.StateCanceled, nil, func(d *scripted, run client.WorkflowRun) {
			cmd := d.command()
			report(d, cmd, -2)
			cmd = d.command()
			report(d, cmd, 50)
			require.Eventually(e.t, func() bool {
				v, err := e.c.QueryWorkflow(e.ctx, run.GetID(), run.GetRunID(), ota.QueryState)
				var st ota.UpgradeStatus
				return err == nil && v.Get(&st) == nil && st.Progress == 50
			}, 10*time.Second, 50*time.Millisecond, "progress 50 in the workflow")
			if err := e.c.CancelWorkflow(e.ctx, run.GetID(), run.GetRunID()); err != nil {
				e.t.Fatal(err)
			}
		}},
		{"rec-skipped", ota.StateSkipped, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status := protocol.Status{"firmware_ver": "1.0"}
			if tt.drive == nil {
				status["firmware_ver"] = "1.1"
			}
			d := e.scriptedDevice(tt.name, status)
			req := e.request(tt.name)
			if tt.tweak != nil {
				tt.tweak(&req)
			}
			run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
			if err != nil {
				t.Fatal(err)
			}
			if tt.drive != nil {
				tt.drive(d, run)
			}
			st, _ := ota.UpgradeResult(e.ctx, run)
			if st.State != tt.state {
				t.Fatalf("upgrade ended %s (%s), want %s", st.State, st.Desc, tt.state)
			}
			rec, err := e.store.GetUpgrade(e.ctx, run.GetRunID())
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%s attempt %d code %d", rec.State, rec.Attempt, rec.ErrorCode)
			want := fmt.Sprintf("%s attempt %d code %d", st.State, st.Attempt, st.ErrorCode)
			// The record's progress may be ahead of the workflow's: the bridge records every
			// report of the attempt, the workflow hears of few (issue 14).
			if got != want || rec.Progress < st.Progress {
				b, _ := json.Marshal(st)
				t.Errorf("record %s progress %d, workflow %s progress %d (%s)", got, rec.Progress, want, st.Progress, b)
			}
		})
	}
}
