package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// watchInterval is how often `rollout status --watch` and `rollout start --wait` ask the
// rollout for its progress.
const watchInterval = time.Second

func rolloutCommand(e *appEnv) *cli.Command {
	nameCommand := func(name, usage, args, desc string, flags []cli.Flag, action cli.ActionFunc) *cli.Command {
		return &cli.Command{
			Name:        name,
			Usage:       usage,
			UsageText:   "starter rollout " + name + " NAME" + args,
			Description: desc,
			Flags:       flags,
			Action:      action,
		}
	}
	return &cli.Command{
		Name:  "rollout",
		Usage: "roll an upgrade out to many devices in waves, and steer it",
		Description: "A rollout is the workflow " + ota.RolloutWorkflowID("NAME") + ": it upgrades the targets in waves,\n" +
			"within in-flight and rate limits, and pauses or aborts at a failure threshold.\n" +
			"A schedule (`rollout schedule`) starts it as the same workflow, and skips a start while it runs.\n" +
			"A rollout started by a schedule of an earlier version runs as " + ota.RolloutWorkflowID("NAME") + "-<scheduled time>;\n" +
			"the commands that take NAME find it by name all the same.",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:      "start",
				Usage:     "start a rollout (and, with --wait, follow it to the end)",
				UsageText: "starter rollout start --name R --type T --version V --url U --md5 M --size S TARGETS [options]",
				Description: "TARGETS: --devices and/or --prefix and --where; a device must match every one given.\n" +
					"Of the devices they match, the rollout leaves out those disabled, never seen (no status report yet),\n" +
					"up to date, incompatible with the package, or in quarantine (`starter rollout plan` shows how many).\n" +
					"An explicit list (--devices or --devices-file) is stored in PostgreSQL (DATABASE_URL) under a\n" +
					"key of its own. Of two starts of one name at once, exactly one starts the rollout, which\n" +
					"upgrades exactly its own list; the other starts nothing, deletes its list and exits 3.\n" +
					"Devices that already report the version are left out unless --include-up-to-date.\n" +
					"--continuous keeps the rollout open after its waves for the devices that come to match later.\n" +
					"It waits for the rollout's pre-flight (the package downloaded once and checked, the targets\n" +
					"fixed) and reports it: a package that fails the check, or targets that match no device\n" +
					"(unless --allow-empty), end it with exit code 1.\n" +
					"Exit codes: 0 started (with --wait: completed), 1 failed its pre-flight or matched no device\n" +
					"(with --wait: the rollout ended other than completed), 2 bad input, 3 a rollout of that name\n" +
					"is already running, 130 interrupted while waiting (the rollout goes on).",
				Flags: slices.Concat(rolloutRequestFlags(), notifyFlags(), []cli.Flag{
					&cli.BoolFlag{Name: "allow-empty", Usage: "a rollout that matches no device is no failure (exit 0)"},
					&cli.BoolFlag{Name: "wait", Usage: "follow the rollout's progress until it ends"},
					&cli.BoolFlag{Name: "json", Usage: "print one JSON object (with --wait, progress goes to stderr)"},
				}),
				Before: requireFlags(append([]string{"name"}, packageRequired...)...),
				Action: e.rolloutStartAction,
			},
			rolloutPlanCommand(e),
			nameCommand("status", "show a rollout's progress: state, waves, counts by state", " [--json] [--watch]",
				"Asks the rollout workflow for its progress (a running or an ended one). With DATABASE_URL set,\n"+
					"it also shows the upgrade records of PostgreSQL by state, and whether they agree.\n"+
					"--watch redraws every second until the rollout ends (on a terminal; otherwise it prints\n"+
					"a new block, or with --json a new line, whenever something changed).\n"+
					"Wave bars: # finished, ~ running, . not started yet.",
				[]cli.Flag{
					&cli.BoolFlag{Name: "json", Usage: "print one JSON object (with --watch, one per line)"},
					&cli.BoolFlag{Name: "watch", Usage: "follow the progress until the rollout ends"},
				}, e.rolloutStatusAction),
			nameCommand("pause", "stop starting device upgrades; the running ones finish", " [--reason TEXT]", "",
				[]cli.Flag{&cli.StringFlag{Name: "reason", Usage: "why, for the record (`TEXT`)"}}, e.rolloutPauseAction),
			nameCommand("resume", "start device upgrades again after a pause", "", "", nil, e.rolloutResumeAction),
			nameCommand("approve", "let the wave waiting for approval start", " [--wave N]", "",
				[]cli.Flag{&cli.IntFlag{Name: "wave", Usage: "approve only if wave `N` is the one waiting (0: whichever waits)"}},
				e.rolloutApproveAction),
			nameCommand("close", "close a continuous rollout: it takes on no more devices and completes once its running upgrades end",
				" [--reason TEXT]", "Only a continuous rollout (`rollout start --continuous`) is closed; any other ends by itself after\n"+
					"its waves. Closed before its waves are done, it completes after them.",
				[]cli.Flag{&cli.StringFlag{Name: "reason", Usage: "why, for the record (`TEXT`)"}}, e.rolloutCloseAction),
			nameCommand("cancel", "end a rollout: no new device upgrades; running ones finish unless --cancel-running", " [--cancel-running] [--reason TEXT] [--wait]", "",
				[]cli.Flag{
					&cli.BoolFlag{Name: "cancel-running", Usage: "also cancel the device upgrades running now"},
					&cli.StringFlag{Name: "reason", Usage: "why, for the record (`TEXT`)"},
					&cli.BoolFlag{Name: "wait", Usage: "wait until the rollout has ended"},
				}, e.rolloutCancelAction),
			{
				Name:      "list",
				Usage:     "list rollouts, newest first",
				UsageText: "starter rollout list [--state S] [--json]",
				Description: "Lists each rollout once. A name used again (a rollout started after the last one of\n" +
					"the name ended, or by a schedule) lists each of its rollouts; OF ITS NAME (\"latest\" in\n" +
					"--json) tells the latest, the one `rollout status NAME` and the other commands reach.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "state", Usage: "only rollouts in `STATE`: " + joinStates(rolloutStates)},
					&cli.BoolFlag{Name: "json", Usage: "print a JSON array"},
				},
				Before: requireFlags(),
				Action: e.rolloutListAction,
			},
			rolloutScheduleCommand(e),
		},
	}
}

// rolloutRequestFlags are the flags that make a RolloutRequest, shared by `rollout start` and
// `rollout schedule`.
func rolloutRequestFlags() []cli.Flag {
	return slices.Concat(
		[]cli.Flag{&cli.StringFlag{Name: "name", Usage: "rollout `NAME`, 1 to 64 of A-Z a-z 0-9 _ . - (required)"}},
		packageFlags(),
		[]cli.Flag{
			&cli.StringFlag{Name: "devices", Usage: "target the devices `IDS`, comma-separated"},
			&cli.StringFlag{Name: "devices-file", Usage: "target the devices listed in `FILE`, one ID a line, # starts a comment"},
			&cli.StringFlag{Name: "prefix", Usage: "target the devices whose ID starts with `P`"},
			&cli.StringSliceFlag{Name: "where", Usage: "target the devices with this label or reported status `KEY=VALUE`, repeatable"},
			&cli.BoolFlag{Name: "include-up-to-date", Usage: "also target devices that already report the version (they end skipped)"},
			&cli.StringFlag{Name: "waves", Usage: "cumulative `WAVES`: percentages or device counts, each with an optional :PERCENT success\n" +
				"\tthreshold, e.g. 1%,10%,50%:95,100% (default: one wave of 100%)"},
			&cli.Float64Flag{Name: "wave-success", Usage: "success threshold `PERCENT` of every wave without its own"},
			&cli.DurationFlag{Name: "bake", Usage: "wait this `DURATION` after every wave but the last"},
			&cli.BoolFlag{Name: "approve-waves", Usage: "every wave after the first waits for approval (starter rollout approve NAME)"},
			&cli.IntFlag{Name: "max-in-flight", Value: ota.DefaultMaxInFlight, Usage: "at most `N` device upgrades at once, 1 to 1000"},
			&cli.Float64Flag{Name: "max-per-minute", Usage: "start at most `RATE` device upgrades a minute (0: no bound)"},
			&cli.StringFlag{Name: "ramp", Usage: "`START,FACTOR,STEP`: start START a minute, times FACTOR every STEP (e.g. 10,2,1m),\n" +
				"\tup to --max-per-minute"},
			&cli.Float64Flag{Name: "failure-threshold", Usage: "take --on-failure when this `PERCENT` of finished devices failed or timed out (0: never)"},
			&cli.IntFlag{Name: "failure-min", Value: ota.DefaultFailureMinCount, Usage: "... and at least `N` did"},
			&cli.StringFlag{Name: "on-failure", Value: ota.ActionPause,
				Usage: "`ACTION` at the failure threshold or below a wave's success threshold: " + ota.ActionPause + " or " + ota.ActionAbort},
			&cli.StringFlag{Name: "window", Usage: "daily maintenance `WINDOW` HH:MM-HH:MM (e.g. 01:00-05:00): devices start only inside it"},
			&cli.StringFlag{Name: "tz", Value: "UTC", Usage: "time `ZONE` of --window (and of schedule --cron), e.g. Europe/Berlin"},
			&cli.BoolFlag{Name: "skip-preflight", Usage: "do not download the package once to check md5 and size before the rollout"},
			&cli.BoolFlag{Name: "continuous", Usage: "after its waves, stay open and upgrade every device that comes to match the targets\n" +
				"\t(registered, seen again, changed) until `starter rollout close NAME`"},
		},
		attemptFlags(),
	)
}

// rolloutSpec is a checked rollout request with the explicit device list it needs stored.
type rolloutSpec struct {
	req ota.RolloutRequest
	// ids is the explicit target list (--devices, --devices-file), nil without one.
	ids []string
}

// rolloutRequest builds and checks a rollout request from the flags of rolloutRequestFlags;
// every error is a usage error. tzForCron says --tz may be given without --window (schedule
// --cron reads it too).
func rolloutRequest(cCtx *cli.Context, tzForCron bool) (rolloutSpec, error) {
	var spec rolloutSpec
	up, err := upgradeTemplate(cCtx)
	if err != nil {
		return spec, err
	}
	req := ota.RolloutRequest{
		Name:            cCtx.String("name"),
		Upgrade:         up,
		MaxInFlight:     cCtx.Int("max-in-flight"),
		MaxPerMinute:    cCtx.Float64("max-per-minute"),
		FailurePercent:  cCtx.Float64("failure-threshold"),
		FailureMinCount: cCtx.Int("failure-min"),
		FailureAction:   cCtx.String("on-failure"),
		SkipPreflight:   cCtx.Bool("skip-preflight"),
		Continuous:      cCtx.Bool("continuous"),
	}
	if err := checkRolloutName(req.Name); err != nil {
		return spec, usageErrorf(cCtx, "--name: %v", err)
	}
	if req.Targets, spec.ids, err = rolloutTargets(cCtx); err != nil {
		return spec, err
	}
	if req.Waves, err = rolloutWaves(cCtx); err != nil {
		return spec, err
	}
	// Zero would silently mean "the default" in the request: such flags are refused.
	switch {
	case req.MaxInFlight < 1:
		return spec, usageErrorf(cCtx, "--max-in-flight must be 1 to 1000, not %d", req.MaxInFlight)
	case req.MaxPerMinute < 0:
		return spec, usageErrorf(cCtx, "--max-per-minute must be 0 (no bound) or more, not %g", req.MaxPerMinute)
	case req.FailurePercent < 0 || req.FailurePercent > 100:
		return spec, usageErrorf(cCtx, "--failure-threshold must be a percentage, 0 (never) to 100, not %g", req.FailurePercent)
	case req.FailureMinCount < 1:
		return spec, usageErrorf(cCtx, "--failure-min must be at least 1, not %d", req.FailureMinCount)
	case req.FailureAction != ota.ActionPause && req.FailureAction != ota.ActionAbort:
		return spec, usageErrorf(cCtx, "--on-failure must be %s or %s, not %q", ota.ActionPause, ota.ActionAbort, req.FailureAction)
	}
	if cCtx.IsSet("ramp") {
		r, err := parseRamp(cCtx.String("ramp"))
		if err != nil {
			return spec, usageErrorf(cCtx, "--ramp: %v", err)
		}
		req.Ramp = &r
	}
	if cCtx.IsSet("window") {
		w, err := parseWindow(cCtx.String("window"), cCtx.String("tz"))
		if err != nil {
			return spec, usageErrorf(cCtx, "--window: %v", err)
		}
		req.Window = &w
	} else if cCtx.IsSet("tz") && !tzForCron {
		return spec, usageErrorf(cCtx, "--tz is the time zone of --window: give --window too")
	}
	if spec.ids != nil {
		// A stand-in for the validation: the list's key comes when it is stored (storeTargets).
		req.Targets.List = req.Name
		if cCtx.String(flagDatabaseURL) == "" {
			return spec, usageErrorf(cCtx, "an explicit device list is stored in PostgreSQL: set --%s (before the command) or DATABASE_URL", flagDatabaseURL)
		}
	}
	if err := req.WithDefaults().Validate(); err != nil {
		msg := strings.TrimPrefix(err.Error(), protocol.ErrInvalidMessage.Error()+": ")
		return spec, usageErrorf(cCtx, "invalid rollout: %s", msg)
	}
	spec.req = req
	return spec, nil
}

// rolloutTargets reads the target flags: the filters, and the explicit list if any.
func rolloutTargets(cCtx *cli.Context) (ota.Targets, []string, error) {
	t := ota.Targets{Prefix: cCtx.String("prefix"), IncludeUpToDate: cCtx.Bool("include-up-to-date")}
	if cCtx.IsSet("prefix") && t.Prefix == "" {
		return t, nil, usageErrorf(cCtx, "--prefix must not be empty")
	}
	if where := cCtx.StringSlice("where"); len(where) > 0 {
		m, err := parseKeyValues(where, "filter")
		if err != nil {
			return t, nil, usageErrorf(cCtx, "--where: %v", err)
		}
		t.Where = m
	}
	var ids []string
	switch {
	case cCtx.IsSet("devices") && cCtx.IsSet("devices-file"):
		return t, nil, usageErrorf(cCtx, "--devices and --devices-file both give the device list: give one")
	case cCtx.IsSet("devices"):
		var err error
		if ids, err = parseDeviceList(strings.NewReader(strings.ReplaceAll(cCtx.String("devices"), ",", "\n")), "item"); err != nil {
			return t, nil, usageErrorf(cCtx, "--devices: %v", err)
		}
	case cCtx.IsSet("devices-file"):
		name := cCtx.String("devices-file")
		f, err := os.Open(name)
		if err != nil {
			return t, nil, usageErrorf(cCtx, "--devices-file: %v", err)
		}
		ids, err = parseDeviceList(f, "line")
		f.Close()
		if err != nil {
			return t, nil, usageErrorf(cCtx, "--devices-file %s: %v", name, err)
		}
	}
	if ids == nil && t.Prefix == "" && len(t.Where) == 0 {
		return t, nil, usageErrorf(cCtx, "no targets: give --devices, --devices-file, --prefix and/or --where")
	}
	return t, ids, nil
}

// parseDeviceList reads device IDs, one a line (from --devices, one an item between commas,
// which errors call items); blank lines and everything from a # are ignored. Every ID must be
// valid; duplicates count once. An empty list is an error.
func parseDeviceList(r io.Reader, unit string) ([]string, error) {
	ids := []string{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		id := strings.TrimSpace(text)
		if id == "" {
			continue
		}
		if err := protocol.ValidateDeviceID(id); err != nil {
			return nil, fmt.Errorf("%s %d: %q: %w", unit, line, id, err)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read device list: %w", err)
	}
	if len(ids) == 0 {
		return nil, errors.New("no device IDs")
	}
	return ids, nil
}

// rolloutWaves reads --waves, --wave-success, --bake and --approve-waves.
func rolloutWaves(cCtx *cli.Context) ([]ota.Wave, error) {
	waves := []ota.Wave{{Percent: 100}}
	if cCtx.IsSet("waves") {
		var err error
		if waves, err = ota.ParseWaves(cCtx.String("waves")); err != nil {
			return nil, usageErrorf(cCtx, "--waves: %v", err)
		}
	}
	if cCtx.IsSet("wave-success") {
		v := cCtx.Float64("wave-success")
		if v <= 0 || v > 100 {
			return nil, usageErrorf(cCtx, "--wave-success must be a percentage above 0, up to 100, not %g", v)
		}
		for i := range waves {
			if waves[i].SuccessThreshold == 0 {
				waves[i].SuccessThreshold = v
			}
		}
	}
	if cCtx.IsSet("bake") {
		d := cCtx.Duration("bake")
		if d <= 0 {
			return nil, usageErrorf(cCtx, "--bake must be more than 0, not %s", d)
		}
		if len(waves) < 2 {
			return nil, usageErrorf(cCtx, "--bake waits between waves: give --waves with at least two")
		}
		for i := range waves[:len(waves)-1] {
			waves[i].Bake = ota.Duration(d)
		}
	}
	if cCtx.Bool("approve-waves") {
		if len(waves) < 2 {
			return nil, usageErrorf(cCtx, "--approve-waves holds every wave after the first: give --waves with at least two")
		}
		for i := range waves[1:] {
			waves[i+1].Approve = true
		}
	}
	return waves, nil
}

// parseRamp parses START,FACTOR,STEP, e.g. "10,2,1m".
func parseRamp(s string) (ota.Ramp, error) {
	var r ota.Ramp
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return r, fmt.Errorf("%q is not START,FACTOR,STEP (e.g. 10,2,1m)", s)
	}
	var err error
	if r.StartPerMinute, err = strconv.ParseFloat(strings.TrimSpace(parts[0]), 64); err != nil || !(r.StartPerMinute > 0) {
		return r, fmt.Errorf("the start rate %q must be a number of devices a minute above 0", parts[0])
	}
	if r.Factor, err = strconv.ParseFloat(strings.TrimSpace(parts[1]), 64); err != nil || !(r.Factor >= 1) {
		return r, fmt.Errorf("the factor %q must be a number, 1 or more", parts[1])
	}
	step, err := time.ParseDuration(strings.TrimSpace(parts[2]))
	if err != nil || step <= 0 {
		return r, fmt.Errorf("the step %q must be a duration above 0, e.g. 1m", parts[2])
	}
	r.Step = ota.Duration(step)
	return r, nil
}

// parseWindow parses HH:MM-HH:MM in time zone tz. The times and the zone are checked by the
// request's Validate, so that the rule lives in one place.
func parseWindow(s, tz string) (ota.Window, error) {
	start, end, ok := strings.Cut(s, "-")
	if !ok || strings.Contains(end, "-") {
		return ota.Window{}, fmt.Errorf("%q is not HH:MM-HH:MM (e.g. 01:00-05:00)", s)
	}
	return ota.Window{Start: strings.TrimSpace(start), End: strings.TrimSpace(end), TimeZone: tz}, nil
}

// rolloutNamePattern is the rule RolloutRequest.Validate applies to names (a test checks
// they agree); the commands that only take a name check it before dialling.
var rolloutNamePattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

func checkRolloutName(name string) error {
	if !rolloutNamePattern.MatchString(name) {
		return fmt.Errorf("a rollout name is 1 to 64 characters of A-Z a-z 0-9 _ . -, not %q", name)
	}
	return nil
}

// nameArg returns the rollout name of a command written `starter rollout CMD NAME [flags]`.
// urfave/cli stops reading flags at the first argument, so the flags after the name are
// parsed here, with the command's own definitions.
func nameArg(cCtx *cli.Context) (string, error) {
	args := cCtx.Args().Slice()
	if len(args) == 0 {
		return "", usageErrorf(cCtx, "give the rollout name: starter rollout %s NAME", cCtx.Command.Name)
	}
	name, rest := args[0], args[1:]
	if len(rest) > 0 {
		set := flag.NewFlagSet(cCtx.Command.Name, flag.ContinueOnError)
		set.SetOutput(io.Discard)
		for _, f := range cCtx.Command.Flags {
			if f == cli.HelpFlag {
				continue // a global: applying it would write to it
			}
			if err := f.Apply(set); err != nil {
				return "", usageErrorf(cCtx, "%v", err)
			}
		}
		help := set.Bool("help", false, "")
		set.BoolVar(help, "h", false, "")
		if err := set.Parse(rest); err != nil {
			return "", usageErrorf(cCtx, "%v", err)
		}
		if set.NArg() > 0 {
			return "", usageErrorf(cCtx, "unexpected argument %q (give one rollout name)", set.Arg(0))
		}
		if *help {
			if err := cli.ShowSubcommandHelp(cCtx); err != nil {
				return "", err
			}
			return "", cli.Exit("", 0)
		}
		var setErr error
		set.Visit(func(f *flag.Flag) {
			if err := cCtx.Set(f.Name, f.Value.String()); err != nil && setErr == nil {
				setErr = err
			}
		})
		if setErr != nil {
			return "", usageErrorf(cCtx, "%v", setErr)
		}
	}
	if err := checkRolloutName(name); err != nil {
		return "", usageErrorf(cCtx, "%v", err)
	}
	return name, nil
}

// rolloutStartReport is the JSON output of `rollout start`.
type rolloutStartReport struct {
	Name       string `json:"name"`
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
	WebUI      string `json:"web_ui"`
	// UnknownDevices are the IDs of the explicit list that are not registered: left out.
	UnknownDevices []string `json:"unknown_devices,omitempty"`
	// Preflight is the rollout's progress once its pre-flight ended: its targets and waves,
	// or, failed, why.
	Preflight *ota.RolloutProgress `json:"preflight,omitempty"`
	// Result is the rollout's final progress (with --wait).
	Result *ota.RolloutProgress `json:"result,omitempty"`
	Error  string               `json:"error,omitempty"`
}

func (e *appEnv) rolloutStartAction(cCtx *cli.Context) error {
	spec, err := rolloutRequest(cCtx, false)
	if err != nil {
		return err
	}
	receiver, err := notifyReceiver(cCtx)
	if err != nil {
		return err
	}
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	req := spec.req
	// Refused early, before a list is stored; the start itself settles a race.
	if err := refuseRunningRollout(ctx, c, req.Name); err != nil {
		return err
	}
	settleReceiver, err := e.addReceiver(cCtx, c, req.Name, receiver)
	if err != nil {
		return err
	}
	var unknown []string
	if spec.ids != nil {
		if req.Targets.List, unknown, err = e.storeTargets(cCtx, req.Name, spec.ids); err != nil {
			return err
		}
	}
	run, err := ota.StartRollout(ctx, c, req)
	if serr := settleReceiver(err == nil); serr != nil {
		fmt.Fprintf(e.errOut, "starter: warning: %v\n", serr)
	}
	var running *ota.RolloutRunningError
	if errors.As(err, &running) {
		// Another start of this name won: its rollout runs with its own list, and this
		// start's list goes.
		if spec.ids != nil {
			e.dropTargets(cCtx, req.Targets.List)
		}
		return alreadyRunning(req.Name, running.WorkflowID, running.RunID)
	}
	if err != nil {
		return err
	}
	if spec.ids != nil {
		e.pruneTargetLists(cCtx, c, req.Name, run.GetRunID(), req.Targets.List)
	}
	asJSON := cCtx.Bool("json")
	rep := rolloutStartReport{Name: req.Name, WorkflowID: run.GetID(), RunID: run.GetRunID(),
		WebUI: webUILink(cCtx, run.GetID()), UnknownDevices: unknown}
	progress := e.out
	if asJSON {
		progress = e.errOut
	}
	if !asJSON {
		fmt.Fprintf(e.out, "Started rollout %s: %s %s\n", req.Name, req.Upgrade.Type, req.Upgrade.Version)
		fmt.Fprintf(e.out, "  workflow  %s\n  run       %s\n  web UI    %s\n", rep.WorkflowID, rep.RunID, rep.WebUI)
		if receiver != nil {
			fmt.Fprintf(e.out, "  notify    %s (signed; the secret is not shown)\n", notify.Redact(receiver.URL))
		}
	}
	check := "checks the package (downloads it once) and fixes its targets"
	if req.SkipPreflight {
		check = "fixes its targets"
	}
	fmt.Fprintf(progress, "Pre-flight: the rollout %s ...\n", check)
	pre, err := e.awaitPreflight(ctx, c, run.GetID(), run.GetRunID(), preflightPoll)
	if ctx.Err() != nil {
		return cli.Exit(fmt.Sprintf("stopped waiting for the pre-flight: rollout %s goes on (workflow %s); follow it with "+
			"`starter rollout status %s --watch`, stop it with `starter rollout cancel %s`", req.Name, rep.WorkflowID, req.Name, req.Name), exitInterrupted)
	}
	if err != nil {
		return err
	}
	rep.Preflight = &pre
	// ended: the rollout ended other than completed, in its pre-flight (a package that failed
	// the check) or, quick, right after it.
	ended := pre.State.Final() && pre.State != ota.RolloutCompleted
	switch {
	case pre.Total > 0:
		fmt.Fprintf(progress, "Pre-flight passed: %d target(s) in %d wave(s).\n", pre.Total, len(pre.Waves))
	case ended:
		// The outcome says why.
	default:
		msg := fmt.Sprintf("rollout %s matched no device (%s): nothing to upgrade", req.Name, describeTargets(req.Targets, req.Upgrade))
		if !cCtx.Bool("allow-empty") {
			rep.Error = msg
			if asJSON {
				if err := writeJSON(e.out, rep); err != nil {
					return err
				}
			}
			return cli.Exit(msg+"; check the targets with `starter devices list`, or give --allow-empty when that is expected", exitFailure)
		}
		fmt.Fprintf(progress, "%s.\n", strings.ToUpper(msg[:1])+msg[1:])
	}
	if ended && !cCtx.Bool("wait") {
		rep.Error = pre.Reason
		if asJSON {
			if err := writeJSON(e.out, rep); err != nil {
				return err
			}
		}
		return rolloutOutcome(pre)
	}
	if !cCtx.Bool("wait") {
		if asJSON {
			return writeJSON(e.out, rep)
		}
		fmt.Fprintf(e.out, "Follow it with `starter rollout status %s --watch`.\n", req.Name)
		return nil
	}

	ref := rolloutRef{Name: req.Name, WorkflowID: run.GetID(), RunID: run.GetRunID(), Status: enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING}
	p, err := e.followRollout(cCtx, c, ref, watchOptions{w: progress, tty: isTerminal(progress)})
	if ctx.Err() != nil {
		return cli.Exit(fmt.Sprintf("stopped waiting: rollout %s goes on (workflow %s); follow it with "+
			"`starter rollout status %s --watch`, stop it with `starter rollout cancel %s`", req.Name, rep.WorkflowID, req.Name, req.Name), exitInterrupted)
	}
	if p.State == "" {
		if err == nil {
			err = errors.New("the workflow returned no progress")
		}
		return fmt.Errorf("rollout %s (workflow %s) ended without a result: %w", req.Name, rep.WorkflowID, err)
	}
	rep.Result = &p
	if err != nil {
		rep.Error = errtext.Plain(err)
	}
	if asJSON {
		if err := writeJSON(e.out, rep); err != nil {
			return err
		}
	}
	return rolloutOutcome(p)
}

// preflightPoll is how often `rollout start` asks the rollout whether its pre-flight ended.
const preflightPoll = 250 * time.Millisecond

// preflightNotice is how long `rollout start` waits for the pre-flight before it says that
// it still waits, and for what.
const preflightNotice = 15 * time.Second

// awaitPreflight waits until the rollout run has left its pre-flight (its package checked and
// its targets fixed, or the check failed) and returns its progress then, asking the workflow
// every interval. It rides out Temporal outages (saying so once per outage), and says once,
// after preflightNotice, that it still waits.
func (e *appEnv) awaitPreflight(ctx context.Context, c client.Client, workflowID, runID string, interval time.Duration) (ota.RolloutProgress, error) {
	outage := newOutageWatch(e.errOut, c, workflowID)
	notice := time.Now().Add(preflightNotice)
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		p, err := queryProgress(qctx, c, workflowID, runID)
		cancel()
		switch {
		case ctx.Err() != nil:
			return p, ctx.Err()
		case err == nil:
			outage.answered()
			if p.State != "" && p.State != ota.RolloutPreflight {
				return p, nil
			}
		default:
			// Before the first workflow task there is nothing to ask, and without a worker no
			// answer; a run that ended without answering (terminated) gives its result.
			outage.check(ctx)
			if desc, derr := c.DescribeWorkflow(ctx, workflowID, runID); derr == nil && desc.Status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				p, rerr := rolloutResult(ctx, c.GetWorkflow(ctx, workflowID, runID))
				if p.State != "" {
					return p, nil
				}
				return p, fmt.Errorf("rollout workflow %s ended (%s) in its pre-flight: %w", workflowID, desc.Status, rerr)
			}
		}
		if !notice.IsZero() && time.Now().After(notice) {
			notice = time.Time{}
			fmt.Fprintf(e.errOut, "starter: the pre-flight has not ended after %s: it downloads the package once, "+
				"and needs a running OTAflow worker; still waiting (Ctrl-C stops waiting, the rollout goes on)\n", preflightNotice)
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return p, ctx.Err()
		case <-t.C:
		}
	}
}

// describeTargets says in words which devices a rollout's targets select.
func describeTargets(t ota.Targets, up ota.UpgradeRequest) string {
	var parts []string
	if t.List != "" {
		parts = append(parts, "the listed devices")
	}
	if t.Prefix != "" {
		parts = append(parts, fmt.Sprintf("IDs starting %q", t.Prefix))
	}
	for _, k := range slices.Sorted(maps.Keys(t.Where)) {
		parts = append(parts, k+"="+t.Where[k])
	}
	s := "registered, enabled devices with " + strings.Join(parts, ", ")
	if !t.IncludeUpToDate {
		s += fmt.Sprintf(", not already reporting %s=%s", up.WithDefaults().VersionKey, up.Version)
	}
	return s
}

// rolloutOutcome is nil for a completed rollout and an exit-1 error saying how it ended
// otherwise.
func rolloutOutcome(p ota.RolloutProgress) error {
	if p.State == ota.RolloutCompleted {
		return nil
	}
	msg := fmt.Sprintf("rollout %s ended %s", p.Name, p.State)
	if p.Reason != "" {
		msg += ": " + p.Reason
	}
	return cli.Exit(msg, exitFailure)
}

// abbreviate joins at most n of ids, saying how many more there are.
func abbreviate(ids []string, n int) string {
	if len(ids) <= n {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:n], ", "), len(ids)-n)
}

// refuseRunningRollout fails with exit code 3 when a rollout of that name runs.
func refuseRunningRollout(ctx context.Context, c client.Client, name string) error {
	ref, err := findRollout(ctx, c, name)
	if errors.Is(err, errNoRollout) {
		return nil
	}
	if err != nil {
		return err
	}
	if ref.running() {
		return alreadyRunning(name, ref.WorkflowID, ref.RunID)
	}
	return nil
}

// alreadyRunning is the exit-3 error of a start refused because a rollout of the name runs.
func alreadyRunning(name, workflowID, runID string) error {
	return cli.Exit(fmt.Sprintf("rollout %s is already running (workflow %s, run %s): nothing was started; follow it with "+
		"`starter rollout status %s`, or cancel it first", name, workflowID, runID, name), exitAlreadyRunning)
}
