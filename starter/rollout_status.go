package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/ota"
)

// rolloutStates are the states a rollout can be in, for `rollout list --state`.
var rolloutStates = []ota.RolloutState{
	ota.RolloutPreflight, ota.RolloutRunning, ota.RolloutPaused, ota.RolloutWaitingApproval,
	ota.RolloutBaking, ota.RolloutWaitingWindow, ota.RolloutWatching, ota.RolloutCanceling, ota.RolloutAborting,
	ota.RolloutCompleted, ota.RolloutAborted, ota.RolloutCanceled, ota.RolloutFailed,
}

func joinStates(states []ota.RolloutState) string {
	parts := make([]string, len(states))
	for i, s := range states {
		parts[i] = string(s)
	}
	return strings.Join(parts, ", ")
}

// errNoRollout is the error of findRollout when no rollout has the name.
var errNoRollout = errors.New("no such rollout")

// rolloutRef is one rollout workflow execution as Temporal describes or lists it.
type rolloutRef struct {
	Name       string
	WorkflowID string
	RunID      string
	Status     enumspb.WorkflowExecutionStatus
	// State, Type and Version are the rollout's search attributes.
	State, Type, Version string
	StartTime            time.Time
	CloseTime            *time.Time
}

func (r rolloutRef) running() bool { return r.Status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING }

// refFromInfo reads a rollout execution from Temporal's description of it.
func refFromInfo(info *workflowpb.WorkflowExecutionInfo) rolloutRef {
	sa := info.GetSearchAttributes()
	r := rolloutRef{
		Name:       keyword(sa, ota.SearchRollout),
		WorkflowID: info.GetExecution().GetWorkflowId(),
		RunID:      info.GetExecution().GetRunId(),
		Status:     info.GetStatus(),
		State:      keyword(sa, ota.SearchState),
		Type:       keyword(sa, ota.SearchType),
		Version:    keyword(sa, ota.SearchTargetVersion),
		StartTime:  info.GetStartTime().AsTime(),
	}
	if info.GetCloseTime() != nil {
		t := info.GetCloseTime().AsTime()
		r.CloseTime = &t
	}
	return r
}

// keyword reads a keyword search attribute; "" when it is missing.
func keyword(sa *commonpb.SearchAttributes, key temporal.SearchAttributeKeyKeyword) string {
	p := sa.GetIndexedFields()[key.GetName()]
	if p == nil {
		return ""
	}
	var s string
	if err := converter.GetDefaultDataConverter().FromPayload(p, &s); err != nil {
		return ""
	}
	return s
}

// rolloutQuery is the visibility query for rollouts, of one name and in one state when
// given (names and states are checked first: they need no quoting). Runs that continued as
// new are left out: their rollout goes on in the next run.
func rolloutQuery(name string, state ota.RolloutState) string {
	q := fmt.Sprintf("WorkflowType = '%s' AND ExecutionStatus != '%s'",
		ota.RolloutWorkflowName, enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW)
	if name != "" {
		q += fmt.Sprintf(" AND %s = '%s'", ota.SearchRollout.GetName(), name)
	}
	if state != "" {
		q += fmt.Sprintf(" AND %s = '%s'", ota.SearchState.GetName(), state)
	}
	return q
}

// listRollouts lists the rollout executions a visibility query matches, newest first.
func listRollouts(ctx context.Context, c client.Client, query string) ([]rolloutRef, error) {
	var refs []rolloutRef
	var token []byte
	for {
		resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Query: query, PageSize: 200, NextPageToken: token,
		})
		if err != nil {
			return nil, fmt.Errorf("list rollouts (%s): %w", query, err)
		}
		for _, info := range resp.GetExecutions() {
			refs = append(refs, refFromInfo(info))
		}
		if token = resp.GetNextPageToken(); len(token) == 0 {
			break
		}
	}
	slices.SortStableFunc(refs, func(a, b rolloutRef) int { return b.StartTime.Compare(a.StartTime) })
	return refs, nil
}

// findRollout finds the rollout of a name: the one running, else the newest. A rollout
// started by `rollout start` or by a schedule is the workflow RolloutWorkflowID(name); one
// started by a schedule of an earlier version runs under that ID with the scheduled time
// appended (Temporal does that), and is found by its OtaRollout search attribute.
func findRollout(ctx context.Context, c client.Client, name string) (rolloutRef, error) {
	id := ota.RolloutWorkflowID(name)
	var found []rolloutRef
	desc, err := c.DescribeWorkflow(ctx, id, "")
	var notFound *serviceerror.NotFound
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return rolloutRef{}, fmt.Errorf("describe workflow %s: %w", id, err)
	default:
		ref := refFromInfo(desc.RawResponse.GetWorkflowExecutionInfo())
		ref.Name = name
		if ref.running() {
			return ref, nil
		}
		found = append(found, ref)
	}
	listed, err := listRollouts(ctx, c, rolloutQuery(name, ""))
	if err != nil {
		return rolloutRef{}, err
	}
	found = append(found, listed...)
	if len(found) == 0 {
		return rolloutRef{}, fmt.Errorf("%w: nothing named %s runs or ran (workflow %s); see `starter rollout list`", errNoRollout, name, id)
	}
	best := slices.MinFunc(found, latestFirst)
	best.Name = name
	return best, nil
}

// latestFirst orders rollouts of one name latest first: the running one, then the newest.
// The latest is the one the commands that take a name reach.
func latestFirst(a, b rolloutRef) int {
	if a.running() != b.running() {
		if a.running() {
			return -1
		}
		return 1
	}
	return b.StartTime.Compare(a.StartTime)
}

// queryProgress asks a rollout workflow for its progress (a run that ended too: the worker
// replays it).
func queryProgress(ctx context.Context, c client.Client, workflowID, runID string) (ota.RolloutProgress, error) {
	var p ota.RolloutProgress
	v, err := c.QueryWorkflow(ctx, workflowID, runID, ota.QueryProgress)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (no answer: is the OTAflow worker running?)", err)
		}
		return p, fmt.Errorf("query progress of workflow %s: %w", workflowID, err)
	}
	if err := v.Get(&p); err != nil {
		return p, fmt.Errorf("decode progress of workflow %s: %w", workflowID, err)
	}
	return plainProgress(p), nil
}

// plainProgress is p with its reason in plain words: a rollout of an earlier version may hold
// the SDK's wrapping of an activity's error there.
func plainProgress(p ota.RolloutProgress) ota.RolloutProgress {
	p.Reason = errtext.PlainText(p.Reason)
	return p
}

// rolloutResult waits for a rollout run to end and returns its final progress: for an
// aborted, failed or canceled rollout too, with the workflow's error.
func rolloutResult(ctx context.Context, run client.WorkflowRun) (ota.RolloutProgress, error) {
	var p ota.RolloutProgress
	err := run.Get(ctx, &p)
	if err == nil {
		return plainProgress(p), nil
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.HasDetails() {
		if derr := appErr.Details(&p); derr == nil {
			return plainProgress(p), err
		}
	}
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) && canceled.HasDetails() {
		if derr := canceled.Details(&p); derr == nil {
			return plainProgress(p), err
		}
	}
	return p, err
}

// currentProgress returns how a rollout stands. A running one is asked (retrying for a few
// seconds: a workflow that has just started answers once its first task ran). An ended one
// is read from its result, which needs no worker, and asked only when the result holds no
// progress (a terminated run).
func currentProgress(ctx context.Context, c client.Client, ref rolloutRef) (ota.RolloutProgress, error) {
	runID := ""
	if !ref.running() {
		runID = ref.RunID
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		p, _ := rolloutResult(rctx, c.GetWorkflow(rctx, ref.WorkflowID, ref.RunID))
		cancel()
		if p.State != "" {
			return p, nil
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		p, err := queryProgress(qctx, c, ref.WorkflowID, runID)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return p, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rolloutStatusReport is what `rollout status` shows: the workflow's progress, and the
// upgrade records of PostgreSQL by state when DATABASE_URL is set.
type rolloutStatusReport struct {
	WorkflowID     string `json:"workflow_id"`
	RunID          string `json:"run_id,omitempty"`
	WorkflowStatus string `json:"workflow_status,omitempty"`
	ota.RolloutProgress
	// StoreCounts counts the rollout's upgrade records by state.
	StoreCounts map[ota.State]int `json:"store_counts,omitempty"`
	// StoreDifferences says where the records and the workflow's counts differ (the text's
	// "differ: ..."); empty when they agree.
	StoreDifferences []string `json:"store_differences,omitempty"`
	StoreError       string   `json:"store_error,omitempty"`
}

// statusReport puts a rollout's progress and, when records is set, its records together.
func (e *appEnv) statusReport(cCtx *cli.Context, ref rolloutRef, p ota.RolloutProgress, records bool) rolloutStatusReport {
	rep := rolloutStatusReport{WorkflowID: ref.WorkflowID, RunID: ref.RunID, RolloutProgress: p}
	if ref.Status != enumspb.WORKFLOW_EXECUTION_STATUS_UNSPECIFIED {
		rep.WorkflowStatus = ref.Status.String()
	}
	if !records {
		return rep
	}
	if p.FirstRunID == "" && p.Counts.Started == 0 {
		// No device upgrade started yet (the run ID they record is settled at the first):
		// no record is this rollout's, whatever earlier rollouts of the name left.
		rep.StoreCounts = map[ota.State]int{}
		return rep
	}
	st, err := e.openStore(cCtx)
	if err == nil {
		// The records of this rollout's run: not those of an earlier or later rollout of the
		// name (by name only for a rollout started before upgrades recorded their run).
		rep.StoreCounts, err = st.CountByState(cCtx.Context, ref.Name, p.FirstRunID)
	}
	if err != nil {
		rep.StoreError = err.Error()
		return rep
	}
	rep.StoreDifferences = recordDifferences(p.Counts, rep.StoreCounts)
	return rep
}

func (e *appEnv) rolloutStatusAction(cCtx *cli.Context) error {
	name, err := nameArg(cCtx)
	if err != nil {
		return err
	}
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	ref, err := findRollout(ctx, c, name)
	if err != nil {
		return err
	}
	asJSON := cCtx.Bool("json")
	if cCtx.Bool("watch") {
		p, err := e.followRollout(cCtx, c, ref, watchOptions{w: e.out, json: asJSON, tty: !asJSON && isTerminal(e.out)})
		if ctx.Err() != nil {
			return cli.Exit(fmt.Sprintf("stopped watching: rollout %s goes on", name), exitInterrupted)
		}
		if p.State == "" {
			return fmt.Errorf("rollout %s (workflow %s) ended without a result: %w", name, ref.WorkflowID, err)
		}
		return nil
	}
	p, err := currentProgress(ctx, c, ref)
	if err != nil {
		return err
	}
	rep := e.statusReport(cCtx, ref, p, cCtx.String(flagDatabaseURL) != "")
	if rep.StoreError != "" {
		fmt.Fprintf(e.errOut, "starter: warning: no records from PostgreSQL: %s\n", rep.StoreError)
	}
	if asJSON {
		return writeJSON(e.out, rep)
	}
	_, err = io.WriteString(e.out, renderRollout(rep))
	return err
}

// watchOptions say how a rollout is followed.
type watchOptions struct {
	w    io.Writer
	json bool // one JSON object a line, when something changed
	tty  bool // redraw the block in place every interval
	// interval between two looks; watchInterval when 0.
	interval time.Duration
}

// followRollout shows a rollout's progress every interval (on a terminal by redrawing it,
// otherwise whenever something changed) until the rollout ends, and returns its final
// progress with the workflow's error, as rolloutResult does. It rides out outages of the
// Temporal server, saying once per outage on stderr that it retries: it ends only when the
// rollout ends, when the cancel of cCtx comes (Ctrl-C), or on an error that is an answer.
func (e *appEnv) followRollout(cCtx *cli.Context, c client.Client, ref rolloutRef, o watchOptions) (ota.RolloutProgress, error) {
	ctx := cCtx.Context
	if o.interval <= 0 {
		o.interval = watchInterval
	}
	type result struct {
		p   ota.RolloutProgress
		err error
	}
	outage := newOutageWatch(e.errOut, c, ref.WorkflowID)
	done := make(chan result, 1)
	go func() {
		// The latest run: Get follows the rollout through continue-as-new to its end.
		p, err := awaitEnd(ctx, outage, func(ctx context.Context) (ota.RolloutProgress, error) {
			return rolloutResult(ctx, c.GetWorkflow(ctx, ref.WorkflowID, ""))
		})
		done <- result{p, err}
	}()
	d := &drawer{w: o.w, tty: o.tty, json: o.json}
	// The records are read while they can be: after a failure, no longer (a database that
	// does not answer would hold every picture up).
	records := cCtx.String(flagDatabaseURL) != ""
	notes := 0
	show := func(ref rolloutRef, p ota.RolloutProgress) {
		rep := e.statusReport(cCtx, ref, p, records)
		if rep.StoreError != "" {
			fmt.Fprintf(e.errOut, "starter: warning: no records from PostgreSQL: %s\n", rep.StoreError)
			records = false
		}
		if n := outage.printed(); n != notes {
			// A message went between: a terminal drawing starts anew below it.
			notes, d.lines = n, 0
		}
		d.draw(rep)
	}
	look := time.NewTimer(0)
	defer look.Stop()
	for {
		select {
		case r := <-done:
			if ctx.Err() != nil {
				return r.p, r.err
			}
			p := r.p
			if p.State == "" { // no progress in the result (terminated): the last one known
				qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				p, _ = queryProgress(qctx, c, ref.WorkflowID, "")
				cancel()
			}
			if p.State != "" {
				if desc, err := c.DescribeWorkflow(ctx, ref.WorkflowID, ""); err == nil {
					ref.RunID, ref.Status = desc.WorkflowExecution.RunID, desc.Status
				}
				show(ref, p)
			}
			return p, r.err
		case <-look.C:
			look.Reset(o.interval)
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		p, err := queryProgress(qctx, c, ref.WorkflowID, "")
		cancel()
		if err != nil {
			// Before the first workflow task there is nothing to ask, and without a worker no
			// answer; a failed look only delays a picture. Whether the server itself answers
			// is what the user is told. The result decides the end.
			outage.check(ctx)
			continue
		}
		outage.answered()
		show(ref, p)
	}
}

// drawer shows successive status reports.
type drawer struct {
	w     io.Writer
	tty   bool
	json  bool
	lines int    // lines of the block on the terminal
	last  string // what the last block printed showed, less what changes by itself
}

func (d *drawer) draw(rep rolloutStatusReport) {
	if d.tty {
		block := renderRollout(rep)
		if d.lines > 0 {
			fmt.Fprintf(d.w, "\x1b[%dA\x1b[J", d.lines) // up to the block's first line, clear below
		}
		io.WriteString(d.w, block)
		d.lines = strings.Count(block, "\n")
		return
	}
	// The start rate moves by itself under a ramp, and so does the update time: a new block
	// for those alone would only repeat the last one.
	same := rep
	same.RatePerMinute, same.UpdatedAt = 0, time.Time{}
	sig, _ := json.Marshal(same)
	if string(sig) == d.last {
		return
	}
	if d.json {
		line, err := json.Marshal(rep)
		if err == nil {
			fmt.Fprintf(d.w, "%s\n", line)
		}
	} else {
		if d.last != "" {
			fmt.Fprintln(d.w)
		}
		io.WriteString(d.w, renderRollout(rep))
	}
	d.last = string(sig)
}

// isTerminal reports whether w is a terminal that understands cursor movement.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// barWidth is the width of a wave's progress bar, brackets excluded.
const barWidth = 30

// progressBar draws a wave: # finished, ~ running, . not started.
func progressBar(target int, c ota.Counts) string {
	if target <= 0 {
		return "[" + strings.Repeat(" ", barWidth) + "]"
	}
	finished := min(c.Finished(), target)
	started := min(max(c.Started, finished), target)
	nf := finished * barWidth / target
	ns := started*barWidth/target - nf
	return "[" + strings.Repeat("#", nf) + strings.Repeat("~", ns) + strings.Repeat(".", barWidth-nf-ns) + "]"
}

// countsByState lists the counts, all of them or only those not zero, e.g.
// "succeeded 3  failed 1  running 2".
func countsByState(c ota.Counts, all bool) string {
	var parts []string
	for _, kv := range []struct {
		name string
		n    int
	}{
		{"succeeded", c.Succeeded}, {"skipped", c.Skipped}, {"failed", c.Failed}, {"timed out", c.TimedOut},
		{"reverted", c.Reverted}, {"canceled", c.Canceled}, {"conflict", c.Conflict}, {"running", c.Running()},
	} {
		if all || kv.n != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", kv.name, kv.n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "  ")
}

// recordDifferences compares the workflow's counts with the records, state by state.
func recordDifferences(c ota.Counts, records map[ota.State]int) []string {
	running := 0
	for s, n := range records {
		if !s.Final() {
			running += n
		}
	}
	var diffs []string
	for _, kv := range []struct {
		state    ota.State
		workflow int
		records  int
	}{
		{ota.StateSucceeded, c.Succeeded, records[ota.StateSucceeded]},
		{ota.StateSkipped, c.Skipped, records[ota.StateSkipped]},
		{ota.StateFailed, c.Failed, records[ota.StateFailed]},
		{ota.StateTimedOut, c.TimedOut, records[ota.StateTimedOut]},
		{ota.StateReverted, c.Reverted, records[ota.StateReverted]},
		{ota.StateCanceled, c.Canceled, records[ota.StateCanceled]},
		{"running", c.Running(), running},
	} {
		if kv.workflow != kv.records {
			diffs = append(diffs, fmt.Sprintf("%s %d in the workflow, %d recorded", kv.state, kv.workflow, kv.records))
		}
	}
	return diffs
}

// renderRollout is the human form of a status report.
func renderRollout(rep rolloutStatusReport) string {
	var b strings.Builder
	p := rep.RolloutProgress
	fmt.Fprintf(&b, "Rollout %s: %s %s  (workflow %s", p.Name, p.Type, p.Version, rep.WorkflowID)
	if rep.WorkflowStatus != "" {
		fmt.Fprintf(&b, ", %s", rep.WorkflowStatus)
	}
	b.WriteString(")\n")
	line := func(label, format string, args ...any) {
		fmt.Fprintf(&b, "%-10s"+format+"\n", append([]any{label}, args...)...)
	}
	line("State", "%s", p.State)
	if p.Reason != "" {
		line("Reason", "%s", p.Reason)
	}
	if len(p.Waves) > 0 {
		line("Wave", "%d of %d", min(max(p.CurrentWave, 1), len(p.Waves)), len(p.Waves))
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		for _, w := range p.Waves {
			fmt.Fprintf(tw, "  wave %d\t%s\t%d/%d\t%s\n", w.Number, progressBar(w.Target, w.Counts), w.Counts.Finished(), w.Target,
				countsByState(w.Counts, false))
		}
		tw.Flush()
	}
	line("Totals", "%d targets, %d started: %s", p.Total, p.Counts.Started, countsByState(p.Counts, true))
	if p.Late != nil {
		line("Late", "%d started after the waves: %s", p.Late.Started, countsByState(*p.Late, false))
	}
	if p.Soak > 0 && p.Counts.Running() > 0 {
		line("Soak", "%s: a running upgrade may have installed and be soaking; it counts once the device held the version that long", p.Soak)
	}
	if left := p.LeftOut; left.Total() > 0 || p.Counts.Incompatible > 0 || p.Counts.Quarantined > 0 {
		text := leftOutText(left) + " (at pre-flight)"
		if p.Late != nil {
			text += fmt.Sprintf("; now %d incompatible, %d quarantined", p.Counts.Incompatible, p.Counts.Quarantined)
		}
		line("Left out", "%s", text)
	}
	if !p.State.Final() {
		rate := "unbounded"
		if p.RatePerMinute > 0 {
			rate = fmt.Sprintf("%.1f a minute", p.RatePerMinute)
		}
		line("Rate", "%s", rate)
	}
	if !p.StartedAt.IsZero() {
		line("Started", "%s", formatTime(p.StartedAt))
	}
	if p.FinishedAt != nil {
		line("Finished", "%s", formatTime(*p.FinishedAt))
	}
	switch {
	case rep.StoreCounts != nil:
		var parts []string
		for _, s := range ota.AllStates {
			if n := rep.StoreCounts[s]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", s, n))
			}
		}
		if len(parts) == 0 {
			parts = []string{"none"}
		}
		verdict := "agree with the workflow"
		if diffs := rep.StoreDifferences; len(diffs) > 0 {
			why := "they are read a moment apart"
			if p.FirstRunID == "" {
				why += ", and the records of a rollout started before OTAflow recorded runs count every rollout of this name"
			}
			verdict = "differ: " + strings.Join(diffs, ", ") + " (" + why + ")"
		}
		line("Records", "%s  (PostgreSQL; %s)", strings.Join(parts, "  "), verdict)
	case rep.StoreError != "":
		line("Records", "unavailable: %s", rep.StoreError)
	}
	return b.String()
}

// rolloutListEntry is one rollout in `rollout list --json`.
type rolloutListEntry struct {
	Name           string     `json:"name"`
	State          string     `json:"state"`
	Type           string     `json:"type"`
	Version        string     `json:"version"`
	StartTime      time.Time  `json:"start_time"`
	CloseTime      *time.Time `json:"close_time,omitempty"`
	WorkflowStatus string     `json:"workflow_status"`
	WorkflowID     string     `json:"workflow_id"`
	RunID          string     `json:"run_id"`
	// Latest is set on the latest rollout of its name (the running one, else the newest):
	// the one `rollout status NAME` and the other commands that take a name reach. A name
	// used again lists each of its rollouts once.
	Latest bool `json:"latest"`
}

func (e *appEnv) rolloutListAction(cCtx *cli.Context) error {
	state := ota.RolloutState(cCtx.String("state"))
	if cCtx.IsSet("state") && !slices.Contains(rolloutStates, state) {
		return usageErrorf(cCtx, "--state must be one of %s, not %q", joinStates(rolloutStates), state)
	}
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return err
	}
	// Every rollout is listed first, so that which is the latest of its name does not depend
	// on --state.
	refs, err := listRollouts(cCtx.Context, c, rolloutQuery("", ""))
	if err != nil {
		return err
	}
	latest := map[string]rolloutRef{}
	for _, r := range refs {
		r.Name = cmp.Or(r.Name, strings.TrimPrefix(r.WorkflowID, ota.RolloutWorkflowID("")))
		if l, ok := latest[r.Name]; !ok || latestFirst(r, l) < 0 {
			latest[r.Name] = r
		}
	}
	entries := make([]rolloutListEntry, 0, len(refs))
	for _, r := range refs {
		name := cmp.Or(r.Name, strings.TrimPrefix(r.WorkflowID, ota.RolloutWorkflowID("")))
		if state != "" && r.State != string(state) {
			continue
		}
		l := latest[name]
		entries = append(entries, rolloutListEntry{Name: name, State: r.State, Type: r.Type, Version: r.Version,
			StartTime: r.StartTime, CloseTime: r.CloseTime, WorkflowStatus: r.Status.String(), WorkflowID: r.WorkflowID, RunID: r.RunID,
			Latest: l.WorkflowID == r.WorkflowID && l.RunID == r.RunID})
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, entries)
	}
	if len(entries) == 0 {
		fmt.Fprintln(e.out, "(no rollouts)")
		return nil
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tTYPE\tVERSION\tSTARTED\tSTATUS\tWORKFLOW\tOF ITS NAME")
	for _, r := range entries {
		which := "earlier"
		if r.Latest {
			which = "latest"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, cmp.Or(r.State, "-"), cmp.Or(r.Type, "-"), cmp.Or(r.Version, "-"),
			formatTime(r.StartTime), r.WorkflowStatus, r.WorkflowID, which)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write rollout list: %w", err)
	}
	return nil
}
