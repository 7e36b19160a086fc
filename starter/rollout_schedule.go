package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/urfave/cli/v2"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
)

// rolloutSchedulePrefix starts the ID of every rollout schedule: rolloutScheduleID.
const rolloutSchedulePrefix = ota.RolloutSchedulePrefix

// rolloutScheduleID is the Temporal Schedule ID of a rollout's schedule.
func rolloutScheduleID(name string) string { return ota.RolloutScheduleID(name) }

// scheduleMemoWhen is the schedule memo field that says, for people, when it starts rollouts.
const scheduleMemoWhen = "when"

// Bounds of the years a Temporal schedule calendar can name.
const maxScheduleYear = 2100

func rolloutScheduleCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "schedule",
		Usage: "start a rollout later, once (--at) or by a cron expression (--cron); list and delete schedules",
		UsageText: "starter rollout schedule --name R [the request flags of `rollout start`] (--at TIME | --cron EXPR) [--json]\n" +
			"starter rollout schedule list [--json]\n" +
			"starter rollout schedule delete NAME",
		Description: "Creates the Temporal Schedule " + rolloutScheduleID("R") + ". At each of its times it starts the workflow\n" +
			ota.ScheduledRolloutWorkflowID("R") + "-<scheduled time> (Temporal appends the time), which starts the rollout\n" +
			"as " + ota.RolloutWorkflowID("R") + " with the request checked now, and ends. While a rollout R runs, that start\n" +
			"is skipped: the scheduled workflow fails with \"rollout R is already running; this scheduled start\n" +
			"was skipped\" (`schedule list` shows it), so `rollout pause|status|cancel R` always reach the one\n" +
			"rollout R. An explicit device list is stored in PostgreSQL now, under a key of its own.\n" +
			"--cron reads its times in --tz (default UTC). A one-shot schedule (--at) that has fired is spent:\n" +
			"`schedule list` shows it done, and a new `rollout schedule` of the name replaces it; any other\n" +
			"schedule of the name must be deleted first.\n" +
			"Exit codes: 0 scheduled, 1 failed, 2 bad input, 3 the rollout already has a schedule that may still start it.",
		Flags: slices.Concat(rolloutRequestFlags(), []cli.Flag{
			&cli.StringFlag{Name: "at", Usage: "start the rollout once, at `TIME` (RFC 3339, e.g. 2026-11-27T01:00:00Z)"},
			&cli.StringFlag{Name: "cron", Usage: "start the rollout at the times of `EXPR`, e.g. \"0 1 * * *\" (01:00 every day, in --tz)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
		}),
		Action: e.rolloutScheduleAction,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list the rollout schedules: when, next start, state (active, paused, done), last start",
				UsageText: "starter rollout schedule list [--json]",
				Description: "STATE is active, paused, or done (a one-shot that has fired: it starts nothing more).\n" +
					"LAST START is the latest time the schedule fired and what came of it: the rollout started,\n" +
					"or the start skipped because a rollout of that name was running.",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print a JSON array"}},
				Before: requireFlags(),
				Action: e.scheduleListAction,
			},
			{
				Name:      "delete",
				Usage:     "delete a rollout's schedule; a rollout it already started goes on",
				UsageText: "starter rollout schedule delete NAME",
				Description: "Deletes the Temporal Schedule " + rolloutScheduleID("NAME") + ". With DATABASE_URL set, the stored device\n" +
					"lists of the name that nothing uses any more are deleted too (none while a rollout of the\n" +
					"name runs, none stored in the last hour).",
				Action: e.scheduleDeleteAction,
			},
		},
	}
}

// scheduleReport is the JSON output of `rollout schedule`.
type scheduleReport struct {
	Name       string `json:"name"`
	ScheduleID string `json:"schedule_id"`
	When       string `json:"when"`
	// WorkflowID is the workflow ID the scheduled rollouts run as.
	WorkflowID      string      `json:"workflow_id"`
	NextActionTimes []time.Time `json:"next_action_times"`
	// ReplacedSpent says a spent one-shot schedule of the name was replaced.
	ReplacedSpent  bool     `json:"replaced_spent,omitempty"`
	UnknownDevices []string `json:"unknown_devices,omitempty"`
}

func (e *appEnv) rolloutScheduleAction(cCtx *cli.Context) error {
	if cCtx.Args().Present() {
		return usageErrorf(cCtx, "unknown command %q", cCtx.Args().First())
	}
	if cCtx.NumFlags() == 0 {
		return cli.ShowSubcommandHelp(cCtx)
	}
	if err := requireFlags(append([]string{"name"}, packageRequired...)...)(cCtx); err != nil {
		return err
	}
	sched, err := scheduleSpec(cCtx, time.Now())
	if err != nil {
		return err
	}
	spec, err := rolloutRequest(cCtx, cCtx.IsSet("cron"))
	if err != nil {
		return err
	}
	req := spec.req.WithDefaults()
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	id := rolloutScheduleID(req.Name)
	exists := cli.Exit(fmt.Sprintf("rollout %s already has a schedule (%s): see `starter rollout schedule list`, "+
		"delete it with `starter rollout schedule delete %s`", req.Name, id, req.Name), exitAlreadyRunning)
	// A spent one-shot (it fired) is replaced; any other schedule of the name stands.
	h := c.ScheduleClient().GetHandle(ctx, id)
	spentOne := false
	switch desc, err := h.Describe(ctx); {
	case isNotFound(err):
	case err != nil:
		return fmt.Errorf("describe schedule %s: %w", id, err)
	case !spent(desc.Schedule.State):
		return exists
	default:
		spentOne = true
	}
	var unknown []string
	if spec.ids != nil {
		if req.Targets.List, unknown, err = e.storeTargets(cCtx, req.Name, spec.ids); err != nil {
			return err
		}
	}
	dropTargets := func() {
		if spec.ids != nil {
			e.dropTargets(cCtx, req.Targets.List)
		}
	}
	so := client.ScheduleOptions{
		ID:     id,
		Spec:   sched.spec,
		Action: ota.ScheduleAction(req),
		Memo:   map[string]any{scheduleMemoWhen: sched.when},
		Note:   "created by starter rollout schedule",
	}
	if sched.once {
		so.RemainingActions = 1
	}
	// The server checks the spec (a --cron expression) before it looks for a schedule of the
	// ID, so a spent one-shot is deleted only once the new spec is known good.
	spentHandle := h
	h, err = c.ScheduleClient().Create(ctx, so)
	if spentOne && errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
		if err := spentHandle.Delete(ctx); err != nil && !isNotFound(err) {
			dropTargets()
			return fmt.Errorf("delete the spent schedule %s: %w", id, err)
		}
		h, err = c.ScheduleClient().Create(ctx, so)
	}
	if errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
		dropTargets()
		return exists
	}
	if why, ok := refusedSpec(err); ok {
		dropTargets()
		return usageErrorf(cCtx, "--cron %q: the Temporal server does not accept it: %s.\n"+
			"Give 5 fields (minute hour day-of-month month day-of-week), 6 (and year) or 7 (second first), "+
			"a shorthand such as @daily, or @every DURATION; the time zone goes in --tz.", cCtx.String("cron"), why)
	}
	if err != nil {
		return fmt.Errorf("create schedule %s: %w", id, err)
	}
	if spec.ids != nil {
		e.pruneTargetLists(cCtx, c, req.Name, "", req.Targets.List)
	}
	rep := scheduleReport{Name: req.Name, ScheduleID: id, When: sched.when, WorkflowID: ota.RolloutWorkflowID(req.Name),
		ReplacedSpent: spentOne, UnknownDevices: unknown}
	if desc, err := h.Describe(ctx); err == nil {
		rep.NextActionTimes = desc.Info.NextActionTimes
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, rep)
	}
	if spentOne {
		fmt.Fprintf(e.out, "Replaced the spent one-shot schedule %s.\n", id)
	}
	fmt.Fprintf(e.out, "Scheduled rollout %s (schedule %s): %s %s, %s.\n", req.Name, id, req.Upgrade.Type, req.Upgrade.Version, sched.when)
	if len(rep.NextActionTimes) > 0 {
		fmt.Fprintf(e.out, "  next start  %s\n", formatTime(rep.NextActionTimes[0]))
	}
	fmt.Fprintf(e.out, "It runs as workflow %s (a start is skipped while a rollout of that name runs); "+
		"follow it with `starter rollout status %s --watch`.\n", rep.WorkflowID, req.Name)
	return nil
}

// refusedSpec reports whether the server refused a new schedule's spec, and why (for a
// --cron expression: its own parser's word).
func refusedSpec(err error) (string, bool) {
	var invalid *serviceerror.InvalidArgument
	if !errors.As(err, &invalid) {
		return "", false
	}
	return strings.CutPrefix(invalid.Message, "Invalid schedule spec: ")
}

// isNotFound reports whether Temporal answered that the thing asked for does not exist.
func isNotFound(err error) bool {
	var notFound *serviceerror.NotFound
	return errors.As(err, &notFound)
}

// spent reports whether a schedule will start nothing more: a one-shot (--at) that fired.
func spent(st *client.ScheduleState) bool {
	return st != nil && st.LimitedActions && st.RemainingActions == 0
}

// schedule is when a schedule starts rollouts.
type schedule struct {
	spec client.ScheduleSpec
	when string // for people
	once bool
}

// scheduleSpec reads --at or --cron (and --tz for --cron); every error is a usage error. The
// Temporal server checks a --cron expression when the schedule is created.
func scheduleSpec(cCtx *cli.Context, now time.Time) (schedule, error) {
	at, cron := cCtx.String("at"), cCtx.String("cron")
	switch {
	case cCtx.IsSet("at") && cCtx.IsSet("cron"):
		return schedule{}, usageErrorf(cCtx, "give --at (once) or --cron (repeatedly), not both")
	case cCtx.IsSet("at"):
		t, err := parseAt(at, now)
		if err != nil {
			return schedule{}, usageErrorf(cCtx, "--at: %v", err)
		}
		return schedule{spec: onceAt(t), when: "once at " + t.Format(time.RFC3339), once: true}, nil
	case cCtx.IsSet("cron"):
		tz := cCtx.String("tz")
		if _, err := time.LoadLocation(tz); err != nil || tz == "" {
			return schedule{}, usageErrorf(cCtx, "--tz: unknown time zone %q", tz)
		}
		return schedule{spec: client.ScheduleSpec{CronExpressions: []string{strings.TrimSpace(cron)}, TimeZoneName: tz},
			when: fmt.Sprintf("cron %q in %s", strings.TrimSpace(cron), tz)}, nil
	}
	return schedule{}, usageErrorf(cCtx, "say when: --at TIME (once) or --cron EXPR (repeatedly)")
}

// parseAt parses an RFC 3339 time that must lie in the future. A fraction of a second rounds
// up: schedules fire on whole seconds.
func parseAt(s string, now time.Time) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(s))
	if err != nil {
		return t, fmt.Errorf("%q is not an RFC 3339 time such as 2026-11-27T01:00:00Z", s)
	}
	t = t.UTC()
	if r := t.Truncate(time.Second); !r.Equal(t) {
		t = r.Add(time.Second)
	}
	if !t.After(now) {
		return t, fmt.Errorf("%s is not in the future", t.Format(time.RFC3339))
	}
	if t.Year() > maxScheduleYear {
		return t, fmt.Errorf("%s is after %d, the last year a schedule can name", t.Format(time.RFC3339), maxScheduleYear)
	}
	return t, nil
}

// onceAt is a schedule spec that matches only t (UTC, whole seconds): a calendar of that
// year, month, day, hour, minute and second.
func onceAt(t time.Time) client.ScheduleSpec {
	one := func(v int) []client.ScheduleRange { return []client.ScheduleRange{{Start: v}} }
	return client.ScheduleSpec{
		Calendars: []client.ScheduleCalendarSpec{{
			Year: one(t.Year()), Month: one(int(t.Month())), DayOfMonth: one(t.Day()),
			Hour: one(t.Hour()), Minute: one(t.Minute()), Second: one(t.Second()),
			Comment: "once at " + t.Format(time.RFC3339),
		}},
		// Bounds too, so that the schedule never matches another time whatever the server
		// makes of the calendar.
		StartAt: t, EndAt: t,
	}
}

// Schedule states in `rollout schedule list`.
const (
	scheduleActive = "active"
	schedulePaused = "paused"
	// scheduleDone is a schedule that will start nothing more: a one-shot that fired.
	scheduleDone = "done"
)

// scheduleEntry is one rollout schedule in `rollout schedule list`.
type scheduleEntry struct {
	Name            string      `json:"name"`
	ScheduleID      string      `json:"schedule_id"`
	When            string      `json:"when"`
	State           string      `json:"state"`
	Paused          bool        `json:"paused"`
	NextActionTimes []time.Time `json:"next_action_times"`
	// RecentWorkflowIDs are the workflows it started lately, oldest first: the scheduled
	// starts (for a schedule of an earlier version, the rollouts themselves).
	RecentWorkflowIDs []string `json:"recent_workflow_ids"`
	// LastStart is what came of the latest time it fired, if it has.
	LastStart *scheduledStart `json:"last_start,omitempty"`
}

// Outcomes of a scheduled start.
const (
	startStarted  = "started"  // the rollout started
	startSkipped  = "skipped"  // a rollout of the name was running: none started
	startFailed   = "failed"   // the scheduled workflow failed otherwise
	startStarting = "starting" // the scheduled workflow has not ended yet
	startUnknown  = "unknown"  // the scheduled workflow could not be described
)

// scheduledStart is one time a rollout schedule fired, and what came of it.
type scheduledStart struct {
	ScheduledAt time.Time `json:"scheduled_at"`
	// WorkflowID and RunID are those of the workflow the schedule started.
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
	Outcome    string `json:"outcome"`
	// Rollout is the workflow ID of the rollout started, when it started.
	Rollout string `json:"rollout,omitempty"`
	// Detail says why a start was skipped or failed.
	Detail string `json:"detail,omitempty"`
}

func (e *appEnv) scheduleListAction(cCtx *cli.Context) error {
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	it, err := c.ScheduleClient().List(ctx, client.ScheduleListOptions{PageSize: 200})
	if err != nil {
		return fmt.Errorf("list schedules: %w", err)
	}
	entries := []scheduleEntry{}
	for it.HasNext() {
		s, err := it.Next()
		if err != nil {
			return fmt.Errorf("list schedules: %w", err)
		}
		name, ok := strings.CutPrefix(s.ID, rolloutSchedulePrefix)
		if !ok || (s.WorkflowType.Name != ota.ScheduledRolloutWorkflowName && s.WorkflowType.Name != ota.RolloutWorkflowName) {
			continue
		}
		// The list comes from the visibility store, which lags; the description is current.
		desc, err := c.ScheduleClient().GetHandle(ctx, s.ID).Describe(ctx)
		if isNotFound(err) {
			continue // deleted meanwhile
		}
		if err != nil {
			return fmt.Errorf("describe schedule %s: %w", s.ID, err)
		}
		en := scheduleEntry{Name: name, ScheduleID: s.ID, State: scheduleActive, NextActionTimes: desc.Info.NextActionTimes,
			RecentWorkflowIDs: []string{}}
		if st := desc.Schedule.State; st != nil && st.Paused {
			en.State, en.Paused = schedulePaused, true
		}
		if spent(desc.Schedule.State) {
			en.State = scheduleDone
		}
		if p := desc.Memo.GetFields()[scheduleMemoWhen]; p != nil {
			_ = converter.GetDefaultDataConverter().FromPayload(p, &en.When)
		}
		var last *client.ScheduleActionResult
		for _, a := range desc.Info.RecentActions {
			if a.StartWorkflowResult != nil {
				en.RecentWorkflowIDs = append(en.RecentWorkflowIDs, a.StartWorkflowResult.WorkflowID)
				last = &a
			}
		}
		if last != nil {
			en.LastStart = describeStart(ctx, c, name, *last)
		}
		entries = append(entries, en)
	}
	slices.SortFunc(entries, func(a, b scheduleEntry) int { return strings.Compare(a.Name, b.Name) })
	if cCtx.Bool("json") {
		return writeJSON(e.out, entries)
	}
	if len(entries) == 0 {
		fmt.Fprintln(e.out, "(no rollout schedules)")
		return nil
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tWHEN\tSTATE\tNEXT\tLAST START")
	for _, en := range entries {
		next, last := "-", "-"
		if len(en.NextActionTimes) > 0 {
			next = formatTime(en.NextActionTimes[0])
		}
		if l := en.LastStart; l != nil {
			last = fmt.Sprintf("%s %s %s", formatTime(l.ScheduledAt), l.Outcome, cmp.Or(l.Rollout, l.WorkflowID))
			if l.Detail != "" {
				last += ": " + l.Detail
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", en.Name, en.When, en.State, next, last)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write schedule list: %w", err)
	}
	return nil
}

// describeStart says what came of one firing of a rollout's schedule: whether the scheduled
// workflow started the rollout or skipped it. A schedule of an earlier version started the
// rollout itself.
func describeStart(ctx context.Context, c client.Client, name string, a client.ScheduleActionResult) *scheduledStart {
	w := a.StartWorkflowResult
	s := &scheduledStart{ScheduledAt: a.ScheduleTime, WorkflowID: w.WorkflowID, RunID: w.FirstExecutionRunID, Outcome: startStarted}
	if !strings.HasPrefix(w.WorkflowID, ota.ScheduledRolloutWorkflowID(name)+"-") {
		s.Rollout = w.WorkflowID
		return s
	}
	desc, err := c.DescribeWorkflow(ctx, w.WorkflowID, w.FirstExecutionRunID)
	if err != nil {
		s.Outcome, s.Detail = startUnknown, err.Error()
		if isNotFound(err) {
			s.Detail = "Temporal no longer keeps the scheduled workflow (past its namespace's retention)"
		}
		return s
	}
	switch desc.Status {
	case enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
		s.Outcome = startStarting
	case enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED:
		s.Rollout = ota.RolloutWorkflowID(name)
	default:
		s.Outcome, s.Detail = startFailed, strings.ToLower(desc.Status.String())
		it := c.GetWorkflowHistory(ctx, w.WorkflowID, w.FirstExecutionRunID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT)
		if it.HasNext() {
			if ev, err := it.Next(); err == nil {
				if f := ev.GetWorkflowExecutionFailedEventAttributes().GetFailure(); f != nil {
					// In plain words: a scheduled start of an earlier version may hold the
					// SDK's wrapping of the rollout's start error there.
					s.Detail = errtext.PlainText(f.GetMessage())
					if f.GetApplicationFailureInfo().GetType() == ota.ErrTypeRolloutRunning {
						s.Outcome = startSkipped
					}
				}
			}
		}
	}
	return s
}

func (e *appEnv) scheduleDeleteAction(cCtx *cli.Context) error {
	name, err := nameArg(cCtx)
	if err != nil {
		return err
	}
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	id := rolloutScheduleID(name)
	err = c.ScheduleClient().GetHandle(cCtx.Context, id).Delete(cCtx.Context)
	if isNotFound(err) {
		return cli.Exit(fmt.Sprintf("rollout %s has no schedule (%s): see `starter rollout schedule list`", name, id), exitFailure)
	}
	if err != nil {
		return fmt.Errorf("delete schedule %s: %w", id, err)
	}
	fmt.Fprintf(e.out, "Deleted schedule %s; a rollout it already started goes on (see `starter rollout status %s`).\n", id, name)
	// Its device list, if it had one, is no longer needed once no rollout of the name runs.
	e.pruneTargetLists(cCtx, c, name, "")
	return nil
}
