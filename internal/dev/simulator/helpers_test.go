package simulator

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

const (
	svcUser = "otaflow-worker"
	svcPass = "worker-password"
	// helperBrokerEnv makes the test binary run only a broker (see TestMain), so a benchmark
	// can measure the simulator's memory without the broker's.
	helperBrokerEnv = "OTAFLOW_SIMULATOR_TEST_BROKER"
	helperSecret    = "shared-benchmark-secret"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperBrokerEnv) == "1" {
		runHelperBroker()
		return
	}
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

// runHelperBroker serves a broker that admits every device with helperSecret and prints its
// URL. Each line "mem" on stdin makes it print its heap and stack bytes in use after a GC; it
// exits when stdin closes.
func runHelperBroker() {
	hash, err := credential.Hash(helperSecret)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	b, err := broker.New(broker.Options{
		Addr:        "127.0.0.1:0",
		Credentials: anyDevice{hash: hash},
		Services:    map[string]string{svcUser: svcPass},
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err == nil {
		err = b.Start(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(b.URL())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "mem" {
			fmt.Println(memInUse())
		}
	}
	_ = b.Close()
}

// memInUse returns the heap and stack bytes in use after a garbage collection.
func memInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// helperBroker is a broker running in a child process.
type helperBroker struct {
	url   string
	stdin io.Writer
	out   *bufio.Reader
}

// mem returns the child's heap and stack bytes in use.
func (h *helperBroker) mem(tb testing.TB) uint64 {
	tb.Helper()
	if _, err := fmt.Fprintln(h.stdin, "mem"); err != nil {
		tb.Fatal(err)
	}
	line, err := h.out.ReadString('\n')
	if err != nil {
		tb.Fatal(err)
	}
	var n uint64
	if _, err := fmt.Sscan(line, &n); err != nil {
		tb.Fatalf("helper broker said %q: %v", line, err)
	}
	return n
}

// anyDevice admits every device ID with one secret hash.
type anyDevice struct{ hash string }

func (a anyDevice) DeviceCredentials(context.Context, string) (string, bool, error) {
	return a.hash, false, nil
}

// startHelperBroker runs a broker in a child process.
func startHelperBroker(tb testing.TB) *helperBroker {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperBrokerEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			tb.Errorf("helper broker: %v", err)
		}
	})
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		tb.Fatalf("helper broker did not start: %v", err)
	}
	return &helperBroker{url: strings.TrimSpace(line), stdin: stdin, out: out}
}

// memCreds is an in-memory broker.Credentials source.
type memCreds struct {
	mu     sync.Mutex
	hashes map[string]string
}

func (m *memCreds) DeviceCredentials(_ context.Context, id string) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.hashes[id]
	if !ok {
		return "", false, fmt.Errorf("device %s: %w", id, store.ErrNotFound)
	}
	return h, false, nil
}

// env is a broker, a package server and a watching service for one test.
type env struct {
	t       *testing.T
	broker  *broker.Broker
	creds   *memCreds
	files   *fileServer
	watcher *watcher
	svc     paho.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	creds := &memCreds{hashes: map[string]string{}}
	b, err := broker.New(broker.Options{
		Addr:        "127.0.0.1:0",
		Credentials: creds,
		Services:    map[string]string{svcUser: svcPass},
		Logger:      testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The broker outlives the test's context so that the fleet stops (a cleanup registered
	// later, run earlier) before the broker closes.
	if err := b.Start(context.WithoutCancel(t.Context())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })

	e := &env{t: t, broker: b, creds: creds, files: newFileServer(t), watcher: &watcher{}}
	opts := paho.NewClientOptions().AddBroker(b.URL()).SetClientID("test-watcher").
		SetUsername(svcUser).SetPassword(svcPass).SetCleanSession(true).SetOrderMatters(true)
	e.svc = paho.NewClient(opts)
	if tok := e.svc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect watcher: %v", tok.Error())
	}
	t.Cleanup(func() { e.svc.Disconnect(50) })
	for _, filter := range []string{protocol.ProgressFilter, protocol.StatusFilter} {
		if tok := e.svc.Subscribe(filter, 1, e.watcher.handle); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", filter, tok.Error())
		}
	}
	return e
}

// with returns the env for a subtest.
func (e *env) with(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("OTAFLOW_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// register gives each device a secret known to the broker.
func (e *env) register(ids ...string) map[string]string {
	e.t.Helper()
	secrets := map[string]string{}
	for _, id := range ids {
		secret, err := credential.NewSecret()
		if err != nil {
			e.t.Fatal(err)
		}
		hash, err := credential.Hash(secret)
		if err != nil {
			e.t.Fatal(err)
		}
		e.creds.mu.Lock()
		e.creds.hashes[id] = hash
		e.creds.mu.Unlock()
		secrets[id] = secret
	}
	return secrets
}

// fastTiming runs devices without realistic delays.
func fastTiming() Timing {
	return Timing{
		ReportInterval: time.Millisecond,
		InstallDelay:   time.Millisecond,
		RebootDelay:    time.Millisecond,
		SlowRate:       1 << 20,
		OfflineFor:     2 * time.Second,
		ConnectTimeout: 10 * time.Second,
		PublishTimeout: 10 * time.Second,
	}
}

// startFleet registers the devices and runs a fleet until the test ends.
func (e *env) startFleet(ids []string, faults Faults) *Fleet {
	e.t.Helper()
	return e.startFleetWith(ids, func(c *Config) { c.Faults = faults })
}

// startFleetWith is startFleet with a configuration that configure edits.
func (e *env) startFleetWith(ids []string, configure func(*Config)) *Fleet {
	e.t.Helper()
	cfg := Config{
		BrokerURL:   e.broker.URL(),
		DeviceIDs:   ids,
		Initial:     protocol.Status{"firmware_ver": "1.0", "app_ver": "2.0"},
		Credentials: e.register(ids...),
		Timing:      fastTiming(),
		Logger:      testLogger(),
	}
	configure(&cfg)
	f, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := f.Start(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(f.Stop)
	ctx, cancel := context.WithTimeout(e.t.Context(), 20*time.Second)
	defer cancel()
	if err := f.WaitConnected(ctx); err != nil {
		e.t.Fatal(err)
	}
	return f
}

// command returns a valid command for the package at path, expiring in an hour.
func (e *env) command(id, path string) protocol.UpgradeCommand {
	pkg := e.files.get(path)
	now := time.Now().UTC()
	return protocol.UpgradeCommand{
		ID: id, Type: "firmware", Version: "1.1", URL: e.files.srv.URL + path,
		MD5: pkg.md5, Size: int64(len(pkg.data)), IssuedAt: now, ExpiresAt: now.Add(time.Hour),
	}
}

// send publishes a command to a device as the worker does.
func (e *env) send(device string, cmd protocol.UpgradeCommand) {
	e.t.Helper()
	payload, err := json.Marshal(cmd)
	if err != nil {
		e.t.Fatal(err)
	}
	e.publish(protocol.CommandTopic(device), payload)
}

func (e *env) publish(topic string, payload []byte) {
	e.t.Helper()
	tok := e.svc.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		e.t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

// fileServer serves generated packages.
type fileServer struct {
	srv *httptest.Server
	mu  sync.Mutex
	pkg map[string]pkgFile
}

type pkgFile struct {
	data        []byte
	md5, sha256 string
	// stall, when set, holds the download halfway until it is closed.
	stall chan struct{}
}

func newFileServer(t *testing.T) *fileServer {
	fs := &fileServer{pkg: map[string]pkgFile{}}
	fs.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		p, ok := fs.pkg[r.URL.Path]
		fs.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(p.data)))
		if p.stall == nil {
			_, _ = w.Write(p.data)
			return
		}
		half := len(p.data) / 2
		_, _ = w.Write(p.data[:half])
		w.(http.Flusher).Flush()
		select {
		case <-p.stall:
			_, _ = w.Write(p.data[half:])
		case <-r.Context().Done(): // the device abandoned the download
		}
	}))
	t.Cleanup(fs.srv.Close)
	return fs
}

// add serves size random bytes at path.
func (fs *fileServer) add(path string, size int) {
	fs.addPackage(path, size, nil)
}

// addStalled serves size random bytes at path, holding every download halfway until the
// returned function is called (at the latest when the test ends).
func (fs *fileServer) addStalled(t *testing.T, path string, size int) (release func()) {
	stall := make(chan struct{})
	release = sync.OnceFunc(func() { close(stall) })
	t.Cleanup(release)
	fs.addPackage(path, size, stall)
	return release
}

func (fs *fileServer) addPackage(path string, size int, stall chan struct{}) {
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	_, _ = r.Read(data)
	sum, sha := md5.Sum(data), sha256.Sum256(data)
	fs.mu.Lock()
	fs.pkg[path] = pkgFile{data: data, md5: hex.EncodeToString(sum[:]), sha256: hex.EncodeToString(sha[:]), stall: stall}
	fs.mu.Unlock()
}

func (fs *fileServer) get(path string) pkgFile {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	p, ok := fs.pkg[path]
	if !ok {
		return pkgFile{data: []byte("missing"), md5: strings.Repeat("0", 32)}
	}
	return p
}

// event is one report a service received.
type event struct {
	device   string
	kind     string // protocol.KindProgress or protocol.KindStatus
	progress protocol.Progress
	status   protocol.Status
	raw      string
}

func (ev event) String() string { return ev.device + " " + ev.kind + " " + ev.raw }

// watcher records the reports devices send, validated as the bridge does.
type watcher struct {
	mu      sync.Mutex
	events  []event
	invalid []string
}

func (w *watcher) handle(_ paho.Client, m paho.Message) {
	id, kind, err := protocol.ParseTopic(m.Topic())
	ev := event{device: id, kind: kind, raw: string(m.Payload())}
	if err == nil {
		switch kind {
		case protocol.KindProgress:
			ev.progress, err = protocol.ParseProgress(m.Payload())
		case protocol.KindStatus:
			ev.status, err = protocol.ParseStatus(m.Payload())
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.invalid = append(w.invalid, fmt.Sprintf("%s %s: %v", m.Topic(), m.Payload(), err))
		return
	}
	w.events = append(w.events, ev)
}

// of returns the events of one device.
func (w *watcher) of(device string) []event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []event
	for _, ev := range w.events {
		if ev.device == device {
			out = append(out, ev)
		}
	}
	return out
}

// waitFor polls the device's events until cond holds, failing the test after a deadline or
// on an invalid report.
func (w *watcher) waitFor(t *testing.T, device, what string, cond func([]event) bool) []event {
	t.Helper()
	var evs []event
	var invalid []string
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		w.mu.Lock()
		invalid = slices.Clone(w.invalid)
		w.mu.Unlock()
		if len(invalid) > 0 {
			return // fails the test below, at once
		}
		evs = w.of(device)
		assert.True(c, cond(evs), "%s: events: %v", device, evs)
	}, 20*time.Second, 5*time.Millisecond, "%s: %s", device, what)
	if len(invalid) > 0 {
		t.Fatalf("devices sent invalid reports: %v", invalid)
	}
	return evs
}

// waitState polls a device's state until cond holds.
func waitState(t *testing.T, f *Fleet, id, what string, cond func(DeviceState) bool) DeviceState {
	t.Helper()
	if _, ok := f.Device(id); !ok {
		t.Fatalf("no device %s", id)
	}
	var st DeviceState
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st, _ = f.Device(id)
		assert.True(c, cond(st), "%s: state: %+v", id, st)
	}, 20*time.Second, 5*time.Millisecond, "%s: %s", id, what)
	return st
}

// hasStatus holds once a status report shows version under key.
func hasStatus(key, version string) func([]event) bool {
	return func(evs []event) bool {
		for _, ev := range evs {
			if ev.kind == protocol.KindStatus && ev.status[key] == version {
				return true
			}
		}
		return false
	}
}

// hasCode holds once a progress report carries code.
func hasCode(code int) func([]event) bool {
	return func(evs []event) bool {
		for _, ev := range evs {
			if ev.kind == protocol.KindProgress && ev.progress.Progress == code {
				return true
			}
		}
		return false
	}
}

func progressOf(evs []event, cmdID string) []protocol.Progress {
	var out []protocol.Progress
	for _, ev := range evs {
		if ev.kind == protocol.KindProgress && ev.progress.ID == cmdID {
			out = append(out, ev.progress)
		}
	}
	return out
}

func statusesOf(evs []event) []protocol.Status {
	var out []protocol.Status
	for _, ev := range evs {
		if ev.kind == protocol.KindStatus {
			out = append(out, ev.status)
		}
	}
	return out
}
