// Command devstack runs the whole of OTAflow on one machine, on local defaults, and shows a
// staged rollout to simulated devices:
//
//	go run ./devstack
//
// It starts the Temporal dev server with its Web UI (building the Temporal CLI from the Go
// module proxy the first time), PostgreSQL (a local cluster under the data directory, unless
// DATABASE_URL is set), an embedded MQTT broker with device authentication and the per-device
// access rule, a file server with a demo package, the worker, the bridge and a simulated
// fleet; then it rolls the demo package out across the fleet in waves and prints the progress.
// The demo package is signed (PROTOCOL.md 1.1) with a key devstack makes in the data
// directory (publisher/devstack-demo.key); the worker and the simulated devices trust its
// public key (trusted-keys/), and verify the signature before anything is installed.
// It runs until Ctrl-C, which stops everything cleanly. A second start reuses the data
// directory: earlier runs stay visible.
//
//	go run ./devstack bench --devices 10000
//
// runs the rollout benchmark on the same stack (see bench.go).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/pkgsig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

func stackFlags(devices int) []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "devices", Value: devices, Usage: "number of simulated devices"},
		&cli.StringFlag{Name: "data-dir", Value: ".otaflow", Usage: "where the servers keep their state"},
		&cli.IntFlag{Name: "temporal-port", Value: 7233, Usage: "Temporal gRPC port"},
		&cli.IntFlag{Name: "temporal-ui-port", Value: 8233, Usage: "Temporal Web UI port"},
		&cli.IntFlag{Name: "mqtt-port", Value: 1883, Usage: "MQTT broker port"},
		&cli.IntFlag{Name: "postgres-port", Value: 5433, Usage: "local PostgreSQL port (when DATABASE_URL is not set)"},
		&cli.IntFlag{Name: "http-port", Value: 8070, Usage: "package file server port"},
		&cli.StringFlag{Name: "database-url", EnvVars: []string{"DATABASE_URL"}, Usage: "use this PostgreSQL instead of a local cluster"},
		&cli.BoolFlag{Name: "real-servers", Usage: "run the production topology instead: the Temporal server (not the dev server) on " +
			"PostgreSQL, Mosquitto with its dynamic-security plugin, two workers and two bridges as processes of their own, " +
			"from deploy/'s configuration (state in DATA-DIR/real)"},
		&cli.IntFlag{Name: "metrics-port", Value: 9464,
			Usage: "serve Prometheus metrics: the worker's on this port, the bridge's on the next, the broker's on the one after (0: off)"},
	}
}

func configFrom(cCtx *cli.Context) (Config, error) {
	if cCtx.Int("devices") < 0 || cCtx.Int("devices") > 20000 {
		return Config{}, cli.Exit("--devices must be 0 to 20000", 2)
	}
	if p := cCtx.Int("metrics-port"); p < 0 || p > 65533 {
		return Config{}, cli.Exit("--metrics-port must be 0 (off) or a port up to 65533", 2)
	}
	dir, err := filepath.Abs(cCtx.String("data-dir"))
	if err != nil {
		return Config{}, err
	}
	return Config{
		DataDir: dir, Devices: cCtx.Int("devices"),
		TemporalPort: cCtx.Int("temporal-port"), UIPort: cCtx.Int("temporal-ui-port"), MQTTPort: cCtx.Int("mqtt-port"),
		PostgresPort: cCtx.Int("postgres-port"), HTTPPort: cCtx.Int("http-port"), DatabaseURL: cCtx.String("database-url"),
		RealServers: cCtx.Bool("real-servers"), MetricsPort: cCtx.Int("metrics-port"),
		Out: cCtx.App.Writer,
	}, nil
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "devstack",
		Usage: "run OTAflow locally with simulated devices and show a staged rollout",
		Flags: append(stackFlags(50),
			&cli.BoolFlag{Name: "no-demo", Usage: "start everything but run no demo rollout"},
			&cli.StringFlag{Name: "trusted-keys", EnvVars: []string{pkgsig.EnvTrustedKeys},
				Usage: "`DIR` of more <key_id>.pub public keys for the worker and the simulated devices to trust, beside the demo key"},
			&cli.BoolFlag{Name: "require-signatures", EnvVars: []string{pkgsig.EnvRequireSignatures},
				Usage: "the worker refuses unsigned packages"},
		),
		Action: func(cCtx *cli.Context) error {
			cfg, err := configFrom(cCtx)
			if err != nil {
				return err
			}
			cfg.TrustedKeys, cfg.RequireSignatures = cCtx.String("trusted-keys"), cCtx.Bool("require-signatures")
			return runDemo(cCtx.Context, cfg, !cCtx.Bool("no-demo"))
		},
		Commands: []*cli.Command{benchCommand()},
	}
}

func runDemo(ctx context.Context, cfg Config, demo bool) error {
	start := time.Now()
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(cfg.Out, "\nStopping ...")
		s.Close()
		fmt.Fprintln(cfg.Out, "Stopped.")
	}()
	s.say("\nOTAflow is up in %s:", time.Since(start).Round(100*time.Millisecond))
	if r := s.real; r != nil {
		s.say("  Temporal        %s: the Temporal server %s on PostgreSQL (no Web UI here: docker-compose.yml runs temporalio/ui)",
			s.TemporalAddress, localstack.TemporalServerVersion)
		s.say("  MQTT broker     %s: Mosquitto with its dynamic-security plugin (administrator URL in %s)",
			s.MQTTURL, filepath.Join(cfg.DataDir, "real", "mqtt-admin.secret"))
		for i, w := range r.Workers {
			s.say("  Worker %d        pid %d", i+1, w.PID())
		}
		for i, b := range r.Bridges {
			s.say("  Bridge %d        pid %d (shared subscription)", i+1, b.PID())
		}
	} else {
		s.say("  Temporal        %s (Web UI %s)", s.TemporalAddress, s.UIURL)
		s.say("  MQTT broker     %s (devices authenticate with their own secrets)", s.MQTTURL)
	}
	s.say("  PostgreSQL      %s", credential.RedactURL(s.DatabaseURL))
	s.say("  Demo package    %s (md5 %s, %d bytes)", s.Package.URL, s.Package.MD5, s.Package.Size)
	s.say("                  signed by %s (%s); sidecar %s", demoKeyID, s.Publisher.keyFile, s.Sidecar)
	s.say("  Trusted keys    %s (the worker's and the simulated devices')", strings.Join(s.Publisher.trusted.IDs(), ", "))
	s.printMetrics()
	if demo && cfg.Devices > 0 {
		if err := s.demoRollout(ctx); err != nil {
			return err
		}
	}
	s.printNext()
	s.say("\nRunning until Ctrl-C.")
	<-ctx.Done()
	return nil
}
