// Command worker hosts OTAflow's workflows and activities: it polls the Temporal task queue,
// publishes upgrade commands over MQTT and records upgrade state in PostgreSQL.
//
//	go run ./worker --temporal-address localhost:7233 --database-url postgres://... \
//	    --mqtt-url tcp://otaflow-worker:SECRET@localhost:1883
//
// Every flag is also read from an environment variable (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
// DATABASE_URL, MQTT_URL, OTAFLOW_TRUSTED_KEYS, OTAFLOW_REQUIRE_SIGNATURES, and for TLS
// MQTT_CA_FILE, TEMPORAL_TLS_CA, ...; see --help). Ctrl-C stops it gracefully: running
// activities get time to finish.
//
// With --trusted-keys DIR (public keys only, one <key_id>.pub each) the worker verifies a
// package's signature before any command for it is sent, and with --require-signatures it
// refuses unsigned packages; without keys, the devices alone verify signatures.
//
// --metrics-listen ADDR (METRICS_LISTEN) serves Prometheus metrics on http://ADDR/metrics.
// --notify-url URL (NOTIFY_URL) sends every event notification to a webhook receiver, signed
// with the secret in NOTIFY_SECRET or --notify-secret-file.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/otaworker"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/temporalconn"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := &cli.App{
		Name:  "worker",
		Usage: "run OTAflow's Temporal worker",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "temporal-address", Value: "localhost:7233", EnvVars: []string{"TEMPORAL_ADDRESS"}, Usage: "Temporal frontend host:port"},
			&cli.StringFlag{Name: "temporal-namespace", Value: "default", EnvVars: []string{"TEMPORAL_NAMESPACE"}, Usage: "Temporal namespace"},
			&cli.StringFlag{Name: "database-url", Required: true, EnvVars: []string{"DATABASE_URL"}, Usage: "PostgreSQL URL; TLS with ?sslmode=verify-full&sslrootcert=FILE[&sslcert=FILE&sslkey=FILE]"},
			&cli.StringFlag{Name: "mqtt-url", Required: true, EnvVars: []string{"MQTT_URL"}, Usage: "MQTT broker URL with the worker's credentials, e.g. tcp://otaflow-worker:SECRET@localhost:1883"},
			&cli.StringFlag{Name: "mqtt-client-id", EnvVars: []string{"MQTT_CLIENT_ID"}, Usage: "MQTT client ID (default otaflow-worker-HOSTNAME-PID)"},
			&cli.StringFlag{Name: "trusted-keys", EnvVars: []string{pkgsig.EnvTrustedKeys},
				Usage: "`DIR` of trusted public keys, one <key_id>.pub (PEM, as openssl pkey -pubout writes) per key: package signatures are verified before any command is sent (default: none; devices verify)"},
			&cli.BoolFlag{Name: "require-signatures", EnvVars: []string{pkgsig.EnvRequireSignatures},
				Usage: "refuse to send unsigned packages (needs --trusted-keys)"},
			&cli.StringFlag{Name: metrics.Flag, EnvVars: []string{metrics.Env}, Usage: "serve Prometheus metrics on http://ADDR/metrics, e.g. :9464 (off when empty)"},
			&cli.StringFlag{Name: "notify-url", EnvVars: []string{"NOTIFY_URL"},
				Usage: "send every event notification (upgrade finished, rollout waves, pauses and ends) to this webhook receiver"},
			&cli.StringFlag{Name: "notify-secret-file", EnvVars: []string{"NOTIFY_SECRET_FILE"},
				Usage: "file holding the webhook's shared secret (default: the " + notify.SecretEnv + " environment variable)"},
			&cli.DurationFlag{Name: "notify-retry-for", Value: notify.DefaultRetryFor, EnvVars: []string{"NOTIFY_RETRY_FOR"},
				Usage: "retry budget of a notification: how long after its event it is given up and recorded undeliverable"},
		}, append(tlsflags.MQTTFlags(), tlsflags.TemporalFlags()...)...),
		Action: run,
	}
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run(cCtx *cli.Context) error {
	ctx := cCtx.Context
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// The TLS files are checked before anything is dialled.
	mqttTLS, temporalTLS, err := tlsflags.Services(cCtx)
	if err != nil {
		return err
	}
	// So are the trusted keys.
	packages, err := pkgsig.LoadPolicy(cCtx.String("trusted-keys"), cCtx.Bool("require-signatures"))
	if err != nil {
		return fmt.Errorf("package policy: %w", err)
	}
	var deployment *notify.Receiver
	if u := cCtx.String("notify-url"); u != "" {
		if err := ota.ValidateWebhookURL(u); err != nil {
			return cli.Exit(err.Error(), 2)
		}
		secret, err := notify.ReadSecret(cCtx.String("notify-secret-file"), os.Getenv)
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		deployment = &notify.Receiver{URL: u, Secret: secret}
	}
	var reg *prometheus.Registry
	var handler client.MetricsHandler
	if addr := cCtx.String(metrics.Flag); addr != "" {
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

	clientID := cCtx.String("mqtt-client-id")
	if clientID == "" {
		host, _ := os.Hostname()
		clientID = fmt.Sprintf("otaflow-worker-%s-%d", host, os.Getpid())
	}
	opts, err := mqttconn.Options(cCtx.String("mqtt-url"), clientID, mqttconn.WithTLS(mqttTLS))
	if err != nil {
		return err
	}
	opts.SetCleanSession(true) // the worker only publishes
	mc, err := mqttconn.Connect(ctx, opts)
	if err != nil {
		return fmt.Errorf("%w (broker %s)", err, credential.RedactURL(cCtx.String("mqtt-url")))
	}
	defer mc.Disconnect(250)

	c, err := temporalconn.Dial(ctx, temporalconn.Options{
		Address: cCtx.String("temporal-address"), Namespace: cCtx.String("temporal-namespace"), Logger: logger, TLS: temporalTLS,
		MetricsHandler: handler,
	})
	if err != nil {
		return err
	}
	defer c.Close()

	parts := otaworker.NewParts(otaworker.Config{Temporal: c, Namespace: cCtx.String("temporal-namespace"), Store: st,
		Packages: packages, Deployment: deployment, Notify: notify.Settings{RetryFor: cCtx.Duration("notify-retry-for")},
		Logger: logger})
	w := parts.New(c, mc)
	if reg != nil {
		reg.MustRegister(parts.Collectors()...)
		srv, err := metrics.Listen(cCtx.String(metrics.Flag), reg)
		if err != nil {
			return err
		}
		defer srv.Close()
		logger.Info("Serving metrics", "url", srv.URL())
	}
	if err := parts.StartNotifier(ctx); err != nil {
		return err
	}
	if deployment != nil {
		logger.Info("Event notifications on", "receiver", notify.Redact(deployment.URL))
	}
	// Run returns when Ctrl-C stops the worker (nil), or when a fatal worker error stopped it
	// (the namespace deleted, the server refusing the worker): then the program exits 1, so
	// that a supervisor sees it and restarts it, rather than keeping a process that polls
	// nothing.
	interrupt := make(chan any)
	go func() {
		<-ctx.Done()
		logger.Info("Stopping worker: waiting for running tasks")
		close(interrupt)
	}()
	logger.Info("OTAflow worker starting", "taskQueue", ota.TaskQueue, "temporal", cCtx.String("temporal-address"),
		"namespace", cCtx.String("temporal-namespace"), "trustedKeys", packages.Keys.IDs(), "requireSignatures", packages.RequireSignature)
	if err := w.Run(interrupt); err != nil {
		return fmt.Errorf("worker stopped: %w", err)
	}
	return nil
}
