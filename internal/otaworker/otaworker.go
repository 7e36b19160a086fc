// Package otaworker puts OTAflow's Temporal worker together from its parts: the activities
// with their MQTT publisher, store, package policy and event notifications, the workflows,
// the worker's metrics and the notifier workflow. The worker program (worker/) and the local
// stack (internal/dev/system) both build their worker here, so that they run the same thing.
package otaworker

import (
	"context"
	"log/slog"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/workflows"
)

// Config is what a worker is built from, once per process.
type Config struct {
	// Temporal is the client the activities use (to follow workflows, for example) and the
	// fleet metrics read; the worker polls with the client given to New.
	Temporal client.Client
	// Namespace is Temporal's namespace, as the fleet metrics name it.
	Namespace string
	// Store is OTAflow's PostgreSQL store.
	Store *store.Store
	// Packages is the package policy: trusted keys, and whether signatures are required.
	Packages pkgsig.Policy
	// Deployment is the deployment's webhook receiver; nil for none (rollouts' own
	// receivers are delivered all the same).
	Deployment *notify.Receiver
	// Notify are the delivery's settings; zero ones take notify's defaults.
	Notify notify.Settings
	// Logger logs the deliveries and the fleet metrics' failures.
	Logger *slog.Logger
}

// Parts are a process's worker parts: what a worker restarted in the same process reuses.
type Parts struct {
	cfg       Config
	deliverer *notify.Deliverer
}

// NewParts makes the parts of cfg.
func NewParts(cfg Config) *Parts {
	return &Parts{cfg: cfg, deliverer: &notify.Deliverer{Store: cfg.Store, Deployment: cfg.Deployment, Settings: cfg.Notify,
		Logger: cfg.Logger}}
}

// Collectors are the worker's metrics beyond the SDK's: the fleet by state and the
// notifications' delivery, for a registry of the process.
func (p *Parts) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		&metrics.FleetCollector{Store: p.cfg.Store, Temporal: p.cfg.Temporal, Namespace: p.cfg.Namespace, Logger: p.cfg.Logger},
		p.deliverer.Collector(),
	}
}

// New returns a worker of OTAflow's task queue that polls with c (whose metrics handler
// gets the SDK's metrics) and publishes commands on mc, a connected MQTT client.
func (p *Parts) New(c client.Client, mc mqtt.Client) worker.Worker {
	return workflows.NewWorker(c, &activities.Activities{
		Publisher: &mqttconn.Publisher{Client: mc},
		Store:     p.cfg.Store,
		Temporal:  p.cfg.Temporal,
		Packages:  p.cfg.Packages,
		Notify:    &activities.Notifications{Events: p.cfg.Store, Deployment: p.cfg.Deployment != nil, Deliverer: p.deliverer},
	})
}

// StartNotifier starts the notifier workflow, which delivers the deployment's notifications,
// when the deployment has a receiver; it is idempotent.
func (p *Parts) StartNotifier(ctx context.Context) error {
	if p.cfg.Deployment == nil {
		return nil
	}
	return ota.StartNotifier(ctx, p.cfg.Temporal)
}
