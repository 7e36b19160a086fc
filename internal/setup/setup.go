// Package setup prepares real servers for OTAflow: the one setup step that `starter setup`
// runs, and docker-compose.yml's setup service with it, before the worker and the bridge
// start. It is a list of named steps, each idempotent: run again, a step finds its work done
// and says so.
//
//	rep, err := setup.Run(ctx, setup.Config{TemporalAddress: "localhost:7233", DatabaseURL: url}, setup.DefaultSteps())
//
// A step that needs more (for example the MQTT broker's provisioning) is a Step appended to
// DefaultSteps, reading what it needs from Config and the connections Env opens.
package setup

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.temporal.io/api/enums/v1"
	namespacepb "go.temporal.io/api/namespace/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cenkalti/backoff/v5"
	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// DefaultRetention is how long the namespace a setup creates keeps closed workflows.
const DefaultRetention = 72 * time.Hour

// DefaultWait is how long a setup waits for the Temporal frontend to answer.
const DefaultWait = 5 * time.Minute

// Config is what the steps work on.
type Config struct {
	// TemporalAddress (host:port), TemporalNamespace ("" means "default") and TemporalTLS
	// (nil: no TLS) say where Temporal is.
	TemporalAddress   string
	TemporalNamespace string
	TemporalTLS       *tls.Config
	// Retention is how long the namespace keeps closed workflows (their histories, for the
	// Web UI and `temporal workflow show`); 0 means DefaultRetention. A namespace the setup
	// creates gets it; an existing one keeps its own unless SetRetention is set.
	Retention time.Duration
	// SetRetention sets an existing namespace's retention to Retention (`starter setup
	// --retention` given explicitly).
	SetRetention bool
	// CleanupInterval is how often the retention cleanup's schedule runs it; 0 means
	// ota.DefaultCleanupInterval.
	CleanupInterval time.Duration
	// DatabaseURL is OTAflow's PostgreSQL database.
	DatabaseURL string
	// Wait bounds the wait for the Temporal frontend to answer; 0 means DefaultWait.
	Wait time.Duration
	// MQTTAdminURL is the production broker's administrator (brokeraccounts.EnvAdminURL),
	// MQTTTLS its TLS settings (nil: none), and WorkerMQTTPassword and BridgeMQTTPassword the
	// service accounts' passwords. Without MQTTAdminURL the broker step does nothing: the
	// embedded broker (devstack) reads the registry itself.
	MQTTAdminURL                           string
	MQTTTLS                                *tls.Config
	WorkerMQTTPassword, BridgeMQTTPassword string
	// Out receives what the setup does, a line at a time; nil discards it.
	Out io.Writer
	// Logger receives the Temporal client's logs; nil keeps only its errors, on Out.
	Logger *slog.Logger
}

// Step is one named part of the setup. Run does what is missing and returns what it did, or
// what it found, for people ("created namespace default (retention 72h0m0s)"), and whether it
// changed anything. Run must be idempotent: a second setup finds nothing to change.
type Step struct {
	Name string
	Run  func(ctx context.Context, env *Env) (Outcome, error)
}

// Outcome is what a step did.
type Outcome struct {
	Changed bool
	Detail  string
}

// Result is one step's outcome in a Report.
type Result struct {
	Step string
	Outcome
}

// Report is the outcome of every step that ran, in order.
type Report []Result

// Changed reports whether any step changed something.
func (r Report) Changed() bool {
	return slices.ContainsFunc(r, func(res Result) bool { return res.Changed })
}

// DefaultSteps are the steps of `starter setup`, in order: the Temporal namespace, OTAflow's
// search attributes in it, the PostgreSQL migrations, and the Temporal Schedule of the
// retention cleanup.
func DefaultSteps() []Step {
	return []Step{
		{Name: "namespace", Run: namespaceStep},
		{Name: "search attributes", Run: searchAttributesStep},
		{Name: "database", Run: migrationsStep},
		{Name: "broker", Run: brokerStep},
		{Name: "retention cleanup", Run: cleanupScheduleStep},
	}
}

// Env is what a running setup shares between its steps: the configuration and connections
// opened on first use and closed when the setup ends.
type Env struct {
	Config
	temporal client.Client
	store    *store.Store
}

// Run runs steps in order, printing each outcome on cfg.Out, and stops at the first that
// fails. The error names the step.
func Run(ctx context.Context, cfg Config, steps []Step) (Report, error) {
	if cfg.TemporalNamespace == "" {
		cfg.TemporalNamespace = "default"
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Wait == 0 {
		cfg.Wait = DefaultWait
	}
	if cfg.CleanupInterval == 0 {
		cfg.CleanupInterval = ota.DefaultCleanupInterval
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	env := &Env{Config: cfg}
	defer env.close()
	var rep Report
	for _, s := range steps {
		out, err := s.Run(ctx, env)
		if err != nil {
			return rep, fmt.Errorf("setup step %q: %w", s.Name, err)
		}
		rep = append(rep, Result{Step: s.Name, Outcome: out})
		fmt.Fprintf(cfg.Out, "%-18s %s\n", s.Name+":", out.Detail)
	}
	if rep.Changed() {
		fmt.Fprintln(cfg.Out, "Setup complete.")
	} else {
		fmt.Fprintln(cfg.Out, "Setup complete: everything was already in place, nothing changed.")
	}
	return rep, nil
}

func (e *Env) close() {
	if e.temporal != nil {
		e.temporal.Close()
	}
	if e.store != nil {
		e.store.Close()
	}
}

// Temporal returns a client of the Temporal server, connecting on first use. A server that
// does not answer yet (a fresh one still starting) is waited for, up to Config.Wait, saying
// so on Config.Out.
func (e *Env) Temporal(ctx context.Context) (client.Client, error) {
	if e.temporal != nil {
		return e.temporal, nil
	}
	if e.TemporalAddress == "" {
		return nil, errors.New("no Temporal address (TEMPORAL_ADDRESS)")
	}
	logger := e.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(e.Out, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	opts := client.Options{HostPort: e.TemporalAddress, Namespace: e.TemporalNamespace, Logger: log.NewStructuredLogger(logger)}
	if e.TemporalTLS != nil {
		opts.ConnectionOptions.TLS = e.TemporalTLS.Clone()
	}
	ctx, cancel := context.WithTimeout(ctx, e.Wait)
	defer cancel()
	waiting := false
	lastSaid := time.Now()
	for {
		dialCtx, cancelDial := context.WithTimeout(ctx, 5*time.Second)
		c, err := client.DialContext(dialCtx, opts)
		cancelDial()
		if err == nil {
			if waiting {
				fmt.Fprintf(e.Out, "Temporal at %s answers.\n", e.TemporalAddress)
			}
			e.temporal = c
			return c, nil
		}
		if !waiting {
			fmt.Fprintf(e.Out, "Waiting for the Temporal frontend at %s to answer (up to %s; a new server takes a while)...\n", e.TemporalAddress, e.Wait)
			waiting = true
		} else if time.Since(lastSaid) >= 30*time.Second {
			fmt.Fprintf(e.Out, "Still waiting for Temporal at %s: %v\n", e.TemporalAddress, err)
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the Temporal frontend at %s did not answer within %s: %w (is the server running, and TEMPORAL_ADDRESS right?)", e.TemporalAddress, e.Wait, err)
		case <-time.After(time.Second):
		}
	}
}

// Store returns OTAflow's PostgreSQL store, opening it (and so applying its migrations) on
// first use.
func (e *Env) Store(ctx context.Context) (*store.Store, error) {
	if e.store != nil {
		return e.store, nil
	}
	if e.DatabaseURL == "" {
		return nil, errors.New("no PostgreSQL database (DATABASE_URL)")
	}
	st, err := store.Open(ctx, e.DatabaseURL)
	if err != nil {
		return nil, err
	}
	e.store = st
	return st, nil
}

// namespaceStep creates the namespace unless it exists, and with SetRetention sets its
// retention.
func namespaceStep(ctx context.Context, e *Env) (Outcome, error) {
	c, err := e.Temporal(ctx)
	if err != nil {
		return Outcome{}, err
	}
	ns := e.TemporalNamespace
	desc, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: ns})
	var notFound *serviceerror.NamespaceNotFound
	switch {
	case err == nil:
		had := desc.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration()
		if !e.SetRetention || had == e.Retention {
			return Outcome{Detail: fmt.Sprintf("namespace %s exists (retention %s), unchanged", ns, had)}, nil
		}
		if _, err := c.WorkflowService().UpdateNamespace(ctx, &workflowservice.UpdateNamespaceRequest{Namespace: ns,
			Config: &namespacepb.NamespaceConfig{WorkflowExecutionRetentionTtl: durationpb.New(e.Retention)}}); err != nil {
			return Outcome{}, fmt.Errorf("set the retention of namespace %s: %w", ns, err)
		}
		return Outcome{Changed: true, Detail: fmt.Sprintf("namespace %s exists; retention of closed workflows set to %s (was %s)", ns, e.Retention, had)}, nil
	case !errors.As(err, &notFound):
		return Outcome{}, fmt.Errorf("describe namespace %s: %w", ns, err)
	}
	_, err = c.WorkflowService().RegisterNamespace(ctx, &workflowservice.RegisterNamespaceRequest{
		Namespace:                        ns,
		Description:                      "OTAflow device upgrades and rollouts",
		WorkflowExecutionRetentionPeriod: durationpb.New(e.Retention),
	})
	var exists *serviceerror.NamespaceAlreadyExists
	if errors.As(err, &exists) { // created meanwhile, by another setup
		return Outcome{Detail: fmt.Sprintf("namespace %s exists, unchanged", ns)}, nil
	}
	if err != nil {
		return Outcome{}, fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return Outcome{Changed: true, Detail: fmt.Sprintf("created namespace %s (retention %s)", ns, e.Retention)}, nil
}

// searchAttributesStep registers OTAflow's search attributes the namespace lacks.
func searchAttributesStep(ctx context.Context, e *Env) (Outcome, error) {
	c, err := e.Temporal(ctx)
	if err != nil {
		return Outcome{}, err
	}
	// A namespace just created reaches every part of the server within seconds: until then
	// the server does not know it.
	var added []string
	for deadline := time.Now().Add(time.Minute); ; {
		added, err = RegisterSearchAttributes(ctx, c, e.TemporalNamespace)
		var notFound *serviceerror.NamespaceNotFound
		if err == nil || !errors.As(err, &notFound) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		return Outcome{}, err
	}
	// The server takes a moment to use attributes it has just registered: until then queries
	// and workflows naming them are refused. The setup ends when they work, so that what
	// starts after it (the worker, a rollout) finds them.
	took, err := awaitSearchAttributes(ctx, c, e.TemporalNamespace)
	if err != nil {
		return Outcome{}, err
	}
	if len(added) == 0 {
		return Outcome{Detail: fmt.Sprintf("%s registered in %s, unchanged", strings.Join(ota.SearchAttributeNames, ", "), e.TemporalNamespace)}, nil
	}
	return Outcome{Changed: true, Detail: fmt.Sprintf("registered %s in %s (usable after %s)", strings.Join(added, ", "), e.TemporalNamespace,
		took.Round(100*time.Millisecond))}, nil
}

// searchAttributeWait bounds the wait for registered search attributes to work.
const searchAttributeWait = 2 * time.Minute

// awaitSearchAttributes waits until a visibility query naming every OTAflow search attribute
// is accepted in namespace, and returns how long that took.
func awaitSearchAttributes(ctx context.Context, c client.Client, namespace string) (time.Duration, error) {
	var terms []string
	for _, name := range ota.SearchAttributeNames {
		terms = append(terms, name+" = 'otaflow-setup-probe'")
	}
	query := strings.Join(terms, " AND ")
	start := time.Now()
	for {
		_, err := c.WorkflowService().CountWorkflowExecutions(ctx, &workflowservice.CountWorkflowExecutionsRequest{Namespace: namespace, Query: query})
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > searchAttributeWait {
			return 0, fmt.Errorf("the search attributes of namespace %s still do not work %s after they were registered: %w", namespace, searchAttributeWait, err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// migrationsStep applies OTAflow's PostgreSQL migrations that the database lacks.
func migrationsStep(ctx context.Context, e *Env) (Outcome, error) {
	st, err := e.Store(ctx)
	if err != nil {
		return Outcome{}, err
	}
	if applied := st.Migrated(); len(applied) > 0 {
		return Outcome{Changed: true, Detail: "applied migrations " + strings.Join(applied, ", ")}, nil
	}
	return Outcome{Detail: "PostgreSQL schema up to date, unchanged"}, nil
}

// RegisterSearchAttributes registers, as Keyword, every search attribute in
// ota.SearchAttributeNames that namespace lacks on the server c is connected to, and
// returns those it registered. An attribute registered with another type is an error.
func RegisterSearchAttributes(ctx context.Context, c client.Client, namespace string) ([]string, error) {
	list, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return nil, fmt.Errorf("list the search attributes of namespace %s: %w", namespace, err)
	}
	missing := map[string]enums.IndexedValueType{}
	var added []string
	for _, name := range ota.SearchAttributeNames {
		typ, ok := list.GetCustomAttributes()[name]
		switch {
		case !ok:
			missing[name] = enums.INDEXED_VALUE_TYPE_KEYWORD
			added = append(added, name)
		case typ != enums.INDEXED_VALUE_TYPE_KEYWORD:
			return nil, fmt.Errorf("search attribute %s of namespace %s has type %s, not Keyword: remove it first (temporal operator search-attribute remove --name %s)",
				name, namespace, typ, name)
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	if _, err := c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
		Namespace: namespace, SearchAttributes: missing,
	}); err != nil {
		return nil, fmt.Errorf("register search attributes in namespace %s: %w", namespace, err)
	}
	return added, nil
}

// brokerStep provisions the production broker (brokeraccounts.Provision): its default access,
// the services' roles and accounts, and the devices' accounts disabled as the registry says.
func brokerStep(ctx context.Context, env *Env) (Outcome, error) {
	if env.MQTTAdminURL == "" {
		return Outcome{Detail: "skipped: no production broker (" + brokeraccounts.EnvAdminURL + " is not set)"}, nil
	}
	st, err := env.Store(ctx)
	if err != nil {
		return Outcome{}, err
	}
	changed, detail, err := brokeraccounts.Step(ctx, brokeraccounts.Config{AdminURL: env.MQTTAdminURL, TLS: env.MQTTTLS,
		WorkerPassword: env.WorkerMQTTPassword, BridgePassword: env.BridgeMQTTPassword}, st)
	return Outcome{Changed: changed, Detail: detail}, err
}

// cleanupScheduleStep creates the Temporal Schedule of the retention cleanup, or updates it
// when its interval or action differ from this version's.
func cleanupScheduleStep(ctx context.Context, e *Env) (Outcome, error) {
	c, err := e.Temporal(ctx)
	if err != nil {
		return Outcome{}, err
	}
	return EnsureCleanupSchedule(ctx, c, e.CleanupInterval)
}

// EnsureCleanupSchedule creates the schedule ota.RetentionCleanupScheduleID, which runs the
// retention cleanup every interval, or brings an existing one up to date (its interval and
// action; a schedule an operator paused stays paused). It is idempotent.
func EnsureCleanupSchedule(ctx context.Context, c client.Client, interval time.Duration) (Outcome, error) {
	opts := ota.RetentionCleanupSchedule(interval)
	want := opts.Action.(*client.ScheduleWorkflowAction)
	h := c.ScheduleClient().GetHandle(ctx, opts.ID)
	desc, err := untilAnswered(ctx, func() (*client.ScheduleDescription, error) { return h.Describe(ctx) })
	var notFound *serviceerror.NotFound
	if errors.As(err, &notFound) {
		_, err = c.ScheduleClient().Create(ctx, opts)
		if err == nil {
			return Outcome{Changed: true, Detail: fmt.Sprintf("created schedule %s: workflow %s every %s", opts.ID, want.Workflow, interval)}, nil
		}
		if !errors.Is(err, temporal.ErrScheduleAlreadyRunning) { // else created meanwhile, by another setup
			return Outcome{}, fmt.Errorf("create schedule %s: %w", opts.ID, err)
		}
		desc, err = untilAnswered(ctx, func() (*client.ScheduleDescription, error) { return h.Describe(ctx) })
	}
	if err != nil {
		return Outcome{}, fmt.Errorf("describe schedule %s: %w", opts.ID, err)
	}
	paused := ""
	if desc.Schedule.State != nil && desc.Schedule.State.Paused {
		paused = " (paused: " + desc.Schedule.State.Note + ")"
	}
	had := scheduleEvery(desc.Schedule.Spec)
	action, _ := desc.Schedule.Action.(*client.ScheduleWorkflowAction)
	if had == interval && action != nil && action.Workflow == want.Workflow && action.TaskQueue == want.TaskQueue &&
		action.ID == want.ID && action.StaticSummary == want.StaticSummary && action.WorkflowRunTimeout == want.WorkflowRunTimeout {
		return Outcome{Detail: fmt.Sprintf("schedule %s runs workflow %s every %s%s, unchanged", opts.ID, want.Workflow, interval, paused)}, nil
	}
	err = h.Update(ctx, client.ScheduleUpdateOptions{DoUpdate: func(in client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
		s := in.Description.Schedule
		s.Spec = &opts.Spec
		s.Action = opts.Action
		if s.Policy == nil {
			s.Policy = &client.SchedulePolicies{}
		}
		s.Policy.Overlap, s.Policy.CatchupWindow = opts.Overlap, opts.CatchupWindow
		return &client.ScheduleUpdate{Schedule: &s}, nil
	}})
	if err != nil {
		return Outcome{}, fmt.Errorf("update schedule %s: %w", opts.ID, err)
	}
	return Outcome{Changed: true, Detail: fmt.Sprintf("updated schedule %s: workflow %s every %s (was every %s)%s", opts.ID, want.Workflow, interval, had, paused)}, nil
}

// scheduleWait bounds the wait for the Temporal server to answer about a schedule: one just
// (re)started answers only once its internal worker runs the schedule's workflow again, and
// until then a describe times out.
const scheduleWait = 2 * time.Minute

// untilAnswered calls op until it returns anything but a timeout or an unavailable server, for
// at most scheduleWait.
func untilAnswered[T any](ctx context.Context, op func() (T, error)) (T, error) {
	return backoff.Retry(ctx, func() (T, error) {
		v, err := op()
		if err != nil && !unanswered(ctx, err) {
			return v, backoff.Permanent(err)
		}
		return v, err
	}, backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 250 * time.Millisecond, RandomizationFactor: 0.2,
		Multiplier: 2, MaxInterval: 5 * time.Second}), backoff.WithMaxElapsedTime(scheduleWait))
}

// unanswered tells whether err is the server not answering yet (and not ctx ending): a
// timeout, an unavailable server, or its matching service having seen no poller of the
// internal worker that runs schedules ("no poller seen for task queue recently", which a
// server restarted on its databases answers for a few seconds).
func unanswered(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var deadline *serviceerror.DeadlineExceeded
	var unavailable *serviceerror.Unavailable
	var precondition *serviceerror.FailedPrecondition
	return errors.As(err, &deadline) || errors.As(err, &unavailable) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &precondition) && strings.Contains(precondition.Message, noPollerMessage))
}

// noPollerMessage is what Temporal's matching service answers while no worker polls a task
// queue (server v1.29.1, service/matching: errNoRecentPoller).
const noPollerMessage = "no poller seen for task queue recently"

// scheduleEvery is the interval of a schedule that runs at one interval, else 0.
func scheduleEvery(spec *client.ScheduleSpec) time.Duration {
	if spec == nil || len(spec.Intervals) != 1 || len(spec.Calendars) > 0 || len(spec.CronExpressions) > 0 {
		return 0
	}
	return spec.Intervals[0].Every
}
