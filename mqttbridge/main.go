// Command mqttbridge moves device reports from MQTT to OTAflow: it subscribes to every
// device's progress and status topics, validates each message against the device protocol,
// records it in PostgreSQL and signals the device's upgrade workflow in Temporal.
//
//	go run ./mqttbridge --mqtt-url tcp://otaflow-bridge:SECRET@localhost:1883 \
//	    --database-url postgres://... --temporal-address localhost:7233
//
// Every flag is also read from an environment variable (MQTT_URL, MQTT_CLIENT_ID,
// TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, DATABASE_URL, and for TLS MQTT_CA_FILE,
// TEMPORAL_TLS_CA, ...; see --help). Several bridges can split the load with --shared, each
// with its own --mqtt-client-id. Ctrl-C stops it cleanly: messages already taken are
// finished, the rest stay with the broker for the next run. A fatal error (the broker refusing
// its credentials or subscriptions, Temporal refusing its namespace for --fatal-after) stops
// it the same way and exits 1, for a supervisor to see and restart it. --metrics-listen ADDR
// (METRICS_LISTEN) serves Prometheus metrics on http://ADDR/metrics; with --broker-metrics
// (BRIDGE_BROKER_METRICS) they include Mosquitto's figures, read from its $SYS topics on a
// connection of their own (internal/brokersys).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/brokersys"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/temporalconn"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "mqttbridge:", err)
		os.Exit(1)
	}
}

// newApp returns the command line application; its Action runs the bridge until the context
// is done.
func newApp() *cli.App {
	return &cli.App{
		Name:  "mqttbridge",
		Usage: "validate device reports from MQTT, record them in PostgreSQL and signal their upgrade workflows",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "mqtt-url", Required: true, EnvVars: []string{"MQTT_URL"},
				Usage: "MQTT broker URL with the bridge's credentials, e.g. tcp://otaflow-bridge:SECRET@localhost:1883"},
			&cli.StringFlag{Name: "mqtt-client-id", Value: bridge.DefaultClientID, EnvVars: []string{"MQTT_CLIENT_ID"},
				Usage: "MQTT client ID; fixed, so the broker keeps messages for the bridge while it is down; unique per bridge"},
			&cli.StringFlag{Name: "temporal-address", Value: "localhost:7233", EnvVars: []string{"TEMPORAL_ADDRESS"}, Usage: "Temporal frontend host:port"},
			&cli.StringFlag{Name: "temporal-namespace", Value: "default", EnvVars: []string{"TEMPORAL_NAMESPACE"}, Usage: "Temporal namespace"},
			&cli.StringFlag{Name: "database-url", Required: true, EnvVars: []string{"DATABASE_URL"},
				Usage: "PostgreSQL URL; TLS with ?sslmode=verify-full&sslrootcert=FILE[&sslcert=FILE&sslkey=FILE]"},
			&cli.BoolFlag{Name: "shared", EnvVars: []string{"BRIDGE_SHARED"},
				Usage: "subscribe through the shared subscription group so that several bridges split the load"},
			&cli.DurationFlag{Name: "progress-interval", Value: bridge.DefaultProgressInterval, EnvVars: []string{"BRIDGE_PROGRESS_INTERVAL"},
				Usage: "also signal a device's intermediate progress when this long has passed since its last progress signal " +
					"(0: never; the upgrade record shows the progress and the workflow reads the stored reports; errors, 100 and new attempts always go through)"},
			&cli.DurationFlag{Name: "progress-merge", Value: bridge.DefaultProgressMerge, EnvVars: []string{"BRIDGE_PROGRESS_MERGE"},
				Usage: "hold a device's progress signal this long: a later one replaces it, and a status report showing the new version makes it moot " +
					"(errors and status reports are never held; 0: off, signal at once)"},
			&cli.IntFlag{Name: "progress-step", EnvVars: []string{"BRIDGE_PROGRESS_STEP"},
				Usage: "also signal progress that moved at least this many points (0: off)"},
			&cli.IntFlag{Name: "shards", Value: bridge.DefaultShards, EnvVars: []string{"BRIDGE_SHARDS"},
				Usage: "shards processing messages at once, devices spread over them; each device's messages stay in order"},
			// Throughput (see bridge.Config).
			&cli.IntFlag{Name: "batch-size", Value: bridge.DefaultBatchSize, EnvVars: []string{"BRIDGE_BATCH_SIZE"},
				Usage: "queued messages a shard stores in one database round trip"},
			&cli.IntFlag{Name: "signal-concurrency", Value: bridge.DefaultSignalConcurrency, EnvVars: []string{"BRIDGE_SIGNAL_CONCURRENCY"},
				Usage: "Temporal signals sent at once, at most"},
			&cli.DurationFlag{Name: "fatal-after", Value: bridge.DefaultFatalAfter, EnvVars: []string{"BRIDGE_FATAL_AFTER"},
				Usage: "exit (code 1) once Temporal has refused the bridge outright (namespace not found, permission denied) this long"},
			&cli.StringFlag{Name: metrics.Flag, EnvVars: []string{metrics.Env}, Usage: "serve Prometheus metrics on http://ADDR/metrics, e.g. :9465 (off when empty)"},
			&cli.BoolFlag{Name: brokerMetricsFlag, EnvVars: []string{"BRIDGE_BROKER_METRICS"},
				Usage: "with --" + metrics.Flag + ", also export the broker's figures (otaflow_broker_clients_connected{kind=\"all\"}, " +
					"otaflow_broker_messages_*...) read from Mosquitto's " + brokersys.Filter + " on a connection of their own " +
					"(client ID: --mqtt-client-id + \"" + brokersys.ClientIDSuffix + "\"); the account needs read access to it, " +
					"which the setup step (starter setup) gives the bridge's role. One bridge of several is enough"},
			// The flood limit (see bridge.FloodConfig).
			&cli.Float64Flag{Name: "flood-rate", Value: bridge.DefaultFloodRate, EnvVars: []string{"BRIDGE_FLOOD_RATE"},
				Usage: "reports a second a device may send, sustained; beyond its budget, progress is counted, not stored (status reports wait, errors and 100 pass)"},
			&cli.IntFlag{Name: "flood-burst", Value: bridge.DefaultFloodBurst, EnvVars: []string{"BRIDGE_FLOOD_BURST"},
				Usage: "reports a device may send at once on top of its rate (the default passes a whole download's percentages)"},
			&cli.DurationFlag{Name: "flood-interval", Value: bridge.DefaultFloodInterval, EnvVars: []string{"BRIDGE_FLOOD_INTERVAL"},
				Usage: "how often the counts of reports not stored are logged and written to PostgreSQL (shed_reports)"},
			&cli.BoolFlag{Name: "flood-off", EnvVars: []string{"BRIDGE_FLOOD_OFF"}, Usage: "store every report, however many a device sends"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log at debug level"},
		}, append(tlsflags.MQTTFlags(), tlsflags.TemporalFlags()...)...),
		Action: run,
	}
}

// progressMerge is the bridge.Config.ProgressMerge of the --progress-merge flag, whose 0
// turns the window off (the Config's 0 is the default).
func progressMerge(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// brokerMetricsFlag exports the broker's $SYS figures with the bridge's metrics.
const brokerMetricsFlag = "broker-metrics"

func run(cCtx *cli.Context) error {
	ctx := cCtx.Context
	if cCtx.Bool(brokerMetricsFlag) && cCtx.String(metrics.Flag) == "" {
		return cli.Exit("--"+brokerMetricsFlag+" (BRIDGE_BROKER_METRICS) exports the broker's figures with the bridge's metrics: "+
			"set --"+metrics.Flag+" ("+metrics.Env+") too", 2)
	}
	level := slog.LevelInfo
	if cCtx.Bool("verbose") {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// The TLS files are checked before anything is dialled.
	mqttTLS, temporalTLS, err := tlsflags.Services(cCtx)
	if err != nil {
		return err
	}
	var reg *prometheus.Registry
	var handler client.MetricsHandler
	if cCtx.String(metrics.Flag) != "" {
		reg = metrics.NewRegistry()
		if handler, err = metrics.TemporalHandler(reg); err != nil {
			return err
		}
	}
	st, err := store.Open(ctx, cCtx.String("database-url"))
	if err != nil {
		return err
	}
	defer st.Close()

	tc, err := temporalconn.Dial(ctx, temporalconn.Options{
		Address: cCtx.String("temporal-address"), Namespace: cCtx.String("temporal-namespace"), TLS: temporalTLS,
		MetricsHandler: handler,
	})
	if err != nil {
		return err
	}
	defer tc.Close()

	b, err := bridge.New(bridge.Config{
		BrokerURL:        cCtx.String("mqtt-url"),
		TLS:              mqttTLS,
		ClientID:         cCtx.String("mqtt-client-id"),
		Shared:           cCtx.Bool("shared"),
		ProgressInterval: cCtx.Duration("progress-interval"),
		ProgressStep:     cCtx.Int("progress-step"),
		ProgressMerge:    progressMerge(cCtx.Duration("progress-merge")),
		Shards:           cCtx.Int("shards"),
		Logger:           logger,

		BatchSize:         cCtx.Int("batch-size"),
		SignalConcurrency: cCtx.Int("signal-concurrency"),
		FatalAfter:        cCtx.Duration("fatal-after"),
		Flood: bridge.FloodConfig{Rate: cCtx.Float64("flood-rate"), Burst: cCtx.Int("flood-burst"),
			Interval: cCtx.Duration("flood-interval"), Off: cCtx.Bool("flood-off")},
	}, tc, st)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	if reg != nil {
		reg.MustRegister(b.Collector())
		if cCtx.Bool(brokerMetricsFlag) {
			sys, err := brokersys.New(brokersys.Config{URL: cCtx.String("mqtt-url"), TLS: mqttTLS,
				ClientID: cCtx.String("mqtt-client-id") + brokersys.ClientIDSuffix, Logger: logger})
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			reg.MustRegister(sys)
			sys.Start()
			defer sys.Close()
		}
		srv, err := metrics.Listen(cCtx.String(metrics.Flag), reg)
		if err != nil {
			return err
		}
		defer srv.Close()
		logger.Info("Serving metrics", "url", srv.URL())
	}
	return b.Run(ctx)
}
