package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

func statusCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show a device's versions and its current or last upgrade",
		UsageText: "starter status --device D [--json]",
		Description: "Reads the registry and upgrade history from PostgreSQL and, while the workflow\n" +
			ota.DeviceWorkflowID("<device>") + " runs, its live state from Temporal.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "device", Usage: "device `ID` (required)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
		},
		Before: requireFlags("device"),
		Action: e.statusAction,
	}
}

func cancelCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "cancel",
		Usage:     "cancel a device's running upgrade",
		UsageText: "starter cancel --device D [--wait]",
		Description: "Asks the workflow " + ota.DeviceWorkflowID("<device>") + " to cancel; it records the upgrade as canceled.\n" +
			"Exit code 1 when the device has no upgrade running.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "device", Usage: "device `ID` (required)"},
			&cli.BoolFlag{Name: "wait", Usage: "wait until the upgrade has ended"},
		},
		Before: requireFlags("device"),
		Action: e.cancelAction,
	}
}

// statusReport is what `status` shows.
type statusReport struct {
	Device store.Device `json:"device"`
	// Upgrade is the device's latest upgrade as recorded in PostgreSQL, if any.
	Upgrade *store.Upgrade       `json:"upgrade,omitempty"`
	Events  []store.UpgradeEvent `json:"events,omitempty"`
	// LastReport is the device's latest report of the latest upgrade's current attempt, error
	// codes included: the bridge stores every report, while the upgrade's record and its
	// workflow see at most one a progress interval (and none after the upgrade has ended, such
	// as a device's confirmation of a cancel).
	LastReport *store.ProgressEvent `json:"last_report,omitempty"`
	// Running is set while the device's upgrade workflow runs; Live is then its state.
	Running   bool               `json:"running"`
	RunID     string             `json:"run_id,omitempty"`
	Live      *ota.UpgradeStatus `json:"live,omitempty"`
	LiveError string             `json:"live_error,omitempty"`
}

func (e *appEnv) statusAction(cCtx *cli.Context) error {
	id, err := deviceFlag(cCtx)
	if err != nil {
		return err
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	rep, err := deviceStatus(ctx, st, id)
	if err != nil {
		return err
	}
	// The live state is a bonus on top of the records: without Temporal the records are still
	// worth showing, with the reason the live state is missing.
	if c, err := e.temporalClient(cCtx); err != nil {
		rep.LiveError = err.Error()
	} else if err := liveStatus(ctx, c, id, &rep); err != nil {
		rep.LiveError = err.Error()
	}
	if rep.LiveError != "" {
		fmt.Fprintf(e.errOut, "starter: warning: no live state: %s\n", rep.LiveError)
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, rep)
	}
	return printStatus(e.out, rep)
}

// deviceStatus reads a device and its latest upgrade from the store.
func deviceStatus(ctx context.Context, st *store.Store, id string) (statusReport, error) {
	var rep statusReport
	dev, err := st.GetDevice(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return rep, cli.Exit(fmt.Sprintf("unknown device %s: register it with `starter devices add --device %s`", id, id), exitFailure)
	}
	if err != nil {
		return rep, err
	}
	rep.Device = dev
	up, err := st.LatestUpgrade(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return rep, nil
	case err != nil:
		return rep, err
	}
	// In plain words: records of earlier versions may hold the SDK's wrapping of an error.
	up.ErrorDesc = errtext.PlainText(up.ErrorDesc)
	rep.Upgrade = &up
	if rep.Events, err = st.UpgradeEvents(ctx, up.RunID); err != nil {
		return rep, err
	}
	for i := range rep.Events {
		rep.Events[i].Detail = errtext.PlainText(rep.Events[i].Detail)
	}
	if up.CommandID != "" {
		last, err := st.LastReport(ctx, id, ota.AttemptKey{CommandID: up.CommandID, Type: up.Type, Version: up.Version})
		switch {
		case err == nil:
			rep.LastReport = &last
		case !errors.Is(err, store.ErrNotFound):
			return rep, err
		}
	}
	return rep, nil
}

// runningUpgrade returns the run ID of the device's running upgrade workflow, or "" when none
// runs.
func runningUpgrade(ctx context.Context, c client.Client, deviceID string) (string, error) {
	wid := ota.DeviceWorkflowID(deviceID)
	desc, err := c.DescribeWorkflow(ctx, wid, "")
	var notFound *serviceerror.NotFound
	if errors.As(err, &notFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("describe workflow %s: %w", wid, err)
	}
	if desc.Status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return "", nil
	}
	return desc.WorkflowExecution.RunID, nil
}

// liveStatus adds the running workflow's state to rep.
func liveStatus(ctx context.Context, c client.Client, deviceID string, rep *statusReport) error {
	runID, err := runningUpgrade(ctx, c, deviceID)
	if err != nil || runID == "" {
		return err
	}
	rep.Running = true
	rep.RunID = runID
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	live, err := queryState(qctx, c, ota.DeviceWorkflowID(deviceID), runID)
	if err != nil {
		return err
	}
	rep.Live = &live
	return nil
}

func printStatus(out io.Writer, rep statusReport) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	d := rep.Device
	fmt.Fprintf(tw, "Device\t%s\n", d.ID)
	fmt.Fprintf(tw, "Disabled\t%s\n", yesNo(d.Disabled))
	if len(d.Labels) > 0 {
		fmt.Fprintf(tw, "Labels\t%s\n", formatMap(d.Labels))
	}
	reported := "nothing yet"
	if len(d.Reported) > 0 {
		reported = formatMap(d.Reported)
		if d.ReportedAt != nil {
			reported += "  (at " + formatTime(*d.ReportedAt) + ")"
		}
	}
	fmt.Fprintf(tw, "Reported\t%s\n", reported)
	fmt.Fprintf(tw, "Last seen\t%s\n", formatTimePtr(d.LastSeen))
	fmt.Fprintf(tw, "Registered\t%s\n", formatTime(d.CreatedAt))
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write status: %w", err)
	}

	if rep.Upgrade == nil {
		fmt.Fprintln(out, "\nNo upgrade recorded.")
	} else {
		u := rep.Upgrade
		fmt.Fprintf(out, "\nLatest upgrade: %s %s (workflow %s, run %s)\n", u.Type, u.Version, u.WorkflowID, u.RunID)
		fmt.Fprintf(tw, "  State\t%s  %d%%  attempt %d\n", u.State, u.Progress, u.Attempt)
		if r := rep.LastReport; r != nil {
			report := fmt.Sprintf("%d%%  %s", r.Progress, r.Desc)
			if r.Progress < 0 {
				report = codeDesc(r.Progress, r.Desc)
			}
			fmt.Fprintf(tw, "  Last report\t%s  (at %s)\n", report, formatTime(r.ReceivedAt))
		}
		if u.ErrorCode != 0 || u.ErrorDesc != "" {
			fmt.Fprintf(tw, "  Error\t%s\n", codeDesc(u.ErrorCode, u.ErrorDesc))
		}
		fmt.Fprintf(tw, "  Package\t%s  md5 %s  size %d\n", u.URL, u.MD5, u.Size)
		if u.Rollout != "" {
			fmt.Fprintf(tw, "  Rollout\t%s\n", u.Rollout)
		}
		fmt.Fprintf(tw, "  Started\t%s\n", formatTime(u.CreatedAt))
		if u.FinishedAt != nil {
			fmt.Fprintf(tw, "  Finished\t%s\n", formatTime(*u.FinishedAt))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write status: %w", err)
		}
		if len(rep.Events) > 0 {
			fmt.Fprintln(out, "  History:")
			for _, ev := range rep.Events {
				detail := ev.Detail
				if ev.ErrorCode != 0 {
					detail = codeDesc(ev.ErrorCode, ev.Detail)
				}
				fmt.Fprintf(tw, "    %s\t%s\tattempt %d\t%s\n", formatTime(ev.At), ev.State, ev.Attempt, detail)
			}
			if err := tw.Flush(); err != nil {
				return fmt.Errorf("write status: %w", err)
			}
		}
	}

	switch {
	case rep.Live != nil:
		fmt.Fprintf(out, "\nRunning now (run %s): %s", rep.RunID, progressLine(*rep.Live))
		if rep.Live.Reported != "" {
			fmt.Fprintf(out, "  device reports %s", rep.Live.Reported)
		}
		fmt.Fprintln(out)
	case rep.Running:
		fmt.Fprintf(out, "\nRunning now (run %s); live state unavailable.\n", rep.RunID)
	case rep.LiveError == "":
		fmt.Fprintln(out, "\nNo upgrade running.")
	}
	return nil
}

func (e *appEnv) cancelAction(cCtx *cli.Context) error {
	id, err := deviceFlag(cCtx)
	if err != nil {
		return err
	}
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	wid := ota.DeviceWorkflowID(id)
	notRunning := cli.Exit(fmt.Sprintf("device %s has no upgrade running (workflow %s): nothing to cancel", id, wid), exitFailure)
	runID, err := runningUpgrade(ctx, c, id)
	if err != nil {
		return err
	}
	if runID == "" {
		return notRunning
	}
	if err := c.CancelWorkflow(ctx, wid, runID); err != nil {
		var notFound *serviceerror.NotFound
		if errors.As(err, &notFound) { // it ended meanwhile
			return notRunning
		}
		return fmt.Errorf("cancel workflow %s run %s: %w", wid, runID, err)
	}
	fmt.Fprintf(e.out, "Cancel requested for the upgrade of %s (workflow %s, run %s).\n", id, wid, runID)
	if !cCtx.Bool("wait") {
		return nil
	}
	st, err := awaitEnd(ctx, newOutageWatch(e.errOut, c, wid), func(ctx context.Context) (ota.UpgradeStatus, error) {
		return ota.UpgradeResult(ctx, c.GetWorkflow(ctx, wid, runID))
	})
	st = plainStatus(st)
	if ctx.Err() != nil {
		return cli.Exit("stopped waiting; the cancel request stands", exitInterrupted)
	}
	if st.State == "" {
		return fmt.Errorf("upgrade of %s (workflow %s, run %s) ended without a result: %w", id, wid, runID, err)
	}
	fmt.Fprintln(e.out, finalLine(st))
	if st.State != ota.StateCanceled {
		return cli.Exit(fmt.Sprintf("the upgrade of %s ended %s before the cancel took effect", id, st.State), exitFailure)
	}
	return nil
}

// requestCancel asks Temporal to cancel a workflow run, for a reason the run's history keeps
// (the WorkflowExecutionCancelRequested event), which client.CancelWorkflow cannot give.
func requestCancel(ctx context.Context, c client.Client, namespace, workflowID, runID, reason string) error {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("cancel workflow %s: %w", workflowID, err)
	}
	_, err := c.WorkflowService().RequestCancelWorkflowExecution(ctx, &workflowservice.RequestCancelWorkflowExecutionRequest{
		Namespace:         namespace,
		WorkflowExecution: &commonpb.WorkflowExecution{WorkflowId: workflowID, RunId: runID},
		Identity:          "starter",
		RequestId:         hex.EncodeToString(id[:]),
		Reason:            reason,
	})
	if err != nil {
		return fmt.Errorf("cancel workflow %s run %s: %w", workflowID, runID, err)
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// formatMap formats a map as sorted key=value pairs.
func formatMap(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}

func formatTime(t time.Time) string { return t.Local().Format(time.RFC3339) }

func formatTimePtr(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return formatTime(*t)
}
