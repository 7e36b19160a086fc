// Package prodstack runs OTAflow's production topology on one machine, natively, from the
// configuration files docker-compose.yml mounts: PostgreSQL, the Temporal server (not the dev
// server) on PostgreSQL with 4 history shards, Mosquitto with its dynamic-security plugin, the
// setup step, several workers and several bridges as processes of their own (the bridges on the
// shared subscription), a package file server and a simulated fleet, and, when asked, their
// Prometheus metrics as compose serves them. `devstack --real-servers`,
// its benchmark and the production-topology tests run it, and can kill and restart each part.
package prodstack

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/brokersys"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/setup"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/temporalconn"
)

// Options says what to run.
type Options struct {
	// Dir keeps every part's state (postgres/, temporal/, mosquitto/, packages/, devicesim/,
	// bin/) and the log file; a stack started again on the same Dir carries on.
	Dir string
	// Ports on 127.0.0.1; 0 picks free ones.
	PostgresPort, TemporalPort, MQTTPort, HTTPPort int
	// Workers and Bridges are how many of each run (default 2 each).
	Workers, Bridges int
	// Devices simulated devices named Prefix-00001... (default prefix "sim") start with status
	// Initial (default firmware_ver=1.0), with Timing and Faults.
	Devices int
	Prefix  string
	Initial protocol.Status
	Timing  simulator.Timing
	Faults  simulator.Faults
	// PackageDir is where the file server makes and serves the package named PackageName,
	// of PackageSize bytes (default Dir/packages).
	PackageDir  string
	PackageName string
	PackageSize int64
	// NoFsync runs PostgreSQL without fsync (tests only).
	NoFsync bool
	// TrustedKeys is the directory of public keys the workers trust (OTAFLOW_TRUSTED_KEYS;
	// "" leaves signatures to the devices) and RequireSignatures makes them refuse unsigned
	// packages; DevicePolicy is what the simulated devices verify with.
	TrustedKeys       string
	RequireSignatures bool
	DevicePolicy      pkgsig.Policy
	// Metrics, when set, serves Prometheus metrics as docker-compose.yml does: the first
	// worker's on Worker and the first bridge's on Bridge (METRICS_LISTEN; the bridge with
	// BRIDGE_BROKER_METRICS, so that its page has the broker's figures too), and on Broker the
	// broker's figures alone, read from Mosquitto's $SYS by this process (internal/brokersys,
	// on the bridge's account), as devstack's embedded broker serves its own. Worker and
	// Bridge need a port of their own (not 0); "" leaves a part out.
	Metrics *system.MetricsAddrs
	// TemporalPProfPort, when not 0, serves the Temporal server's Go profiles on
	// 127.0.0.1:TemporalPProfPort (/debug/pprof/), at every start of the server.
	TemporalPProfPort int
	// Log receives every part's output; nil discards it.
	Log io.Writer
	// Say receives progress lines for people; nil discards them.
	Say func(format string, args ...any)
}

// Stack is the running topology.
type Stack struct {
	opts Options
	log  *slog.Logger

	Postgres *localstack.Postgres
	Temporal *localstack.TemporalServer
	Broker   *localstack.Mosquitto
	// Store and Client are OTAflow's connections; Client reconnects across server restarts.
	Store  *store.Store
	Client client.Client
	// System serves the package and runs the simulated fleet.
	*system.System
	// Workers and Bridges are the running programs, by index.
	Workers, Bridges []*localstack.Program
	// DatabaseURL is OTAflow's database; WorkerURL, BridgeURL and AdminURL the broker URLs
	// with the services' and the administrator's credentials.
	DatabaseURL, WorkerURL, BridgeURL, AdminURL string
	// MetricsURLs are the /metrics URLs of the parts (system.PartWorker...), with
	// Options.Metrics.
	MetricsURLs map[string]string

	temporalBinaries localstack.TemporalServerBinaries
	programs         map[string]string
	admin            *brokeraccounts.Admin
	closers          []func()
}

func (s *Stack) say(format string, args ...any) {
	if s.opts.Say != nil {
		s.opts.Say(format, args...)
	}
}

// Start brings the topology up in dependency order; on failure it stops what it started.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.Dir == "" {
		return nil, errors.New("prodstack: Dir is required")
	}
	if opts.Workers == 0 {
		opts.Workers = 2
	}
	if opts.Bridges == 0 {
		opts.Bridges = 2
	}
	if opts.Prefix == "" {
		opts.Prefix = "sim"
	}
	if opts.Initial == nil {
		opts.Initial = protocol.Status{"firmware_ver": "1.0"}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if m := opts.Metrics; m != nil {
		for _, addr := range []string{m.Worker, m.Bridge} {
			if _, port, err := net.SplitHostPort(addr); addr != "" && (err != nil || port == "0") {
				return nil, fmt.Errorf("prodstack: metrics address %q: want host:port with a port of its own", addr)
			}
		}
	}
	s := &Stack{opts: opts, log: slog.New(slog.NewTextHandler(opts.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", opts.Dir, err)
	}

	s.say("Building the Temporal server (once), the worker and the bridge ...")
	if s.temporalBinaries, err = localstack.EnsureTemporalServer(ctx, s.say); err != nil {
		return nil, err
	}
	if s.programs, err = localstack.BuildPrograms(ctx, filepath.Join(opts.Dir, "bin"), "worker", "mqttbridge"); err != nil {
		return nil, err
	}

	s.say("Starting PostgreSQL in %s ...", filepath.Join(opts.Dir, "postgres"))
	s.Postgres, err = localstack.StartPostgres(ctx, localstack.PostgresOptions{Dir: filepath.Join(opts.Dir, "postgres"),
		Port: opts.PostgresPort, NoFsync: opts.NoFsync, Log: opts.Log})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { _ = s.Postgres.Stop() })
	s.DatabaseURL = s.Postgres.URL()

	if err := s.startTemporal(ctx, opts.TemporalPort); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { _ = s.Temporal.Stop() })

	s.say("Starting Mosquitto (deploy/mosquitto) in %s ...", filepath.Join(opts.Dir, "mosquitto"))
	adminPassword, err := s.secret("mqtt-admin")
	if err != nil {
		return nil, err
	}
	s.Broker, err = localstack.StartMosquitto(ctx, localstack.MosquittoOptions{Dir: filepath.Join(opts.Dir, "mosquitto"),
		Port: opts.MQTTPort, AdminPassword: adminPassword, Log: opts.Log})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { _ = s.Broker.Stop() })
	workerPassword, err := s.secret("mqtt-worker")
	if err != nil {
		return nil, err
	}
	bridgePassword, err := s.secret("mqtt-bridge")
	if err != nil {
		return nil, err
	}
	s.AdminURL = s.Broker.AdminURL()
	s.WorkerURL = s.Broker.URL(brokeraccounts.WorkerAccount, workerPassword)
	s.BridgeURL = s.Broker.URL(brokeraccounts.BridgeAccount, bridgePassword)

	s.say("Running the setup step (namespace, search attributes, migrations, broker accounts) ...")
	if _, err := setup.Run(ctx, setup.Config{TemporalAddress: s.Temporal.Address(), DatabaseURL: s.DatabaseURL,
		MQTTAdminURL: s.AdminURL, WorkerMQTTPassword: workerPassword, BridgeMQTTPassword: bridgePassword,
		Out: opts.Log}, setup.DefaultSteps()); err != nil {
		return nil, err
	}
	if s.Store, err = store.Open(ctx, s.DatabaseURL); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.Store.Close)
	if s.Client, err = temporalconn.Dial(ctx, temporalconn.Options{Address: s.Temporal.Address(),
		Logger: slog.New(slog.NewTextHandler(opts.Log, &slog.HandlerOptions{Level: slog.LevelError}))}); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.Client.Close)
	if s.admin, err = brokeraccounts.Dial(ctx, s.AdminURL, nil); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.admin.Close)

	if err := s.startBrokerMetrics(); err != nil {
		return nil, err
	}
	s.say("Starting %d workers and %d bridges ...", opts.Workers, opts.Bridges)
	for i := range opts.Workers {
		w, err := s.startWorker(ctx, i)
		if err != nil {
			return nil, err
		}
		s.Workers = append(s.Workers, w)
	}
	for i := range opts.Bridges {
		b, err := s.startBridge(ctx, i)
		if err != nil {
			return nil, err
		}
		s.Bridges = append(s.Bridges, b)
	}
	s.closers = append(s.closers, s.stopPrograms)

	if opts.Devices > 0 {
		s.say("Registering and connecting %d simulated devices (%s-00001 ...) ...", opts.Devices, opts.Prefix)
	}
	s.System, err = system.Start(ctx, system.Config{
		Client: s.Client, Store: s.Store,
		HTTPAddr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.HTTPPort)),
		PackageDir:  cmp.Or(opts.PackageDir, filepath.Join(opts.Dir, "packages")),
		PackageName: opts.PackageName, PackageSize: opts.PackageSize,
		Devices: opts.Devices, Prefix: opts.Prefix, Initial: opts.Initial, Timing: opts.Timing, Faults: opts.Faults,
		SimStateDir: filepath.Join(opts.Dir, "devicesim"),
		NoWorker:    true, NoBridge: true, DevicePolicy: opts.DevicePolicy,
		Broker: &system.ExternalBroker{URL: "tcp://" + s.Broker.Addr(), WorkerURL: s.WorkerURL, BridgeURL: s.BridgeURL,
			Accounts: s.admin},
		Logger: s.log,
	})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.System.Close)
	if opts.Devices > 0 {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if err := s.WaitReported(wctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// secret returns the secret named name kept in Dir (made on first use), so that a stack
// started again on Dir keeps its passwords.
func (s *Stack) secret(name string) (string, error) {
	path := filepath.Join(s.opts.Dir, name+".secret")
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		return string(b), nil
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	v := hex.EncodeToString(b)
	if err := os.WriteFile(path, []byte(v), 0o600); err != nil {
		return "", fmt.Errorf("keep %s: %w", name, err)
	}
	return v, nil
}

func (s *Stack) startTemporal(ctx context.Context, frontend int) (err error) {
	s.say("Starting the Temporal server %s (deploy/temporal, PostgreSQL persistence and visibility) ...",
		localstack.TemporalServerVersion)
	opts := localstack.TemporalServerOptions{Binaries: s.temporalBinaries, Dir: filepath.Join(s.opts.Dir, "temporal"),
		PostgresURL: s.DatabaseURL, PProfPort: s.opts.TemporalPProfPort, Log: s.opts.Log, Logger: log.NewStructuredLogger(s.log)}
	if s.Temporal != nil {
		opts.Ports = s.Temporal.Ports()
	} else {
		opts.Ports.FrontendGRPC = frontend
	}
	s.Temporal, err = localstack.StartTemporalServer(ctx, opts)
	return err
}

// RestartTemporal stops the Temporal server (SIGTERM) and starts it again on the same
// databases and ports.
func (s *Stack) RestartTemporal(ctx context.Context) error {
	if err := s.Temporal.Stop(); err != nil {
		return err
	}
	return s.startTemporal(ctx, 0)
}

// KillBroker ends Mosquitto with SIGKILL, as a crash would, and starts it again on its
// persistence; clients reconnect by themselves.
func (s *Stack) KillBroker(ctx context.Context) error {
	if err := s.Broker.Kill(); err != nil {
		return err
	}
	admin, password := s.Broker.Admin()
	b, err := localstack.StartMosquitto(ctx, localstack.MosquittoOptions{Dir: s.Broker.Dir(), Port: s.Broker.Port(),
		AdminUser: admin, AdminPassword: password, Log: s.opts.Log})
	if err != nil {
		return fmt.Errorf("restart Mosquitto: %w", err)
	}
	s.Broker = b
	return nil
}

func (s *Stack) env(extra ...string) []string {
	return append(append(os.Environ(), "TEMPORAL_ADDRESS="+s.Temporal.Address(), "DATABASE_URL="+s.DatabaseURL), extra...)
}

// startBrokerMetrics serves the broker's $SYS figures on Options.Metrics.Broker, and records
// the URLs of every part's metrics.
func (s *Stack) startBrokerMetrics() error {
	m := s.opts.Metrics
	if m == nil {
		return nil
	}
	s.MetricsURLs = map[string]string{}
	for part, addr := range map[string]string{system.PartWorker: m.Worker, system.PartBridge: m.Bridge} {
		if addr != "" {
			host, port, _ := net.SplitHostPort(addr)
			if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
				host = "127.0.0.1"
			}
			s.MetricsURLs[part] = "http://" + net.JoinHostPort(host, port) + "/metrics"
		}
	}
	if m.Broker == "" {
		return nil
	}
	c, err := brokersys.New(brokersys.Config{URL: s.BridgeURL, ClientID: "otaflow-prodstack" + brokersys.ClientIDSuffix, Logger: s.log})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	srv, err := metrics.Listen(m.Broker, reg)
	if err != nil {
		return fmt.Errorf("broker metrics: %w", err)
	}
	c.Start()
	s.closers = append(s.closers, c.Close, func() { _ = srv.Close() })
	s.MetricsURLs[system.PartBroker] = srv.URL()
	return nil
}

// metricsEnv is the environment that makes the first worker or bridge serve its metrics on
// addr ("": none).
func metricsEnv(i int, addr string, extra ...string) []string {
	if i != 0 || addr == "" {
		return nil
	}
	return append([]string{metrics.Env + "=" + addr}, extra...)
}

func (s *Stack) metricsAddrs() system.MetricsAddrs {
	if s.opts.Metrics == nil {
		return system.MetricsAddrs{}
	}
	return *s.opts.Metrics
}

func (s *Stack) startWorker(ctx context.Context, i int) (*localstack.Program, error) {
	env := s.env(append([]string{"MQTT_URL=" + s.WorkerURL, fmt.Sprintf("MQTT_CLIENT_ID=otaflow-worker-%d", i+1),
		pkgsig.EnvTrustedKeys + "=" + s.opts.TrustedKeys, pkgsig.EnvRequireSignatures + "=" + strconv.FormatBool(s.opts.RequireSignatures)},
		metricsEnv(i, s.metricsAddrs().Worker)...)...)
	return localstack.StartProgram(ctx, localstack.ProgramOptions{Name: fmt.Sprintf("worker-%d", i+1),
		Path: s.programs["worker"], Log: s.opts.Log, Ready: "OTAflow worker starting", Env: env})
}

func (s *Stack) startBridge(ctx context.Context, i int) (*localstack.Program, error) {
	return localstack.StartProgram(ctx, localstack.ProgramOptions{Name: fmt.Sprintf("bridge-%d", i+1),
		Path: s.programs["mqttbridge"], Log: s.opts.Log, Ready: "bridge running",
		Env: s.env(append([]string{"MQTT_URL=" + s.BridgeURL, fmt.Sprintf("MQTT_CLIENT_ID=otaflow-bridge-%d", i+1), "BRIDGE_SHARED=true"},
			metricsEnv(i, s.metricsAddrs().Bridge, "BRIDGE_BROKER_METRICS=true")...)...)})
}

// KillWorker ends worker i with SIGKILL and starts it again; KillBridge does so for bridge i.
func (s *Stack) KillWorker(ctx context.Context, i int) error {
	s.Workers[i].Kill()
	w, err := s.startWorker(ctx, i)
	if err != nil {
		return err
	}
	s.Workers[i] = w
	return nil
}

// KillBridge ends bridge i with SIGKILL and starts it again on its session.
func (s *Stack) KillBridge(ctx context.Context, i int) error {
	s.Bridges[i].Kill()
	b, err := s.startBridge(ctx, i)
	if err != nil {
		return err
	}
	s.Bridges[i] = b
	return nil
}

func (s *Stack) stopPrograms() {
	for _, p := range append(append([]*localstack.Program(nil), s.Bridges...), s.Workers...) {
		_ = p.Stop()
	}
}

// Close stops everything, in the reverse order of Start.
func (s *Stack) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}
