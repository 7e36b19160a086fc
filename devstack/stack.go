package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/prodstack"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/setup"
	"github.com/otaflow/otaflow/internal/store"
)

// Config is what the local stack runs with.
type Config struct {
	DataDir      string
	Devices      int
	TemporalPort int
	UIPort       int
	MQTTPort     int
	PostgresPort int
	HTTPPort     int
	// DatabaseURL, when set, is used instead of a local PostgreSQL cluster.
	DatabaseURL string
	// Out receives what the person at the terminal reads.
	Out io.Writer
	// PackageName and PackageSize name the package made in DataDir/packages.
	PackageName string
	PackageSize int64
	// SimTiming paces the simulated devices.
	SimTiming simulator.Timing
	// External runs no worker nor bridge in this process (the benchmark runs them apart).
	External bool
	// TrustedKeys is a directory of more public keys for the worker and the simulated devices
	// to trust, beside devstack's demo key; RequireSignatures makes the worker refuse unsigned
	// packages.
	TrustedKeys       string
	RequireSignatures bool
	// RealServers runs the production topology instead (internal/dev/prodstack): the Temporal
	// server on PostgreSQL, Mosquitto, two workers and two bridges as processes of their own.
	RealServers bool
	// MetricsPort, when not 0, serves the worker's metrics on it, the bridge's on the next
	// port and the broker's on the one after. With RealServers: the first worker's and the
	// first bridge's (with the broker's figures too, --broker-metrics), and Mosquitto's $SYS
	// figures as the bridge exports them (internal/dev/prodstack).
	MetricsPort int
	// TemporalPProfPort, when not 0, serves the real Temporal server's Go profiles on
	// 127.0.0.1:TemporalPProfPort (RealServers only: the dev server cannot, see benchpprof.go).
	TemporalPProfPort int
}

// Stack is the running local system: the servers and the system around them.
type Stack struct {
	cfg      Config
	log      *slog.Logger
	pg       *localstack.Postgres
	temporal *localstack.Temporal
	// real is the production topology, with RealServers.
	real   *prodstack.Stack
	Store  *store.Store
	Client client.Client
	*system.System
	UIURL       string
	DatabaseURL string
	// TemporalAddress is the Temporal frontend, host:port.
	TemporalAddress string
	// Publisher signs the demo package; Signed is its signature as firmware 1.1 and Sidecar
	// the file that holds it, next to the package; AppSigned and AppSidecar as app 3.3.
	Publisher           *publisher
	Signed, AppSigned   pkgsig.Sidecar
	Sidecar, AppSidecar string
	closers             []func()
}

func (s *Stack) say(format string, args ...any) { fmt.Fprintf(s.cfg.Out, format+"\n", args...) }

// Start brings every part up, in dependency order; on failure it stops what it started.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	s := &Stack{cfg: cfg}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	// Each simulated device holds a socket in the broker, and one more when simulated here.
	if need := uint64(2*cfg.Devices + 1024); raiseOpenFiles(need) != nil {
		s.say("Could not raise the open-file limit to %d; with many devices, raise it (ulimit -n).", need)
	}
	logFile, err := os.OpenFile(filepath.Join(cfg.DataDir, "otaflow.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	s.closers = append(s.closers, func() { logFile.Close() })
	s.log = slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s.say("Logs of every part: %s", logFile.Name())

	ports := []struct {
		port       int
		what, flag string
	}{{cfg.MQTTPort, "MQTT broker", "--mqtt-port"}, {cfg.HTTPPort, "package file server", "--http-port"}}
	if cfg.MetricsPort != 0 {
		for i, part := range []string{"worker", "bridge", "broker"} {
			ports = append(ports, struct {
				port       int
				what, flag string
			}{cfg.MetricsPort + i, part + " metrics server", "--metrics-port"})
		}
	}
	for _, p := range ports {
		if err := localstack.CheckPortFree(p.port); err != nil {
			return nil, fmt.Errorf("the %s cannot listen: %w (choose another port with %s)", p.what, err, p.flag)
		}
	}

	// The demo package's publisher, and the keys the worker and the simulated devices trust.
	if s.Publisher, err = loadPublisher(cfg.DataDir, cfg.TrustedKeys); err != nil {
		return nil, err
	}
	packages := pkgsig.Policy{Keys: s.Publisher.trusted, RequireSignature: cfg.RequireSignatures}
	if cfg.RealServers {
		if err := s.startReal(ctx, logFile, packages); err != nil {
			return nil, err
		}
		return s, s.signDemo()
	}

	cli, err := localstack.EnsureTemporalCLI(ctx, func(format string, args ...any) { s.say(format, args...) })
	if err != nil {
		return nil, err
	}

	s.DatabaseURL = cfg.DatabaseURL
	if s.DatabaseURL == "" {
		s.say("Starting PostgreSQL in %s ...", filepath.Join(cfg.DataDir, "postgres"))
		s.pg, err = localstack.StartPostgres(ctx, localstack.PostgresOptions{
			Dir: filepath.Join(cfg.DataDir, "postgres"), Port: cfg.PostgresPort, Log: logFile})
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, func() { _ = s.pg.Stop() })
		s.DatabaseURL = s.pg.URL()
	}
	if s.Store, err = store.Open(ctx, s.DatabaseURL); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.Store.Close)

	s.say("Starting the Temporal dev server (state in %s) ...", filepath.Join(cfg.DataDir, "temporal.db"))
	s.temporal, err = localstack.StartTemporal(ctx, localstack.TemporalOptions{
		CLIPath: cli, DBFile: filepath.Join(cfg.DataDir, "temporal.db"), Port: cfg.TemporalPort,
		EnableUI: true, UIPort: cfg.UIPort, Stdout: logFile, Stderr: logFile,
		Logger: log.NewStructuredLogger(s.log),
	})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { _ = s.temporal.Stop() })
	s.Client = s.temporal.Client()
	s.UIURL = s.temporal.UIURL()
	s.TemporalAddress = s.temporal.Address()
	// The retention cleanup runs here too, as `starter setup` schedules it on real servers.
	if _, err := setup.EnsureCleanupSchedule(ctx, s.Client, ota.DefaultCleanupInterval); err != nil {
		return nil, err
	}

	switch {
	case cfg.External:
		s.say("Starting the broker and the package file server ...")
	case cfg.Devices > 0:
		s.say("Starting the broker, the worker, the bridge and %d simulated devices (sim-00001 ...) ...", cfg.Devices)
	}
	s.System, err = system.Start(ctx, system.Config{
		Client: s.Client, Store: s.Store,
		MQTTAddr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.MQTTPort)),
		HTTPAddr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.HTTPPort)),
		PackageDir:  filepath.Join(cfg.DataDir, "packages"),
		PackageName: cfg.PackageName, PackageSize: cfg.PackageSize,
		Devices: simulated(cfg), Prefix: "sim",
		Initial:     protocol.Status{"firmware_ver": "1.0", "app_ver": "3.2"},
		Timing:      cfg.SimTiming,
		SimStateDir: filepath.Join(cfg.DataDir, "devicesim"),
		BrokerStore: filepath.Join(cfg.DataDir, "broker-sessions.db"),
		NoWorker:    cfg.External, NoBridge: cfg.External,
		WorkerPolicy: packages, DevicePolicy: pkgsig.Policy{Keys: packages.Keys},
		Metrics: metricsAddrs(cfg),
		Logger:  s.log,
	})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.System.Close)
	if err := s.signDemo(); err != nil {
		return nil, err
	}
	if cfg.Devices > 0 && !cfg.External {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		if err := s.WaitReported(wctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// startReal starts the production topology (internal/dev/prodstack) in DataDir/real, on the
// stack's ports, with the simulated fleet in this process.
func (s *Stack) startReal(ctx context.Context, log io.Writer, packages pkgsig.Policy) error {
	cfg := s.cfg
	ps, err := prodstack.Start(ctx, prodstack.Options{Dir: filepath.Join(cfg.DataDir, "real"),
		PostgresPort: cfg.PostgresPort, TemporalPort: cfg.TemporalPort, MQTTPort: cfg.MQTTPort, HTTPPort: cfg.HTTPPort,
		Devices: cfg.Devices, Prefix: "sim", Initial: protocol.Status{"firmware_ver": "1.0", "app_ver": "3.2"},
		Timing: cfg.SimTiming, PackageDir: filepath.Join(cfg.DataDir, "packages"), PackageName: cfg.PackageName, PackageSize: cfg.PackageSize,
		TrustedKeys: s.Publisher.trustedDir, RequireSignatures: cfg.RequireSignatures,
		DevicePolicy: pkgsig.Policy{Keys: packages.Keys}, Metrics: metricsAddrs(cfg), TemporalPProfPort: cfg.TemporalPProfPort,
		Log: log, Say: s.say})
	if err != nil {
		return err
	}
	s.real = ps
	s.closers = append(s.closers, ps.Close)
	s.Store, s.Client, s.System, s.DatabaseURL = ps.Store, ps.Client, ps.System, ps.DatabaseURL
	s.TemporalAddress = ps.Temporal.Address()
	return nil
}

// signDemo signs the demo package as firmware 1.1 for the demo rollout, and as app 3.3 for
// the upgrade printNext suggests.
func (s *Stack) signDemo() error {
	for _, sig := range []struct {
		typ, version string
		sc           *pkgsig.Sidecar
		path         *string
	}{{"firmware", "1.1", &s.Signed, &s.Sidecar}, {"app", "3.3", &s.AppSigned, &s.AppSidecar}} {
		var err error
		if *sig.sc, *sig.path, err = s.Publisher.sign(s.Package, filepath.Join(s.cfg.DataDir, "packages"), sig.typ, sig.version); err != nil {
			return fmt.Errorf("sign the demo package: %w", err)
		}
	}
	return nil
}

// simStateDir is where the simulated devices keep their secrets and installed versions.
func (s *Stack) simStateDir() string {
	if s.real != nil {
		return filepath.Join(s.cfg.DataDir, "real", "devicesim")
	}
	return filepath.Join(s.cfg.DataDir, "devicesim")
}

// metricsAddrs are where the stack serves metrics: the broker's always, the worker's and the
// bridge's when they run in this process.
func metricsAddrs(cfg Config) *system.MetricsAddrs {
	if cfg.MetricsPort == 0 {
		return nil
	}
	m := &system.MetricsAddrs{Broker: metricsAddr(cfg, 2)}
	if !cfg.External {
		m.Worker, m.Bridge = metricsAddr(cfg, 0), metricsAddr(cfg, 1)
	}
	return m
}

// metricsAddr is the metrics address of the part at offset from MetricsPort.
func metricsAddr(cfg Config, offset int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.MetricsPort+offset))
}

// metricsURLs are the /metrics URLs of the parts (system.PartWorker...).
func (s *Stack) metricsURLs() map[string]string {
	if s.real != nil {
		return s.real.MetricsURLs
	}
	return s.MetricsURLs
}

// printMetrics prints each /metrics URL on a line of its own.
func (s *Stack) printMetrics() {
	for _, part := range []string{system.PartWorker, system.PartBridge, system.PartBroker} {
		if u, ok := s.metricsURLs()[part]; ok {
			s.say("  Metrics %-7s %s", part, u)
		}
	}
}

// simulated is how many devices the stack simulates in its own process: none when the
// benchmark runs the fleet, the worker and the bridge as processes of their own.
func simulated(cfg Config) int {
	if cfg.External {
		return 0
	}
	return cfg.Devices
}

// Close stops everything, in the reverse order of Start.
func (s *Stack) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}
