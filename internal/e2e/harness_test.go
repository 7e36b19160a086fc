package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/simulator"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/system"
	"github.com/otaflow/otaflow/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

// fastTiming makes simulated devices quick, as tests want.
var fastTiming = simulator.Timing{ReportInterval: 20 * time.Millisecond, InstallDelay: 200 * time.Millisecond,
	RebootDelay: 100 * time.Millisecond, KeepAlive: 5 * time.Second, MaxReconnectInterval: time.Second}

// env is one test's system: its own database, broker, worker, bridge and devices, on the
// shared Temporal server. Tests using it must not run in parallel: they share the task queue.
type env struct {
	t     testing.TB
	ctx   context.Context
	store *store.Store
	sys   *system.System
	c     client.Client
	// dbURL is the URL of the test's database.
	dbURL string
}

func newEnv(t testing.TB, cfg system.Config) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	dbURL := testenv.DatabaseURL(t)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	cfg.Client = testenv.TemporalClient()
	cfg.Store = st
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.PackageDir = t.TempDir()
	if cfg.PackageSize == 0 {
		cfg.PackageSize = 64 << 10
	}
	if cfg.Timing == (simulator.Timing{}) {
		cfg.Timing = fastTiming
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	sys, err := system.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	if cfg.Devices > 0 {
		if err := sys.WaitReported(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return &env{t: t, ctx: ctx, store: st, sys: sys, c: cfg.Client, dbURL: dbURL}
}

// request is a fast device upgrade request for the test package.
func (e *env) request(device string) ota.UpgradeRequest {
	return ota.UpgradeRequest{DeviceID: device, Type: "firmware", Version: "1.1",
		URL: e.sys.Package.URL, MD5: e.sys.Package.MD5, Size: e.sys.Package.Size,
		StartTimeout: 4 * time.Second, SilenceTimeout: 3 * time.Second, InstallTimeout: 3 * time.Second,
		RetryBackoff: 200 * time.Millisecond, Deadline: 2 * time.Minute}
}

// upgrade runs a device upgrade to its end and returns its final status.
func (e *env) upgrade(req ota.UpgradeRequest) (ota.UpgradeStatus, error) {
	e.t.Helper()
	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
	if err != nil {
		e.t.Fatalf("start upgrade of %s: %v", req.DeviceID, err)
	}
	return ota.UpgradeResult(e.ctx, run)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// historyLength is the number of events in a workflow run's history.
func (e *env) historyLength(workflowID, runID string) int64 {
	e.t.Helper()
	d, err := e.c.DescribeWorkflowExecution(e.ctx, workflowID, runID)
	if err != nil {
		e.t.Fatal(err)
	}
	return d.GetWorkflowExecutionInfo().GetHistoryLength()
}

// scripted is a device the test drives by hand: it registers with a known secret, connects
// to the broker under its own credentials and hands every command it gets to the test.
type scripted struct {
	t        testing.TB
	id       string
	client   paho.Client
	commands chan protocol.UpgradeCommand
}

func (e *env) scriptedDevice(id string, status protocol.Status) *scripted {
	e.t.Helper()
	secret, err := credential.NewSecret()
	if err != nil {
		e.t.Fatal(err)
	}
	hash, err := credential.Hash(secret)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.store.AddDevice(e.ctx, id, hash, nil); err != nil {
		e.t.Fatal(err)
	}
	d := &scripted{t: e.t, id: id, commands: make(chan protocol.UpgradeCommand, 16)}
	opts, err := mqttconn.Options(strings.Replace(e.sys.MQTTURL, "tcp://", "tcp://"+id+":"+secret+"@", 1), id)
	if err != nil {
		e.t.Fatal(err)
	}
	opts.SetOnConnectHandler(func(c paho.Client) {
		c.Subscribe(protocol.CommandTopic(id), 1, func(_ paho.Client, m paho.Message) {
			cmd, err := protocol.ParseCommand(m.Payload())
			if err != nil {
				e.t.Errorf("device %s got an invalid command: %v", id, err)
				return
			}
			d.commands <- cmd
		}).Wait()
	})
	if d.client, err = mqttconn.Connect(e.ctx, opts); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { d.client.Disconnect(100) })
	if status != nil {
		d.status(status)
		waitFor(e.t, 10*time.Second, id+"'s status in PostgreSQL", func() bool {
			dev, err := e.store.GetDevice(e.ctx, id)
			return err == nil && len(dev.Reported) > 0
		})
	}
	return d
}

func (d *scripted) publish(topic string, payload []byte) {
	d.t.Helper()
	if tok := d.client.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		d.t.Fatalf("device %s: publish to %s: %v", d.id, topic, tok.Error())
	}
}

func (d *scripted) progress(p protocol.Progress) {
	d.t.Helper()
	b, _ := json.Marshal(p)
	d.publish(protocol.ProgressTopic(d.id), b)
}

func (d *scripted) status(st protocol.Status) {
	d.t.Helper()
	b, _ := json.Marshal(st)
	d.publish(protocol.StatusTopic(d.id), b)
}

// command waits for the next upgrade command.
func (d *scripted) command() protocol.UpgradeCommand {
	d.t.Helper()
	select {
	case c := <-d.commands:
		return c
	case <-time.After(30 * time.Second):
		d.t.Fatalf("device %s got no command", d.id)
		return protocol.UpgradeCommand{}
	}
}

// counter counts calls from goroutines.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[k]++
}

func (c *counter) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

func states(events []store.UpgradeEvent) string {
	var s []string
	for _, e := range events {
		s = append(s, string(e.State))
	}
	return strings.Join(s, ",")
}

func simID(prefix string, n int) string { return fmt.Sprintf("%s-%05d", prefix, n) }
