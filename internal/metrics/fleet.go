package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/converter"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// FleetStore counts what PostgreSQL records. *store.Store satisfies it.
type FleetStore interface {
	FleetCounts(ctx context.Context, rollouts []string, silent []time.Duration) (store.FleetCounts, error)
}

// WorkflowLister lists workflow executions from Temporal's visibility store. Temporal's
// client.Client satisfies it.
type WorkflowLister interface {
	ListWorkflow(ctx context.Context, req *workflowservice.ListWorkflowExecutionsRequest) (*workflowservice.ListWorkflowExecutionsResponse, error)
}

// SilentAfter are the silences the fleet metrics count devices by.
var SilentAfter = []time.Duration{time.Hour, 24 * time.Hour}

// FleetCollector exports how the fleet stands, read at scrape time from PostgreSQL and from
// Temporal's visibility store, at most once per Interval (scrapes in between get the last
// figures): devices registered, disabled and silent, upgrades in flight, the running rollouts
// with their state and their devices by state, and the notifications waiting. Every worker
// exports the same figures: aggregate them with max, not sum.
type FleetCollector struct {
	Store    FleetStore
	Temporal WorkflowLister
	// Namespace is the Temporal namespace of the rollouts.
	Namespace string
	// Interval is the least time between two reads (default 10 s); Timeout bounds one read
	// (default 10 s).
	Interval, Timeout time.Duration
	Logger            *slog.Logger

	mu     sync.Mutex
	types  map[string]bool // upgrade types seen in flight: shown at 0 when none is
	at     time.Time
	last   []prometheus.Metric
	errors prometheus.Counter
	once   sync.Once
}

var (
	devicesDesc = prometheus.NewDesc("otaflow_devices", "Registered devices, by state (enabled or disabled).", []string{"state"}, nil)
	silentDesc  = prometheus.NewDesc("otaflow_devices_silent",
		"Enabled devices not heard from (no message at all) for longer than the label says, or never.", []string{"for"}, nil)
	inFlightDesc = prometheus.NewDesc("otaflow_upgrades_in_flight", "Device upgrades started and not finished, by type (PostgreSQL).",
		[]string{LabelType}, nil)
	rolloutStateDesc = prometheus.NewDesc("otaflow_rollout_state",
		"Running rollouts: 1 for the state each is in (running, paused, baking, waiting_approval, ...).", []string{LabelRollout, LabelState}, nil)
	rolloutDevicesDesc = prometheus.NewDesc("otaflow_rollout_devices",
		"Device upgrades of each running rollout, by state (PostgreSQL).", []string{LabelRollout, LabelState}, nil)
	notifyPendingDesc = prometheus.NewDesc("otaflow_notifications_pending", "Event notifications waiting to be delivered.", nil, nil)
	notifyFailedDesc  = prometheus.NewDesc("otaflow_notifications_undeliverable",
		"Event notifications given up after their retry budget (recorded in notify_outbox).", nil, nil)
	fleetUpDesc = prometheus.NewDesc("otaflow_fleet_up", "1 when the last read of the fleet figures succeeded.", nil, nil)
)

func (c *FleetCollector) init() {
	c.once.Do(func() {
		c.errors = prometheus.NewCounter(prometheus.CounterOpts{Name: "otaflow_fleet_read_errors_total",
			Help: "Reads of the fleet figures from PostgreSQL or Temporal that failed."})
		if c.Interval <= 0 {
			c.Interval = 10 * time.Second
		}
		if c.Timeout <= 0 {
			c.Timeout = 10 * time.Second
		}
		if c.Logger == nil {
			c.Logger = slog.Default()
		}
	})
}

// Describe sends the descriptors of the fleet metrics.
func (c *FleetCollector) Describe(ch chan<- *prometheus.Desc) {
	c.init()
	for _, d := range []*prometheus.Desc{devicesDesc, silentDesc, inFlightDesc, rolloutStateDesc, rolloutDevicesDesc,
		notifyPendingDesc, notifyFailedDesc, fleetUpDesc} {
		ch <- d
	}
	c.errors.Describe(ch)
}

// Collect reads the figures, unless it did less than Interval ago, and sends them.
func (c *FleetCollector) Collect(ch chan<- prometheus.Metric) {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) >= c.Interval {
		ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
		ms, err := c.read(ctx)
		cancel()
		c.at = time.Now()
		if err != nil {
			c.errors.Inc()
			c.Logger.Warn("Could not read the fleet metrics", "error", err)
			c.last = []prometheus.Metric{prometheus.MustNewConstMetric(fleetUpDesc, prometheus.GaugeValue, 0)}
		} else {
			c.last = append(ms, prometheus.MustNewConstMetric(fleetUpDesc, prometheus.GaugeValue, 1))
		}
	}
	for _, m := range c.last {
		ch <- m
	}
	c.errors.Collect(ch)
}

// read reads the running rollouts from Temporal, then the counts from PostgreSQL.
func (c *FleetCollector) read(ctx context.Context) ([]prometheus.Metric, error) {
	states, err := c.runningRollouts(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(states))
	for name := range states {
		names = append(names, name)
	}
	sort.Strings(names)
	fc, err := c.Store.FleetCounts(ctx, names, SilentAfter)
	if err != nil {
		return nil, err
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) prometheus.Metric {
		return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	ms := []prometheus.Metric{
		gauge(devicesDesc, fc.Devices-fc.Disabled, "enabled"),
		gauge(devicesDesc, fc.Disabled, "disabled"),
		gauge(notifyPendingDesc, fc.NotifyPending),
		gauge(notifyFailedDesc, fc.NotifyFailed),
	}
	for _, d := range SilentAfter {
		ms = append(ms, gauge(silentDesc, fc.Silent[d], shortDuration(d)))
	}
	if c.types == nil {
		c.types = map[string]bool{}
	}
	for typ := range fc.InFlight {
		c.types[typ] = true
	}
	for typ := range c.types {
		ms = append(ms, gauge(inFlightDesc, fc.InFlight[typ], typ))
	}
	for _, name := range names {
		ms = append(ms, gauge(rolloutStateDesc, 1, name, states[name]))
		for _, st := range ota.AllStates {
			ms = append(ms, gauge(rolloutDevicesDesc, fc.Rollouts[name][st], name, string(st)))
		}
	}
	return ms, nil
}

// runningRollouts returns the state (OtaState) of every running rollout, by name.
func (c *FleetCollector) runningRollouts(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	var token []byte
	dc := converter.GetDefaultDataConverter()
	for {
		resp, err := c.Temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Namespace:     c.Namespace,
			Query:         fmt.Sprintf("WorkflowType = '%s' AND ExecutionStatus = 'Running'", ota.RolloutWorkflowName),
			NextPageToken: token,
		})
		if err != nil {
			return nil, fmt.Errorf("list running rollouts: %w", err)
		}
		for _, e := range resp.GetExecutions() {
			fields := e.GetSearchAttributes().GetIndexedFields()
			var name, state string
			if p := fields[ota.SearchRollout.GetName()]; p != nil {
				_ = dc.FromPayload(p, &name)
			}
			if p := fields[ota.SearchState.GetName()]; p != nil {
				_ = dc.FromPayload(p, &state)
			}
			if name == "" {
				continue
			}
			out[name] = state
		}
		if token = resp.GetNextPageToken(); len(token) == 0 {
			return out, nil
		}
	}
}

// shortDuration writes 1h0m0s as 1h and 24h0m0s as 24h.
func shortDuration(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	if d%time.Minute == 0 {
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}
