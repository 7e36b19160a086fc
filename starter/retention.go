package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/ota"
)

// retentionWhat says what each retention item is, for people.
var retentionWhat = map[ota.RetentionItem]string{
	ota.RetainProgressEvents:   "devices' progress reports, by when the bridge received them",
	ota.RetainRejectedMessages: "messages the bridge refused, by when it received them",
	ota.RetainShedReports:      "counts of reports the bridge's flood limit did not store, by interval",
	ota.RetainUpgrades:         "finished upgrade records and their state changes (each device's latest is kept)",
	ota.RetainTargetLists:      "rollout target lists no running rollout and no schedule uses, by when stored",
}

func retentionCommand(e *appEnv) *cli.Command {
	var setFlags []cli.Flag
	for _, item := range ota.RetentionItems {
		setFlags = append(setFlags, &cli.StringFlag{Name: retentionFlag(item), DefaultText: "unchanged",
			Usage: fmt.Sprintf("how `LONG` to keep %s: 30d, 36h or forever (new databases: %s)", retentionWhat[item], ota.FormatKeep(ota.DefaultRetentionPolicy().Keep(item)))})
	}
	setFlags = append(setFlags,
		&cli.IntFlag{Name: "batch-size", DefaultText: "unchanged", Usage: fmt.Sprintf("rows one delete takes at most, each its own short transaction: `N` from %d to %d (new databases: %d)",
			ota.MinCleanupBatchSize, ota.MaxCleanupBatchSize, ota.DefaultCleanupBatchSize)},
		&cli.DurationFlag{Name: "batch-pause", DefaultText: "unchanged", Usage: fmt.Sprintf("`PAUSE` between two deletes, at most %s (new databases: %s)", ota.MaxCleanupBatchPause, ota.DefaultCleanupBatchPause)},
	)
	jsonFlag := func() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print one JSON object"} }
	return &cli.Command{
		Name:  "retention",
		Usage: "show and change how long OTAflow keeps device reports, rejected messages and records in PostgreSQL",
		Description: "The policy is stored in PostgreSQL. The retention cleanup (workflow " + ota.RetentionCleanupWorkflowName + ", run by the\n" +
			"Temporal Schedule " + ota.RetentionCleanupScheduleID + " that `starter setup` creates) reads it at every run and deletes what\n" +
			"has expired in batches of short transactions. How long Temporal keeps closed workflows is the\n" +
			"namespace's retention: `starter setup --retention`.",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:      "show",
				Usage:     "show the retention policy, the cleanup's schedule and Temporal's retention",
				UsageText: "starter retention show [--json]",
				Flags:     []cli.Flag{jsonFlag()},
				Before:    requireFlags(),
				Action:    e.retentionShowAction,
			},
			{
				Name:      "set",
				Usage:     "change the retention policy (the next cleanup follows it)",
				UsageText: "starter retention set [--progress-events 30d] [--rejected-messages 30d] [--shed-reports 90d] [--upgrades forever] [--target-lists 30d] [--batch-size N] [--batch-pause D] [--json]",
				Description: fmt.Sprintf("Changes what the flags give; the rest stays. Progress reports and upgrade records are kept at\n"+
					"least %s (a running upgrade reads them), the others at least %s.\n"+
					"Exit codes: 0 changed, 1 the database failed, 2 bad input (nothing changed).", ota.FormatKeep(ota.MinKeepReports), ota.FormatKeep(ota.MinKeep)),
				Flags:  append(setFlags, jsonFlag()),
				Before: requireFlags(),
				Action: e.retentionSetAction,
			},
			{
				Name:      "run",
				Usage:     "run the retention cleanup now (through its schedule)",
				UsageText: "starter retention run [--wait]",
				Description: "Triggers the schedule " + ota.RetentionCleanupScheduleID + "; when a cleanup already runs, none is started.\n" +
					"With --wait it waits for the cleanup and prints what it deleted; exit code 1 when some item\n" +
					"could not be cleaned up.",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "wait", Usage: "wait for the cleanup and print what it did"}},
				Before: requireFlags(),
				Action: e.retentionRunAction,
			},
		},
	}
}

// retentionFlag is the flag of `retention set` for an item: progress_events -> progress-events.
func retentionFlag(item ota.RetentionItem) string {
	b := []byte(item)
	for i, c := range b {
		if c == '_' {
			b[i] = '-'
		}
	}
	return string(b)
}

// retentionReport is what `retention show` shows.
type retentionReport struct {
	Items      []retentionItemReport `json:"items"`
	BatchSize  int                   `json:"batch_size"`
	BatchPause string                `json:"batch_pause"`
	UpdatedAt  time.Time             `json:"updated_at"`
	// Schedule is the cleanup's schedule, and TemporalRetention how long the namespace keeps
	// closed workflows; TemporalError says why they are missing.
	Schedule          *cleanupScheduleReport `json:"schedule,omitempty"`
	TemporalRetention string                 `json:"temporal_retention,omitempty"`
	TemporalError     string                 `json:"temporal_error,omitempty"`
}

type retentionItemReport struct {
	Item        ota.RetentionItem `json:"item"`
	Keep        string            `json:"keep"`
	KeepSeconds int64             `json:"keep_seconds"`
	What        string            `json:"what"`
}

type cleanupScheduleReport struct {
	ID      string     `json:"id"`
	Every   string     `json:"every"`
	Paused  bool       `json:"paused"`
	LastRun *time.Time `json:"last_run,omitempty"`
	LastID  string     `json:"last_workflow_id,omitempty"`
	NextRun *time.Time `json:"next_run,omitempty"`
	Running []string   `json:"running,omitempty"`
}

func policyReport(p ota.RetentionPolicy) retentionReport {
	rep := retentionReport{BatchSize: p.BatchSize, BatchPause: p.BatchPause.String(), UpdatedAt: p.UpdatedAt}
	for _, item := range ota.RetentionItems {
		keep := p.Keep(item)
		rep.Items = append(rep.Items, retentionItemReport{Item: item, Keep: ota.FormatKeep(keep), KeepSeconds: int64(keep / time.Second),
			What: retentionWhat[item]})
	}
	return rep
}

func (e *appEnv) retentionShowAction(cCtx *cli.Context) error {
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	p, err := st.RetentionPolicy(cCtx.Context)
	if err != nil {
		return err
	}
	rep := policyReport(p)
	// Temporal's side is a bonus: without it the policy is still worth showing.
	if c, err := e.temporalClient(cCtx); err != nil {
		rep.TemporalError = err.Error()
	} else if err := temporalRetention(cCtx.Context, c, cCtx.String(flagTemporalNamespace), &rep); err != nil {
		rep.TemporalError = err.Error()
	}
	if rep.TemporalError != "" {
		fmt.Fprintf(e.errOut, "starter: warning: Temporal's side is missing: %s\n", rep.TemporalError)
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, rep)
	}
	return printRetention(e.out, rep)
}

// temporalRetention adds the cleanup's schedule and the namespace's retention to rep.
func temporalRetention(ctx context.Context, c client.Client, namespace string, rep *retentionReport) error {
	ns, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: namespace})
	if err != nil {
		return fmt.Errorf("describe namespace %s: %w", namespace, err)
	}
	rep.TemporalRetention = ns.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration().String()
	desc, err := c.ScheduleClient().GetHandle(ctx, ota.RetentionCleanupScheduleID).Describe(ctx)
	if isNotFound(err) {
		return fmt.Errorf("there is no cleanup schedule %s: run starter setup", ota.RetentionCleanupScheduleID)
	}
	if err != nil {
		return fmt.Errorf("describe schedule %s: %w", ota.RetentionCleanupScheduleID, err)
	}
	s := &cleanupScheduleReport{ID: ota.RetentionCleanupScheduleID, Paused: desc.Schedule.State != nil && desc.Schedule.State.Paused}
	if spec := desc.Schedule.Spec; spec != nil && len(spec.Intervals) == 1 {
		s.Every = spec.Intervals[0].Every.String()
	}
	if recent := desc.Info.RecentActions; len(recent) > 0 {
		last := recent[len(recent)-1]
		s.LastRun = &last.ActualTime
		if last.StartWorkflowResult != nil {
			s.LastID = last.StartWorkflowResult.WorkflowID
		}
	}
	if next := desc.Info.NextActionTimes; len(next) > 0 && !s.Paused {
		s.NextRun = &next[0]
	}
	for _, r := range desc.Info.RunningWorkflows {
		s.Running = append(s.Running, r.WorkflowID)
	}
	rep.Schedule = s
	return nil
}

func printRetention(out io.Writer, rep retentionReport) error {
	changed := "the defaults"
	if !rep.UpdatedAt.IsZero() {
		changed = "changed " + rep.UpdatedAt.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(out, "Retention policy (PostgreSQL, %s; every cleanup reads it):\n", changed)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, it := range rep.Items {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", it.Item, it.Keep, it.What)
	}
	fmt.Fprintf(tw, "  batches\t%d rows\tat most per delete (one short transaction each), %s apart\n", rep.BatchSize, rep.BatchPause)
	if err := tw.Flush(); err != nil {
		return err
	}
	if s := rep.Schedule; s != nil {
		line := fmt.Sprintf("Cleanup: schedule %s, workflow %s every %s", s.ID, ota.RetentionCleanupWorkflowName, s.Every)
		if s.Paused {
			line += ", PAUSED"
		}
		if s.LastRun != nil {
			line += fmt.Sprintf("; last run %s (%s)", s.LastRun.UTC().Format(time.RFC3339), s.LastID)
		}
		if s.NextRun != nil {
			line += "; next " + s.NextRun.UTC().Format(time.RFC3339)
		}
		if len(s.Running) > 0 {
			line += fmt.Sprintf("; running now: %v", s.Running)
		}
		fmt.Fprintln(out, line)
	}
	if rep.TemporalRetention != "" {
		fmt.Fprintf(out, "Temporal keeps closed workflows %s (the namespace's retention; starter setup --retention changes it).\n", rep.TemporalRetention)
	}
	return nil
}

func (e *appEnv) retentionSetAction(cCtx *cli.Context) error {
	changes := 0
	for _, f := range cCtx.Command.Flags {
		if name := f.Names()[0]; name != "json" && cCtx.IsSet(name) {
			changes++
		}
	}
	if changes == 0 {
		return usageErrorf(cCtx, "give what to change, for example --progress-events 14d")
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	p, err := st.RetentionPolicy(cCtx.Context)
	if err != nil {
		return err
	}
	for _, item := range ota.RetentionItems {
		name := retentionFlag(item)
		if !cCtx.IsSet(name) {
			continue
		}
		keep, err := ota.ParseKeep(cCtx.String(name))
		if err != nil {
			return usageErrorf(cCtx, "--%s: %v", name, err)
		}
		if err := p.SetKeep(item, keep); err != nil {
			return usageErrorf(cCtx, "--%s: %v", name, err)
		}
	}
	if cCtx.IsSet("batch-size") {
		p.BatchSize = cCtx.Int("batch-size")
	}
	if cCtx.IsSet("batch-pause") {
		p.BatchPause = cCtx.Duration("batch-pause")
	}
	if err := p.Validate(); err != nil {
		return usageErrorf(cCtx, "%v", err)
	}
	if err := st.SetRetentionPolicy(cCtx.Context, p); err != nil {
		return err
	}
	if p, err = st.RetentionPolicy(cCtx.Context); err != nil {
		return err
	}
	rep := policyReport(p)
	if cCtx.Bool("json") {
		return writeJSON(e.out, rep)
	}
	if err := printRetention(e.out, rep); err != nil {
		return err
	}
	fmt.Fprintln(e.out, "The next cleanup follows it (`starter retention run` runs one now).")
	return nil
}

func (e *appEnv) retentionRunAction(cCtx *cli.Context) error {
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	run, running, err := ota.TriggerRetentionCleanup(ctx, c)
	if err != nil {
		return err
	}
	if running {
		fmt.Fprintf(e.out, "A cleanup is already running: %s; none was started.\n", run.GetID())
	} else {
		fmt.Fprintf(e.out, "Started cleanup %s.\n", run.GetID())
	}
	if !cCtx.Bool("wait") {
		return nil
	}
	start := time.Now()
	var r ota.CleanupReport
	err = run.Get(ctx, &r)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.HasDetails() {
		_ = appErr.Details(&r)
	}
	if ctx.Err() != nil {
		return cli.Exit("interrupted; the cleanup goes on", exitInterrupted)
	}
	if len(r.Items) > 0 {
		printCleanup(e.out, r, time.Since(start))
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("cleanup %s: %v", run.GetID(), err), exitFailure)
	}
	return nil
}

// printCleanup prints what a cleanup did, an item a line.
func printCleanup(out io.Writer, r ota.CleanupReport, took time.Duration) {
	fmt.Fprintf(out, "Cleanup done after %s:\n", took.Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, res := range r.Items {
		switch {
		case res.Kept:
			fmt.Fprintf(tw, "  %s\tkept forever\n", res.Item)
		case res.Error != "":
			fmt.Fprintf(tw, "  %s\tFAILED after deleting %d: %s\n", res.Item, res.Deleted, res.Error)
		case res.Item == ota.RetainTargetLists:
			fmt.Fprintf(tw, "  %s\tdeleted %d lists older than %s (%d kept: their rollout runs or has a schedule)\n", res.Item, res.Deleted,
				res.Before.UTC().Format(time.RFC3339), res.InUse)
		case res.Deleted == 0:
			fmt.Fprintf(tw, "  %s\tnothing older than %s\n", res.Item, res.Before.UTC().Format(time.RFC3339))
		default:
			fmt.Fprintf(tw, "  %s\tdeleted %d rows older than %s (%s of at most %d)\n", res.Item, res.Deleted, res.Before.UTC().Format(time.RFC3339),
				plural(res.Batches, "batch", "batches"), r.Policy.BatchSize)
		}
	}
	_ = tw.Flush()
}

// plural writes n with the noun's singular or plural.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
