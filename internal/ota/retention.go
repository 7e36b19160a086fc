package ota

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
)

// RetentionCleanupWorkflowName is the registered name of workflows.RetentionCleanupWorkflow,
// which deletes what the retention policy says has expired.
const RetentionCleanupWorkflowName = "RetentionCleanup"

// RetentionCleanupScheduleID is the ID of the Temporal Schedule that runs the cleanup; `starter
// setup` creates or updates it.
const RetentionCleanupScheduleID = "retention-cleanup"

// RetentionCleanupWorkflowID is the workflow ID the schedule gives each cleanup; Temporal
// appends the scheduled time, e.g. retention-cleanup-2026-11-27T03:00:00Z.
const RetentionCleanupWorkflowID = "retention-cleanup"

// DefaultCleanupInterval is how often the schedule runs the cleanup: often enough that each
// run deletes little (an hour of expired rows), seldom enough to cost nothing in between.
const DefaultCleanupInterval = time.Hour

// RolloutSchedulePrefix starts the ID of every rollout's Temporal Schedule.
const RolloutSchedulePrefix = "rollout-schedule-"

// RolloutScheduleID is the ID of the Temporal Schedule of a rollout (`starter rollout schedule`).
func RolloutScheduleID(name string) string { return RolloutSchedulePrefix + name }

// ValidRolloutName reports whether name is a valid rollout name (RolloutRequest.Validate):
// such a name needs no quoting in a visibility query.
func ValidRolloutName(name string) bool { return rolloutNamePattern.MatchString(name) }

// RetentionItem names what the retention policy keeps for a time: a table, or for
// RetainUpgrades and RetainTargetLists the rows that belong together.
type RetentionItem string

// Retention items, in the order the cleanup handles them.
const (
	// RetainProgressEvents are the devices' progress reports, by when the bridge received them.
	RetainProgressEvents RetentionItem = "progress_events"
	// RetainRejectedMessages are the messages the bridge refused, by when it received them.
	RetainRejectedMessages RetentionItem = "rejected_messages"
	// RetainShedReports are the counts of reports the bridge's flood limit shed, by the start
	// of their interval.
	RetainShedReports RetentionItem = "shed_reports"
	// RetainUpgrades are finished upgrade records with their state changes, by when they
	// finished; a device's latest upgrade is kept whatever its age.
	RetainUpgrades RetentionItem = "upgrades"
	// RetainTargetLists are rollout target lists (explicit lists and snapshots) by when they
	// were stored, once no rollout of their name runs and no schedule of it exists.
	RetainTargetLists RetentionItem = "target_lists"
)

// RetentionItems lists every item, in the order the cleanup handles them.
var RetentionItems = []RetentionItem{RetainProgressEvents, RetainRejectedMessages, RetainShedReports, RetainUpgrades, RetainTargetLists}

// RetentionPolicy says how long OTAflow keeps what it stores in PostgreSQL, and how the
// cleanup deletes what expired: in batches of BatchSize rows, each its own short transaction,
// BatchPause apart. A keep time of 0 keeps the item forever. It is stored in PostgreSQL
// (`starter retention show|set`); every cleanup run reads it.
type RetentionPolicy struct {
	ProgressEvents   time.Duration `json:"progress_events"`
	RejectedMessages time.Duration `json:"rejected_messages"`
	ShedReports      time.Duration `json:"shed_reports"`
	Upgrades         time.Duration `json:"upgrades"`
	TargetLists      time.Duration `json:"target_lists"`
	BatchSize        int           `json:"batch_size"`
	BatchPause       time.Duration `json:"batch_pause"`
	// UpdatedAt is when the policy was last changed; zero while it is the defaults a new
	// database gets.
	UpdatedAt time.Time `json:"updated_at"`
}

// Retention defaults: what a database gets when its schema is created.
const (
	DefaultKeepProgressEvents   = 30 * 24 * time.Hour
	DefaultKeepRejectedMessages = 30 * 24 * time.Hour
	DefaultKeepShedReports      = 90 * 24 * time.Hour
	DefaultKeepUpgrades         = 0 // forever
	DefaultKeepTargetLists      = 30 * 24 * time.Hour
	DefaultCleanupBatchSize     = 5000
	DefaultCleanupBatchPause    = 100 * time.Millisecond
)

// Bounds of the policy's settings.
const (
	// MinKeepReports bounds the keep time of progress reports and upgrade records from below:
	// an upgrade may run for a day (ota.DefaultDeadline), and reads its reports meanwhile.
	MinKeepReports = 24 * time.Hour
	// MinKeep bounds the other keep times from below.
	MinKeep              = time.Hour
	MinCleanupBatchSize  = 100
	MaxCleanupBatchSize  = 50000
	MaxCleanupBatchPause = 10 * time.Second
)

// DefaultRetentionPolicy is the policy of a new database.
func DefaultRetentionPolicy() RetentionPolicy {
	return RetentionPolicy{
		ProgressEvents: DefaultKeepProgressEvents, RejectedMessages: DefaultKeepRejectedMessages,
		ShedReports: DefaultKeepShedReports, Upgrades: DefaultKeepUpgrades, TargetLists: DefaultKeepTargetLists,
		BatchSize: DefaultCleanupBatchSize, BatchPause: DefaultCleanupBatchPause,
	}
}

// Keep returns how long item is kept; 0 means forever.
func (p RetentionPolicy) Keep(item RetentionItem) time.Duration {
	switch item {
	case RetainProgressEvents:
		return p.ProgressEvents
	case RetainRejectedMessages:
		return p.RejectedMessages
	case RetainShedReports:
		return p.ShedReports
	case RetainUpgrades:
		return p.Upgrades
	case RetainTargetLists:
		return p.TargetLists
	}
	return 0
}

// SetKeep sets how long item is kept; 0 means forever.
func (p *RetentionPolicy) SetKeep(item RetentionItem, keep time.Duration) error {
	switch item {
	case RetainProgressEvents:
		p.ProgressEvents = keep
	case RetainRejectedMessages:
		p.RejectedMessages = keep
	case RetainShedReports:
		p.ShedReports = keep
	case RetainUpgrades:
		p.Upgrades = keep
	case RetainTargetLists:
		p.TargetLists = keep
	default:
		return fmt.Errorf("unknown retention item %q (one of %s)", item, strings.Join(retentionItemNames(), ", "))
	}
	return nil
}

// MinKeepOf is the least keep time of item other than 0 (forever).
func MinKeepOf(item RetentionItem) time.Duration {
	if item == RetainProgressEvents || item == RetainUpgrades {
		return MinKeepReports
	}
	return MinKeep
}

// Validate checks every keep time and the batch settings.
func (p RetentionPolicy) Validate() error {
	var errs []error
	for _, item := range RetentionItems {
		if keep := p.Keep(item); keep != 0 && keep < MinKeepOf(item) {
			errs = append(errs, fmt.Errorf("%s: keep at least %s, or 0 for ever, not %s", item, FormatKeep(MinKeepOf(item)), keep))
		}
	}
	if p.BatchSize < MinCleanupBatchSize || p.BatchSize > MaxCleanupBatchSize {
		errs = append(errs, fmt.Errorf("batch size must be %d to %d rows, not %d", MinCleanupBatchSize, MaxCleanupBatchSize, p.BatchSize))
	}
	if p.BatchPause < 0 || p.BatchPause > MaxCleanupBatchPause {
		errs = append(errs, fmt.Errorf("batch pause must be 0 to %s, not %s", MaxCleanupBatchPause, p.BatchPause))
	}
	return errors.Join(errs...)
}

func retentionItemNames() []string {
	names := make([]string, len(RetentionItems))
	for i, item := range RetentionItems {
		names[i] = string(item)
	}
	return names
}

// FormatKeep writes a keep time for people: "forever", "30d", "36h", "90m".
func FormatKeep(d time.Duration) string {
	switch {
	case d == 0:
		return "forever"
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return d.String()
}

// ParseKeep reads a keep time: "30d", a Go duration ("36h", "90m"), or "forever" (or "0").
func ParseKeep(s string) (time.Duration, error) {
	switch s = strings.TrimSpace(s); s {
	case "forever", "0":
		return 0, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int64
		if _, err := fmt.Sscanf(days, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != days || n > 36500 {
			return 0, fmt.Errorf("%q: give days as a whole number such as 30d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q: give a time such as 30d, 36h or forever", s)
	}
	return d, nil
}

// CleanupInput is the input of the cleanup workflow. Carry is set when a run continues as new
// mid-way: what the earlier runs did, and where they stopped.
type CleanupInput struct {
	Carry *CleanupReport `json:"carry,omitempty"`
}

// CleanupReport is what a cleanup did, item by item; it is the workflow's result.
type CleanupReport struct {
	// StartedAt is when the cleanup started; the cutoffs are counted back from it.
	StartedAt time.Time       `json:"started_at"`
	Policy    RetentionPolicy `json:"policy"`
	Items     []CleanupResult `json:"items"`
	// Next is the item the cleanup works on, and Cursor where it got to (while it runs, and
	// carried across continue-as-new).
	Next   int           `json:"next,omitempty"`
	Cursor CleanupCursor `json:"cursor"`
}

// CleanupResult is what the cleanup did to one item.
type CleanupResult struct {
	Item RetentionItem `json:"item"`
	// Kept is set when the policy keeps the item forever: nothing was deleted.
	Kept bool `json:"kept,omitempty"`
	// Before is the cutoff: what is older was deleted.
	Before time.Time `json:"before"`
	// Deleted counts the rows deleted (for target lists, the lists), in Batches deletes of at
	// most Largest rows each (for target lists, of their devices).
	Deleted int64 `json:"deleted"`
	Batches int   `json:"batches"`
	Largest int   `json:"largest"`
	// InUse counts, for target lists, the expired lists kept because their rollout runs or has
	// a schedule.
	InUse int `json:"in_use,omitempty"`
	// Calls counts the activity calls the item took.
	Calls int `json:"calls"`
	// Error says why the item could not be cleaned up (the cleanup went on with the next).
	Error string `json:"error,omitempty"`
}

// CleanupCursor is where a delete got to in an item's (time, key) order: the last row it
// deleted, or for target lists the last list it looked at.
type CleanupCursor struct {
	At  time.Time `json:"at"`
	ID  int64     `json:"id,omitempty"`
	Key string    `json:"key,omitempty"`
}

// DeleteExpiredInput asks to delete an item's rows older than Before, after Cursor, in
// batches of BatchSize rows (each its own transaction) BatchPause apart, for at most Budget
// (then the call returns, Done false, for the workflow to call again from the cursor).
type DeleteExpiredInput struct {
	Item       RetentionItem `json:"item"`
	Before     time.Time     `json:"before"`
	Cursor     CleanupCursor `json:"cursor"`
	BatchSize  int           `json:"batch_size"`
	BatchPause time.Duration `json:"batch_pause"`
	Budget     time.Duration `json:"budget"`
}

// DeleteExpiredResult is what one DeleteExpired call deleted, and where it stopped.
type DeleteExpiredResult struct {
	Deleted int64         `json:"deleted"`
	Batches int           `json:"batches"`
	Largest int           `json:"largest"`
	InUse   int           `json:"in_use,omitempty"`
	Cursor  CleanupCursor `json:"cursor"`
	// Done is set when nothing expired is left after the cursor.
	Done bool `json:"done"`
}

// ErrTypeNoCleanupStore is the failure of a cleanup activity on a worker whose store cannot
// clean up.
const ErrTypeNoCleanupStore = "NoCleanupStore"

// RetentionCleanupSchedule are the options of the cleanup's Temporal Schedule: every interval,
// never two at once, a missed run not made up for (the next one deletes what it would have).
func RetentionCleanupSchedule(interval time.Duration) client.ScheduleOptions {
	return client.ScheduleOptions{
		ID:            RetentionCleanupScheduleID,
		Spec:          client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: interval}}},
		Action:        RetentionCleanupAction(),
		Overlap:       enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		CatchupWindow: time.Minute,
		Note:          "OTAflow's retention cleanup, created by starter setup; the policy is in PostgreSQL (starter retention show)",
	}
}

// RetentionCleanupAction is the action of the cleanup's schedule.
func RetentionCleanupAction() *client.ScheduleWorkflowAction {
	return &client.ScheduleWorkflowAction{
		ID:        RetentionCleanupWorkflowID,
		Workflow:  RetentionCleanupWorkflowName,
		Args:      []any{CleanupInput{}},
		TaskQueue: TaskQueue,
		// Bounded: a cleanup that cannot finish in a day is stopped, and the next run goes on.
		WorkflowRunTimeout: 24 * time.Hour,
		StaticSummary:      "Retention cleanup: delete what the retention policy in PostgreSQL says has expired (starter retention show)",
	}
}

// TriggerRetentionCleanup runs the retention cleanup now, through its schedule (so that the
// schedule's rule of one cleanup at a time holds), and returns the run to wait for: the one
// the trigger started, or, with running set, the cleanup that was already running.
func TriggerRetentionCleanup(ctx context.Context, c client.Client) (run client.WorkflowRun, running bool, err error) {
	h := c.ScheduleClient().GetHandle(ctx, RetentionCleanupScheduleID)
	desc, err := h.Describe(ctx)
	var notFound *serviceerror.NotFound
	if errors.As(err, &notFound) {
		return nil, false, fmt.Errorf("there is no retention cleanup schedule (%s): run starter setup", RetentionCleanupScheduleID)
	}
	if err != nil {
		return nil, false, fmt.Errorf("describe schedule %s: %w", RetentionCleanupScheduleID, err)
	}
	if r := desc.Info.RunningWorkflows; len(r) > 0 {
		return c.GetWorkflow(ctx, r[0].WorkflowID, ""), true, nil
	}
	actions, skipped := desc.Info.NumActions, desc.Info.NumActionsSkippedOverlap
	if err := h.Trigger(ctx, client.ScheduleTriggerOptions{}); err != nil {
		return nil, false, fmt.Errorf("trigger schedule %s: %w", RetentionCleanupScheduleID, err)
	}
	// The schedule starts the workflow a moment later.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-tick.C:
		}
		if desc, err = h.Describe(ctx); err != nil {
			return nil, false, fmt.Errorf("describe schedule %s: %w", RetentionCleanupScheduleID, err)
		}
		switch recent := desc.Info.RecentActions; {
		case desc.Info.NumActions > actions && len(recent) > 0 && recent[len(recent)-1].StartWorkflowResult != nil:
			return c.GetWorkflow(ctx, recent[len(recent)-1].StartWorkflowResult.WorkflowID, ""), false, nil
		case desc.Info.NumActionsSkippedOverlap > skipped && len(desc.Info.RunningWorkflows) > 0:
			return c.GetWorkflow(ctx, desc.Info.RunningWorkflows[0].WorkflowID, ""), true, nil
		case time.Now().After(deadline):
			return nil, false, fmt.Errorf("schedule %s was triggered but started no cleanup within a minute (is it paused?)", RetentionCleanupScheduleID)
		}
	}
}
