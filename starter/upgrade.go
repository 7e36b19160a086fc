package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// pollInterval is how often `upgrade --wait` asks the workflow for its state.
const pollInterval = 500 * time.Millisecond

func upgradeCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "upgrade",
		Usage:     "start the upgrade of one device (and, with --wait, follow it to the end)",
		UsageText: "starter upgrade --device D --type T --version V --url U --md5 M --size S [options]",
		Description: "Starts the workflow " + ota.DeviceWorkflowID("<device>") + ", which sends the device the package URL,\n" +
			"follows its progress and succeeds when the device reports the new version.\n" +
			"Get --md5 and --size with `starter package inspect --url U`, or --sidecar FILE and a signature\n" +
			"from `starter package sign`: the worker then checks the signature and the download's sha256\n" +
			"before the first command. The device must be registered and enabled, and, with\n" +
			"--compatible-label/--compatible-versions, fit the package (checked in DATABASE_URL before\n" +
			"anything starts, exit 2 otherwise; the worker refuses a device that does not fit too).\n" +
			"Exit codes: 0 started (with --wait: succeeded or skipped), 1 failed/timed out/canceled,\n" +
			"2 bad input (an unknown or disabled device too), 3 the device already has an upgrade running.",
		Flags: slices.Concat(
			[]cli.Flag{&cli.StringFlag{Name: "device", Usage: "device `ID` (required)"}},
			packageFlags(),
			attemptFlags(),
			[]cli.Flag{
				&cli.BoolFlag{Name: "wait", Usage: "follow the upgrade's progress and wait for its end"},
				&cli.BoolFlag{Name: "json", Usage: "print one JSON object (progress lines go to stderr)"},
			},
		),
		Before: requireFlags(append([]string{"device"}, packageRequired...)...),
		Action: e.upgradeAction,
	}
}

func (e *appEnv) upgradeAction(cCtx *cli.Context) error {
	req, err := upgradeRequest(cCtx)
	if err != nil {
		return err
	}
	if err := e.checkDevice(cCtx, req); err != nil {
		return err
	}
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	return e.startUpgrade(cCtx.Context, c, req, upgradeOutput{
		wait: cCtx.Bool("wait"), json: cCtx.Bool("json"), link: webUILink(cCtx, ota.DeviceWorkflowID(req.DeviceID)),
	})
}

// checkDevice refuses, as bad input (exit code 2) and before anything is started, an upgrade
// of a device the registry does not know or holds disabled, or that the package does not fit:
// its workflow would only fail and leave a failed record. (A device removed, disabled or
// changed in the moment between this check and the start still fails in the workflow, which
// does not send it a command.)
func (e *appEnv) checkDevice(cCtx *cli.Context, req ota.UpgradeRequest) error {
	id := req.DeviceID
	if cCtx.String(flagDatabaseURL) == "" {
		return usageErrorf(cCtx, "the upgrade checks the device registry first: set --%s (before the command) or DATABASE_URL", flagDatabaseURL)
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	dev, err := st.GetDevice(cCtx.Context, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return cli.Exit(fmt.Sprintf("unknown device %s: nothing was started; register it first (starter devices add --device %s), "+
			"or see the registered ones with `starter devices list`", id, id), exitUsage)
	case err != nil:
		return fmt.Errorf("check device %s: %w", id, err)
	case dev.Disabled:
		return cli.Exit(fmt.Sprintf("device %s is disabled: nothing was started; it cannot connect or receive commands "+
			"until `starter devices enable --device %s`", id, id), exitUsage)
	}
	if req.Compat == nil {
		return nil
	}
	reported := dev.Reported[req.WithDefaults().VersionKey]
	if reported == req.Version {
		return nil // already on the target: the upgrade ends skipped
	}
	if fits, why := req.Compat.Fits(dev.Labels, reported); !fits {
		return cli.Exit(fmt.Sprintf("device %s does not fit the package: %s; nothing was started", dev.ID, why), exitUsage)
	}
	return nil
}

// packageRequired are the flags of packageFlags that must be given (--sidecar gives all but
// the URL: see sidecarFields).
var packageRequired = []string{"type", "version", "url", "md5", "size"}

// packageFlags describe the package a device installs, its signature and the devices it
// fits; `upgrade`, `rollout start` and `rollout schedule` share them, and upgradeTemplate
// reads them.
func packageFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "type", Usage: "upgrade `TYPE`: app, os, firmware... (required)"},
		&cli.StringFlag{Name: "version", Usage: "target `VERSION` (required)"},
		&cli.StringFlag{Name: "url", Usage: "http(s) `URL` the device downloads the package from (required)"},
		&cli.StringFlag{Name: "md5", Usage: "package md5, 32 lowercase hex `DIGITS` (required)"},
		&cli.Int64Flag{Name: "size", Usage: "package size in `BYTES`, more than 0 (required)"},
		&cli.StringFlag{Name: "version-key", Usage: "status `KEY` that holds the version (default TYPE_ver)"},
	}, trustFlags()...)
}

// attemptFlags are the per-device timeout and retry flags, shared like packageFlags.
func attemptFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "start-timeout", Value: ota.DefaultStartTimeout,
			Usage: "wait at most this `DURATION` for the device's first report after a command"},
		&cli.DurationFlag{Name: "silence-timeout", Value: ota.DefaultSilenceTimeout,
			Usage: "longest silence (`DURATION`) between progress reports while downloading"},
		&cli.DurationFlag{Name: "install-timeout", Value: ota.DefaultInstallTimeout,
			Usage: "wait at most this `DURATION` for the new version after the download"},
		&cli.DurationFlag{Name: "deadline", Value: ota.DefaultDeadline,
			Usage: "`DURATION` bound on the whole upgrade, all attempts included"},
		&cli.IntFlag{Name: "max-attempts", Value: ota.DefaultMaxAttempts,
			Usage: "`N` commands sent at most, 1 to 100"},
		&cli.StringFlag{Name: "retry-codes", Value: formatCodes(ota.DefaultRetryCodes),
			Usage: "device error `CODES` that start another attempt, comma-separated, or \"none\""},
		&cli.BoolFlag{Name: "retry-timeouts", Value: true,
			Usage: "start another attempt after a timeout (--retry-timeouts=false to stop)"},
		&cli.DurationFlag{Name: "retry-backoff", Value: ota.DefaultRetryBackoff,
			Usage: "wait (`DURATION`) before the second attempt; doubles for each further one"},
		soakFlag(),
	}
}

// upgradeRequest builds and checks the request from the flags; every error is a usage error.
func upgradeRequest(cCtx *cli.Context) (ota.UpgradeRequest, error) {
	req, err := upgradeTemplate(cCtx)
	if err != nil {
		return req, err
	}
	req.DeviceID = cCtx.String("device")
	if err := protocol.ValidateDeviceID(req.DeviceID); err != nil {
		return req, usageErrorf(cCtx, "--device: %v", err)
	}
	if err := req.WithDefaults().Validate(); err != nil {
		msg := strings.TrimPrefix(err.Error(), protocol.ErrInvalidMessage.Error()+": ")
		return req, usageErrorf(cCtx, "invalid upgrade: %s", msg)
	}
	return req, nil
}

// upgradeTemplate reads the flags of packageFlags and attemptFlags into an upgrade request
// without a device, checking what people get wrong most so that the message names the flag;
// every error is a usage error. The caller validates the whole request.
func upgradeTemplate(cCtx *cli.Context) (ota.UpgradeRequest, error) {
	duration := func(name string) ota.Duration { return ota.Duration(cCtx.Duration(name)) }
	req := ota.UpgradeRequest{
		Type:           cCtx.String("type"),
		Version:        cCtx.String("version"),
		URL:            cCtx.String("url"),
		MD5:            cCtx.String("md5"),
		Size:           cCtx.Int64("size"),
		VersionKey:     cCtx.String("version-key"),
		StartTimeout:   duration("start-timeout"),
		SilenceTimeout: duration("silence-timeout"),
		InstallTimeout: duration("install-timeout"),
		Deadline:       duration("deadline"),
		MaxAttempts:    cCtx.Int("max-attempts"),
		RetryBackoff:   duration("retry-backoff"),
		Soak:           duration(flagSoak),
	}
	if err := readPackageTrust(cCtx, &req); err != nil {
		return req, err
	}
	retryTimeouts := cCtx.Bool("retry-timeouts")
	req.RetryTimeouts = &retryTimeouts
	// Zero would silently mean "the default" in the request: a flag given as 0 is refused.
	for _, name := range []string{"start-timeout", "silence-timeout", "install-timeout", "deadline", "retry-backoff"} {
		if cCtx.Duration(name) <= 0 {
			return req, usageErrorf(cCtx, "--%s must be more than 0, not %s", name, cCtx.Duration(name))
		}
	}
	if req.Soak < 0 {
		return req, usageErrorf(cCtx, "--%s must be 0 (no soak) or more, not %s", flagSoak, req.Soak)
	}
	if req.MaxAttempts < 1 {
		return req, usageErrorf(cCtx, "--max-attempts must be 1 to 100, not %d", req.MaxAttempts)
	}
	if cCtx.IsSet("version-key") && req.VersionKey == "" {
		return req, usageErrorf(cCtx, "--version-key must not be empty")
	}
	codes, err := parseCodes(cCtx.String("retry-codes"))
	if err != nil {
		return req, usageErrorf(cCtx, "--retry-codes: %v", err)
	}
	req.RetryCodes = codes
	if err := protocol.ValidateMD5(req.MD5); err != nil {
		hint := ""
		if protocol.ValidateMD5(strings.ToLower(req.MD5)) == nil {
			hint = " (write it in lowercase)"
		}
		return req, usageErrorf(cCtx, "--md5 must be 32 lowercase hex digits, not %q%s", req.MD5, hint)
	}
	if req.Size <= 0 {
		return req, usageErrorf(cCtx, "--size must be more than 0 bytes, not %d", req.Size)
	}
	if err := checkPackageURL(req.URL); err != nil {
		return req, usageErrorf(cCtx, "--url: %v", err)
	}
	if req.Compat, err = readCompat(cCtx); err != nil {
		return req, err
	}
	if err := checkSignaturePolicy(cCtx, req); err != nil {
		return req, err
	}
	return req, nil
}

// checkPackageURL checks the URL is one a device can download from: absolute http(s) with a host.
func checkPackageURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL a device can download from", raw)
	}
	return nil
}

// parseCodes parses a comma-separated list of device error codes; "none" (or "") is an empty,
// non-nil list: retry none.
func parseCodes(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" || strings.EqualFold(s, "none") {
		return []int{}, nil
	}
	var codes []int
	for _, part := range strings.Split(s, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", strings.TrimSpace(part))
		}
		if c < protocol.CodeOther || c > protocol.CodeDownloadFailed {
			return nil, fmt.Errorf("%d is not a device error code (%d..%d)", c, protocol.CodeOther, protocol.CodeDownloadFailed)
		}
		codes = append(codes, c)
	}
	return codes, nil
}

func formatCodes(codes []int) string {
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}

// upgradeOutput says how `upgrade` reports.
type upgradeOutput struct {
	wait bool
	json bool
	link string // Web UI page of the workflow
}

// upgradeReport is the JSON output of `upgrade`.
type upgradeReport struct {
	DeviceID   string             `json:"device_id"`
	WorkflowID string             `json:"workflow_id"`
	RunID      string             `json:"run_id"`
	WebUI      string             `json:"web_ui"`
	Result     *ota.UpgradeStatus `json:"result,omitempty"`
	Error      string             `json:"error,omitempty"`
}

// startUpgrade starts the upgrade and, when asked, follows it to its end.
func (e *appEnv) startUpgrade(ctx context.Context, c client.Client, req ota.UpgradeRequest, o upgradeOutput) error {
	run, err := ota.StartDeviceUpgrade(ctx, c, req)
	var running *ota.AlreadyRunningError
	if errors.As(err, &running) {
		return cli.Exit(fmt.Sprintf("%v\nSee it with `starter status --device %s` or %s", running, req.DeviceID, o.link), exitAlreadyRunning)
	}
	if err != nil {
		return err
	}
	rep := upgradeReport{DeviceID: req.DeviceID, WorkflowID: run.GetID(), RunID: run.GetRunID(), WebUI: o.link}
	if !o.json {
		fmt.Fprintf(e.out, "Started the upgrade of %s to %s %s\n", req.DeviceID, req.Type, req.Version)
		fmt.Fprintf(e.out, "  workflow  %s\n  run       %s\n  web UI    %s\n", rep.WorkflowID, rep.RunID, rep.WebUI)
	}
	if !o.wait {
		if o.json {
			return writeJSON(e.out, rep)
		}
		fmt.Fprintf(e.out, "Follow it with `starter status --device %s`.\n", req.DeviceID)
		return nil
	}

	progress := e.out
	if o.json {
		progress = e.errOut
	}
	st, err := followUpgrade(ctx, c, run, progress, e.errOut, pollInterval)
	st = plainStatus(st)
	if ctx.Err() != nil {
		return cli.Exit(fmt.Sprintf("stopped waiting: the upgrade of %s goes on (workflow %s, run %s); "+
			"follow it with `starter status --device %s`, stop it with `starter cancel --device %s`",
			req.DeviceID, rep.WorkflowID, rep.RunID, req.DeviceID, req.DeviceID), exitInterrupted)
	}
	if st.State == "" {
		// No status at all: the run ended in a way the workflow did not report (terminated,
		// timed out by Temporal, invalid request).
		if err == nil {
			err = errors.New("the workflow returned no status")
		}
		return fmt.Errorf("upgrade of %s (workflow %s, run %s) ended without a result: %w", req.DeviceID, rep.WorkflowID, rep.RunID, err)
	}
	rep.Result = &st
	if err != nil {
		rep.Error = errtext.Plain(err)
	}
	if o.json {
		if werr := writeJSON(e.out, rep); werr != nil {
			return werr
		}
	} else {
		fmt.Fprintln(e.out, finalLine(st))
	}
	if !st.State.Successful() {
		return cli.Exit(fmt.Sprintf("upgrade of %s to %s %s %s", st.DeviceID, st.Type, st.Version, outcome(st)), exitFailure)
	}
	return nil
}

// followUpgrade prints a progress line on w whenever the state, progress or attempt of the
// run changes (polling its state query every interval) until the run ends, and returns the
// final status as ota.UpgradeResult does. It rides out outages of the Temporal server,
// saying once per outage on errOut that it retries.
func followUpgrade(ctx context.Context, c client.Client, run client.WorkflowRun, w, errOut io.Writer, interval time.Duration) (ota.UpgradeStatus, error) {
	type result struct {
		st  ota.UpgradeStatus
		err error
	}
	outage := newOutageWatch(errOut, c, run.GetID())
	done := make(chan result, 1)
	go func() {
		st, err := awaitEnd(ctx, outage, func(ctx context.Context) (ota.UpgradeStatus, error) {
			return ota.UpgradeResult(ctx, run)
		})
		done <- result{st, err}
	}()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var last string
	for {
		select {
		case r := <-done:
			return r.st, r.err
		case <-ticker.C:
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := queryState(qctx, c, run.GetID(), run.GetRunID())
		cancel()
		if err != nil {
			// Before the worker has run the first workflow task there is nothing to query; a
			// transient failure only delays a progress line. The result decides the outcome.
			outage.check(ctx)
			continue
		}
		outage.answered()
		if line := progressLine(st); line != last {
			fmt.Fprintln(w, line)
			last = line
		}
	}
}

// queryState asks a running upgrade workflow for its state.
func queryState(ctx context.Context, c client.Client, workflowID, runID string) (ota.UpgradeStatus, error) {
	var st ota.UpgradeStatus
	v, err := c.QueryWorkflow(ctx, workflowID, runID, ota.QueryState)
	if err != nil {
		return st, fmt.Errorf("query state of workflow %s: %w", workflowID, err)
	}
	if err := v.Get(&st); err != nil {
		return st, fmt.Errorf("decode state of workflow %s: %w", workflowID, err)
	}
	return plainStatus(st), nil
}

// plainStatus is st with its desc in plain words: an upgrade recorded by an earlier version
// may hold the SDK's wrapping of an activity's error there.
func plainStatus(st ota.UpgradeStatus) ota.UpgradeStatus {
	st.Desc = errtext.PlainText(st.Desc)
	return st
}

// progressLine is one line of live progress, e.g. "dev-1  downloading  42%  attempt 1/3".
func progressLine(st ota.UpgradeStatus) string {
	line := fmt.Sprintf("%s  %s  %d%%  attempt %d/%d", st.DeviceID, st.State, st.Progress, st.Attempt, st.MaxAttempts)
	if st.ErrorCode != 0 && !st.State.Final() {
		line += "  after " + codeDesc(st.ErrorCode, st.Desc)
	}
	if st.State == ota.StateSucceeded && st.SoakUntil != nil {
		line += "  soaking until " + formatTime(*st.SoakUntil)
	}
	return line
}

// finalLine is the progress line of the final state, with its error if any.
func finalLine(st ota.UpgradeStatus) string {
	line := fmt.Sprintf("%s  %s  %d%%  attempt %d/%d", st.DeviceID, st.State, st.Progress, st.Attempt, st.MaxAttempts)
	if !st.State.Successful() {
		line += "  " + outcome(st)
	} else if st.Reported != "" {
		line += "  device reports " + st.Reported
	}
	return line
}

// outcome says how an upgrade ended: state, code and desc.
func outcome(st ota.UpgradeStatus) string {
	s := string(st.State)
	if st.ErrorCode != 0 || st.Desc != "" {
		s += ": " + codeDesc(st.ErrorCode, st.Desc)
	}
	return s
}

// codeDesc describes a device error code and its text.
func codeDesc(code int, desc string) string {
	if code == 0 {
		return desc
	}
	s := fmt.Sprintf("code %d (%s)", code, protocol.CodeText(code))
	if desc != "" {
		s += " " + desc
	}
	return s
}
