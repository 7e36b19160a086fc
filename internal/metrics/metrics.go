// Package metrics serves OTAflow's Prometheus metrics: each program (worker, bridge, the
// embedded broker) has a registry of its own, served on /metrics of its --metrics-listen
// address. The Temporal SDK's client and worker metrics, and the metrics OTAflow's workflows
// emit through workflow.GetMetricsHandler, reach the same registry through the SDK's
// OpenTelemetry contrib handler (go.temporal.io/sdk/contrib/opentelemetry) and the
// OpenTelemetry Prometheus exporter; OTAflow's own counters and gauges are client_golang
// collectors.
//
// The names of the metrics workflows emit are in names.go; a Temporal counter named
// "otaflow_upgrades_finished" is exported as otaflow_upgrades_finished_total, and a timer
// "otaflow_upgrade_duration" as the histogram otaflow_upgrade_duration_seconds.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.temporal.io/sdk/client"
	temporalotel "go.temporal.io/sdk/contrib/opentelemetry"
)

// Flag is the command-line flag, and Env the environment variable, of the address a program
// serves its metrics on; empty turns metrics off.
const (
	Flag = "metrics-listen"
	Env  = "METRICS_LISTEN"
)

// NewRegistry returns a registry with the Go runtime's and the process's collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Buckets of the histograms, in seconds.
var (
	// UpgradeBuckets bound the time from the start of a device upgrade to its success: from
	// seconds (a device already downloading) to a day (the default deadline).
	UpgradeBuckets = []float64{1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400}
	// LatencyBuckets bound request and task latencies: from a millisecond to a minute.
	LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// TemporalHandler returns a Temporal SDK metrics handler whose metrics reg exports: give it
// to the Temporal client (client.Options.MetricsHandler) of a worker or a bridge. The SDK's
// own metrics (temporal_*) and those OTAflow's workflows emit (otaflow_*) come through it;
// counters are exported as Prometheus counters, timers as histograms in seconds.
func TemporalHandler(reg prometheus.Registerer) (client.MetricsHandler, error) {
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo(),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes))
	if err != nil {
		return nil, fmt.Errorf("metrics: Temporal metrics exporter: %w", err)
	}
	buckets := func(name string, b []float64) sdkmetric.View {
		return sdkmetric.NewView(sdkmetric.Instrument{Name: name, Kind: sdkmetric.InstrumentKindHistogram},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: b}})
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter),
		sdkmetric.WithView(buckets(UpgradeDuration, UpgradeBuckets), buckets("temporal_*", LatencyBuckets)))
	return temporalotel.NewMetricsHandler(temporalotel.MetricsHandlerOptions{
		Meter:                provider.Meter("otaflow"),
		UseMonotonicCounters: true,
		// A metric that cannot be made is logged once by the SDK's caller; never panic.
		OnError: func(err error) { slog.Default().Warn("Temporal metric not exported", "error", err) },
	}), nil
}

// Server serves a registry's metrics on /metrics.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen serves reg on http://addr/metrics until Close. Port 0 picks a free port (URL says
// which).
func Listen(addr string, reg *prometheus.Registry) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "OTAflow metrics: /metrics")
	})
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln: ln}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Default().Error("metrics server stopped", "error", err)
		}
	}()
	return s, nil
}

// URL is the address of the metrics page, http://host:port/metrics; an unspecified listen
// host is given as 127.0.0.1.
func (s *Server) URL() string {
	host, port, _ := net.SplitHostPort(s.ln.Addr().String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/metrics"
}

// Close stops serving, letting a scrape under way finish (at most 5 seconds).
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}
