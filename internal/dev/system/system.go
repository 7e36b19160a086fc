// Package system wires OTAflow's running parts together on one machine — the embedded MQTT
// broker, a package file server, the worker, the bridge and a simulated fleet — around a
// Temporal server and a PostgreSQL store started elsewhere. The local stack (devstack), its
// benchmark and the end-to-end tests all run the system through it.
package system

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// Service account names on the embedded broker.
const (
	WorkerUser = "otaflow-worker"
	BridgeUser = "otaflow-bridge"
)

// Config describes the system to run.
type Config struct {
	// Client and Store are the Temporal client and the PostgreSQL store to use. Required.
	Client client.Client
	Store  *store.Store
	// MQTTAddr and HTTPAddr are where the broker and the package file server listen;
	// "127.0.0.1:0" picks free ports.
	MQTTAddr, HTTPAddr string
	// BrokerStore is the file where the broker keeps its persistent sessions across
	// restarts (broker.Options.StorePath); "" keeps them in memory.
	BrokerStore string
	// PackageDir is served over HTTP; PackageName (default firmware-1.1.bin), PackageSize
	// bytes of random data (default 1 MiB), is made there if missing.
	PackageDir  string
	PackageName string
	PackageSize int64
	// Devices simulated devices named Prefix-00001... (default prefix "sim") start with status
	// Initial (default firmware_ver=1.0), with Faults and Timing. SimStateDir keeps their
	// secrets and the versions they installed, which they report again when the system
	// starts again ("" keeps both in memory).
	Devices     int
	Prefix      string
	Initial     protocol.Status
	Faults      simulator.Faults
	Timing      simulator.Timing
	SimStateDir string
	// Protocol is the PROTOCOL.md version the simulated devices implement (simulator.Config),
	// and DevicePolicy the trusted keys with which they verify signatures and whether they
	// require them.
	Protocol     string
	DevicePolicy pkgsig.Policy
	// WorkerPolicy is the worker's package policy (activities.Activities.Packages).
	WorkerPolicy pkgsig.Policy
	// Bridge sets the bridge's coalescing and concurrency; connection fields are filled in.
	Bridge bridge.Config
	// NoWorker and NoBridge leave those parts out, for running them as separate processes.
	NoWorker, NoBridge bool
	// Broker, when set, is an MQTT broker run elsewhere (the production broker) instead of
	// the embedded one: its URL without credentials, the service URLs with theirs, and its
	// account administration, which the simulated devices are registered with.
	Broker *ExternalBroker
	// Metrics, when set, serves the parts' Prometheus metrics (MetricsURLs says where).
	Metrics *MetricsAddrs
	// Notify, when set, gives the worker event notifications; with a deployment receiver,
	// Start starts the notifier workflow.
	Notify *Notify
	// Logger receives every part's logs; nil discards them.
	Logger *slog.Logger
}

// ExternalBroker is an MQTT broker the system uses but does not run.
type ExternalBroker struct {
	// URL is the broker's URL without credentials; WorkerURL and BridgeURL carry the service
	// accounts' credentials.
	URL, WorkerURL, BridgeURL string
	// Accounts creates the simulated devices' accounts.
	Accounts simulator.Accounts
}

// Package is a package the file server serves, with what a command needs to name it.
type Package struct {
	URL  string
	MD5  string
	Size int64
	// SHA256 is what PROTOCOL.md 1.1's sha256 field and a signature (internal/pkgsig) name.
	SHA256 string
}

// System is the running system.
type System struct {
	cfg     Config
	log     *slog.Logger
	Broker  *broker.Broker
	Fleet   *simulator.Fleet
	Package Package
	// MQTTURL is the broker's URL without credentials; WorkerMQTTURL and BridgeMQTTURL carry
	// the service credentials.
	MQTTURL, WorkerMQTTURL, BridgeMQTTURL string
	// MetricsURLs are the /metrics URLs of the parts (PartWorker...), with Config.Metrics.
	MetricsURLs map[string]string

	files    *http.Server
	fileBase string
	services map[string]string
	obs      *observe

	mu           sync.Mutex
	worker       worker.Worker
	workerMQTT   interface{ Disconnect(quiesce uint) }
	bridge       *bridge.Bridge
	bridgeCancel context.CancelFunc
	bridgeDone   chan struct{}
	fleetCancel  context.CancelFunc
	closers      []func()
}

// Start brings the system up; on failure it stops what it started.
func Start(ctx context.Context, cfg Config) (_ *System, err error) {
	if cfg.Client == nil || cfg.Store == nil {
		return nil, errors.New("system: Client and Store are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "sim"
	}
	if cfg.Initial == nil {
		cfg.Initial = protocol.Status{"firmware_ver": "1.0"}
	}
	s := &System{cfg: cfg, log: cfg.Logger}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.startObserve(ctx); err != nil {
		return nil, err
	}
	if eb := cfg.Broker; eb != nil {
		s.MQTTURL, s.WorkerMQTTURL, s.BridgeMQTTURL = eb.URL, eb.WorkerURL, eb.BridgeURL
	} else {
		workerPass, bridgePass := randomToken(), randomToken()
		s.services = map[string]string{WorkerUser: workerPass, BridgeUser: bridgePass}
		if err := s.startBroker(ctx, cfg.MQTTAddr); err != nil {
			return nil, err
		}
		s.closers = append(s.closers, func() { _ = s.Broker.Close() })
		addr := s.Broker.Addr()
		s.MQTTURL = "tcp://" + addr
		s.WorkerMQTTURL = "tcp://" + WorkerUser + ":" + workerPass + "@" + addr
		s.BridgeMQTTURL = "tcp://" + BridgeUser + ":" + bridgePass + "@" + addr
	}

	if err := s.serveFiles(); err != nil {
		return nil, err
	}
	if !cfg.NoWorker {
		if err := s.StartWorker(ctx); err != nil {
			return nil, err
		}
	}
	if !cfg.NoBridge {
		if err := s.StartBridge(ctx); err != nil {
			return nil, err
		}
	}
	if cfg.Devices > 0 {
		if err := s.startFleet(ctx); err != nil {
			return nil, err
		}
	}
	if err := s.obs.worker.StartNotifier(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *System) startBroker(ctx context.Context, addr string) error {
	b, err := broker.New(broker.Options{Addr: addr, Credentials: s.cfg.Store, Disabled: s.cfg.Store, Services: s.services,
		Logger: s.log, StorePath: s.cfg.BrokerStore})
	if err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return fmt.Errorf("start MQTT broker on %s: %w", addr, err)
	}
	s.Broker = b
	if s.obs.brokerProxy != nil {
		s.obs.brokerProxy.set(b.Collector())
	}
	return nil
}

// RestartBroker stops the broker and starts a new one on the same address after down, as a
// broker restart would; every client reconnects and subscribes again by itself. With
// Config.BrokerStore the new broker carries on with the sessions and the messages they held;
// without it they are gone, and what the lost messages carried is recovered by the upgrades'
// timeouts and retries.
func (s *System) RestartBroker(ctx context.Context, down time.Duration) error {
	if s.Broker == nil {
		return errors.New("restart MQTT broker: the system does not run the broker")
	}
	addr := s.Broker.Addr()
	if err := s.Broker.Close(); err != nil {
		return fmt.Errorf("stop MQTT broker: %w", err)
	}
	t := time.NewTimer(down)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return fmt.Errorf("restart MQTT broker: %w", ctx.Err())
	}
	return s.startBroker(ctx, addr)
}

// StartWorker starts the Temporal worker, with its own MQTT connection.
func (s *System) StartWorker(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.worker != nil {
		return errors.New("worker already running")
	}
	opts, err := mqttconn.Options(s.WorkerMQTTURL, WorkerUser)
	if err != nil {
		return err
	}
	opts.SetCleanSession(true)
	mc, err := mqttconn.Connect(ctx, opts)
	if err != nil {
		return err
	}
	w := s.obs.worker.New(s.obs.workerClient, mc)
	if err := w.Start(); err != nil {
		mc.Disconnect(0)
		return fmt.Errorf("start worker: %w", err)
	}
	s.worker, s.workerMQTT = w, mc
	return nil
}

// StopWorker stops the worker as a shutdown would: running tasks finish first.
func (s *System) StopWorker() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.worker == nil {
		return
	}
	s.worker.Stop()
	s.workerMQTT.Disconnect(250)
	s.worker, s.workerMQTT = nil, nil
}

// StartBridge starts the bridge and waits until it is subscribed.
func (s *System) StartBridge(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bridge != nil {
		return errors.New("bridge already running")
	}
	cfg := s.cfg.Bridge
	cfg.BrokerURL, cfg.Username, cfg.Password = s.BridgeMQTTURL, "", ""
	if cfg.Logger == nil {
		cfg.Logger = s.log
	}
	b, err := bridge.New(cfg, s.obs.bridgeClient, s.cfg.Store)
	if err != nil {
		return err
	}
	if s.obs.bridgeProxy != nil {
		s.obs.bridgeProxy.set(b.Collector())
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("Bridge stopped", "error", err)
		}
	}()
	select {
	case <-b.Ready():
	case <-done:
		cancel()
		return errors.New("the bridge stopped as it started; see its log")
	case <-ctx.Done():
		cancel()
		<-done
		return ctx.Err()
	}
	s.bridge, s.bridgeCancel, s.bridgeDone = b, cancel, done
	return nil
}

// BridgeStats returns the running bridge's counters.
func (s *System) BridgeStats() bridge.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bridge == nil {
		return bridge.Stats{}
	}
	return s.bridge.Stats()
}

// StopBridge stops the bridge; the broker keeps its session, so nothing sent meanwhile is lost.
func (s *System) StopBridge() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bridge == nil {
		return
	}
	s.bridgeCancel()
	<-s.bridgeDone
	s.bridge = nil
}

// startFleet connects the simulated devices and waits until they all booted.
func (s *System) startFleet(ctx context.Context) error {
	var err error
	s.Fleet, err = simulator.New(simulator.Config{
		BrokerURL: s.MQTTURL, Prefix: s.cfg.Prefix, Count: s.cfg.Devices, Initial: s.cfg.Initial, StateDir: s.cfg.SimStateDir,
		Registrar: &simulator.StoreRegistrar{Store: s.cfg.Store, StateDir: s.cfg.SimStateDir, Logger: s.log, Accounts: s.accounts()},
		Faults:    s.cfg.Faults, Timing: s.cfg.Timing, Logger: s.log,
		Protocol: s.cfg.Protocol, TrustedKeys: s.cfg.DevicePolicy.Keys, RequireSignatures: s.cfg.DevicePolicy.RequireSignature,
	})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if err := s.Fleet.Start(runCtx); err != nil {
		cancel()
		return fmt.Errorf("start simulated fleet: %w", err)
	}
	s.fleetCancel = cancel
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Minute)
	defer wcancel()
	if err := s.Fleet.WaitConnected(wctx); err != nil {
		return fmt.Errorf("simulated devices did not all connect: %w", err)
	}
	return nil
}

// accounts is the broker account administration the simulated devices are registered with,
// if the broker is not the embedded one.
func (s *System) accounts() simulator.Accounts {
	if s.cfg.Broker == nil {
		return nil
	}
	return s.cfg.Broker.Accounts
}

// WaitReported waits until every simulated device's boot status is in PostgreSQL, which is
// when a rollout can select it. A device reports its initial status, or, when SimStateDir
// kept what it installed before, that.
func (s *System) WaitReported(ctx context.Context) error {
	if s.Fleet == nil {
		return WaitReported(ctx, s.cfg.Store, s.cfg.Prefix, s.cfg.Initial, s.cfg.Devices)
	}
	// The devices that report the same status are waited for together.
	type group struct {
		status protocol.Status
		n      int
	}
	groups := map[string]*group{}
	for _, id := range s.Fleet.IDs() {
		st, _ := s.Fleet.Device(id)
		key := fmt.Sprint(st.Status) // fmt prints maps sorted by key
		if groups[key] == nil {
			groups[key] = &group{status: st.Status}
		}
		groups[key].n++
	}
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		if err := WaitReported(ctx, s.cfg.Store, s.cfg.Prefix, groups[key].status, groups[key].n); err != nil {
			return err
		}
	}
	return nil
}

// WaitReported waits until n devices named prefix-... report status in PostgreSQL (at least
// n: a device that reports more versions than status names counts too).
func WaitReported(ctx context.Context, st *store.Store, prefix string, status protocol.Status, n int) error {
	want := map[string]string{}
	for k, v := range status {
		want[k] = v
	}
	for {
		got, err := st.CountDevices(ctx, ota.DeviceFilter{Prefix: prefix + "-", Labels: want})
		if err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("only %d of %d simulated devices reported their status: %w", got, n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// serveFiles serves PackageDir over HTTP, with the package made on first use.
func (s *System) serveFiles() error {
	name, size := s.cfg.PackageName, s.cfg.PackageSize
	if name == "" {
		name = "firmware-1.1.bin"
	}
	if size <= 0 {
		size = 1 << 20
	}
	if err := os.MkdirAll(s.cfg.PackageDir, 0o755); err != nil {
		return fmt.Errorf("create package directory: %w", err)
	}
	path := filepath.Join(s.cfg.PackageDir, name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		buf := make([]byte, size)
		if _, err := rand.Read(buf); err != nil {
			return fmt.Errorf("make package: %w", err)
		}
		if err := os.WriteFile(path, buf, 0o644); err != nil {
			return fmt.Errorf("write package: %w", err)
		}
	}
	digest, err := FileDigest(path)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("package file server on %s: %w", s.cfg.HTTPAddr, err)
	}
	s.files = &http.Server{Handler: http.FileServer(http.Dir(s.cfg.PackageDir)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.files.Serve(ln) }()
	s.closers = append(s.closers, func() { _ = s.files.Close() })
	s.fileBase = "http://" + ln.Addr().String()
	s.Package = Package{URL: s.FileURL(name), MD5: digest.MD5, Size: digest.Size, SHA256: digest.SHA256}
	return nil
}

// FileURL is the URL of another file in PackageDir.
func (s *System) FileURL(name string) string {
	return s.fileBase + "/" + name
}

// FileDigest returns the size, md5 and sha256 of a file.
func FileDigest(path string) (pkgsig.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return pkgsig.Digest{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	d, err := pkgsig.HashReader(f)
	if err != nil {
		return pkgsig.Digest{}, fmt.Errorf("read %s: %w", path, err)
	}
	return d, nil
}

// Close stops everything, in the reverse order of Start.
func (s *System) Close() {
	if s.fleetCancel != nil {
		s.Fleet.Stop()
		s.fleetCancel()
	}
	s.StopBridge()
	s.StopWorker()
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
