package system

import (
	"context"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/otaworker"
)

// MetricsAddrs are where the system serves the Prometheus metrics of its parts, each on an
// address of its own as the programs do ("127.0.0.1:0" picks a free port; "" leaves a part
// out).
type MetricsAddrs struct {
	Worker, Bridge, Broker string
}

// Notify configures the worker's event notifications.
type Notify struct {
	// Deployment is the deployment's own receiver; nil for none (rollouts' own receivers
	// are delivered all the same).
	Deployment *notify.Receiver
	// Settings of the delivery; zero ones take notify's defaults.
	Settings notify.Settings
}

// Parts of the system, as System.MetricsURLs names them.
const (
	PartWorker = "worker"
	PartBridge = "bridge"
	PartBroker = "broker"
)

// observe is the system's metrics and notifications: a registry per part and the Temporal
// clients whose SDK metrics go to them.
type observe struct {
	workerClient, bridgeClient client.Client
	worker                     *otaworker.Parts
	servers                    []*metrics.Server
	bridgeProxy, brokerProxy   *proxyCollector
}

// proxyCollector collects the metrics of whichever collector is current: the bridge and the
// broker are replaced when restarted, their registry is not.
type proxyCollector struct {
	mu sync.Mutex
	c  prometheus.Collector
}

func (p *proxyCollector) set(c prometheus.Collector) {
	p.mu.Lock()
	p.c = c
	p.mu.Unlock()
}

func (p *proxyCollector) current() prometheus.Collector {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.c
}

// Describe sends nothing: the proxy is an unchecked collector, as its parts change.
func (p *proxyCollector) Describe(chan<- *prometheus.Desc) {}

// Collect collects the current collector's metrics.
func (p *proxyCollector) Collect(ch chan<- prometheus.Metric) {
	if c := p.current(); c != nil {
		c.Collect(ch)
	}
}

// startObserve sets up the registries, the Temporal clients with their metrics handlers and
// the notifications, and serves the metrics.
func (s *System) startObserve(ctx context.Context) error {
	s.obs = &observe{workerClient: s.cfg.Client, bridgeClient: s.cfg.Client}
	o := s.obs
	wc := otaworker.Config{Temporal: s.cfg.Client, Store: s.cfg.Store,
		Packages: s.cfg.WorkerPolicy, Logger: s.log}
	if n := s.cfg.Notify; n != nil {
		wc.Deployment, wc.Notify = n.Deployment, n.Settings
	}
	o.worker = otaworker.NewParts(wc)
	m := s.cfg.Metrics
	if m == nil {
		return nil
	}
	s.MetricsURLs = map[string]string{}
	serve := func(part, addr string, reg *prometheus.Registry) error {
		srv, err := metrics.Listen(addr, reg)
		if err != nil {
			return fmt.Errorf("%s metrics: %w", part, err)
		}
		o.servers = append(o.servers, srv)
		s.MetricsURLs[part] = srv.URL()
		return nil
	}
	// derive gives a part a client of its own on the shared connection, whose SDK metrics go
	// to reg.
	derive := func(reg *prometheus.Registry) (client.Client, error) {
		h, err := metrics.TemporalHandler(reg)
		if err != nil {
			return nil, err
		}
		c, err := client.NewClientFromExisting(s.cfg.Client, client.Options{MetricsHandler: h})
		if err != nil {
			return nil, fmt.Errorf("metrics: Temporal client: %w", err)
		}
		s.closers = append(s.closers, c.Close)
		return c, nil
	}
	if m.Worker != "" {
		reg := metrics.NewRegistry()
		c, err := derive(reg)
		if err != nil {
			return err
		}
		o.workerClient = c
		reg.MustRegister(o.worker.Collectors()...)
		if err := serve(PartWorker, m.Worker, reg); err != nil {
			return err
		}
	}
	if m.Bridge != "" {
		reg := prometheus.NewRegistry()
		c, err := derive(reg)
		if err != nil {
			return err
		}
		o.bridgeClient = c
		o.bridgeProxy = &proxyCollector{}
		reg.MustRegister(o.bridgeProxy)
		if err := serve(PartBridge, m.Bridge, reg); err != nil {
			return err
		}
	}
	if m.Broker != "" {
		reg := prometheus.NewRegistry()
		o.brokerProxy = &proxyCollector{}
		reg.MustRegister(o.brokerProxy)
		if err := serve(PartBroker, m.Broker, reg); err != nil {
			return err
		}
	}
	s.closers = append(s.closers, func() {
		for _, srv := range o.servers {
			_ = srv.Close()
		}
	})
	return nil
}
