package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

// fastTiming makes simulated devices quick, as tests want.
var fastTiming = simulator.Timing{ReportInterval: 20 * time.Millisecond, InstallDelay: 200 * time.Millisecond,
	RebootDelay: 100 * time.Millisecond, KeepAlive: 5 * time.Second, MaxReconnectInterval: time.Second}

// e2eProgressMerge is the bridge's merge window in these tests.
const e2eProgressMerge = 500 * time.Millisecond

// env is one test's system: its own database, broker, worker, bridge and devices, on the
// shared Temporal server. Tests using it must not run in parallel: they share the task queue.
type env struct {
	t     testing.TB
	ctx   context.Context
	store *store.Store
	sys   *system.System
	c     client.Client
	// dbURL is the URL of the test's database; pkgDir the directory the file server serves.
	dbURL  string
	pkgDir string
}

func newEnv(t testing.TB, cfg system.Config) *env {
	t.Helper()
	return newEnvFor(t, 3*time.Minute, cfg, nil)
}

// newEnvPrepared is newEnv with the registry prepared before the system starts (devices
// registered with labels, for example).
func newEnvPrepared(t testing.TB, cfg system.Config, prepare func(ctx context.Context, st *store.Store) error) *env {
	t.Helper()
	return newEnvFor(t, 3*time.Minute, cfg, prepare)
}

// newEnvFor is newEnvPrepared for a test (or benchmark) that may take up to timeout.
func newEnvFor(t testing.TB, timeout time.Duration, cfg system.Config, prepare func(ctx context.Context, st *store.Store) error) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	dbURL := testenv.DatabaseURL(t)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if prepare != nil {
		if err := prepare(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
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
	if cfg.Bridge.ProgressMerge == 0 {
		// The harness's timeouts are seconds (its devices take milliseconds): its merge
		// window is scaled down with them, as a deployment keeps its window well below its
		// timeouts.
		cfg.Bridge.ProgressMerge = e2eProgressMerge
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
	return &env{t: t, ctx: ctx, store: st, sys: sys, c: cfg.Client, dbURL: dbURL, pkgDir: cfg.PackageDir}
}

// request is a fast device upgrade request for the test package.
func (e *env) request(device string) ota.UpgradeRequest {
	return ota.UpgradeRequest{DeviceID: device, Type: "firmware", Version: "1.1",
		URL: e.sys.Package.URL, MD5: e.sys.Package.MD5, Size: e.sys.Package.Size,
		StartTimeout: ota.Duration(4 * time.Second), SilenceTimeout: ota.Duration(3 * time.Second), InstallTimeout: ota.Duration(3 * time.Second),
		RetryBackoff: ota.Duration(200 * time.Millisecond), Deadline: ota.Duration(2 * time.Minute)}
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

// historyLength is the number of events in a workflow run's history.
func (e *env) historyLength(workflowID, runID string) int64 {
	e.t.Helper()
	d, err := e.c.DescribeWorkflow(e.ctx, workflowID, runID)
	if err != nil {
		e.t.Fatal(err)
	}
	return int64(d.HistoryLength)
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
	return e.labeledDevice(id, nil, status)
}

// labeledDevice is a scripted device registered with labels.
func (e *env) labeledDevice(id string, labels map[string]string, status protocol.Status) *scripted {
	e.t.Helper()
	secret, err := credential.NewSecret()
	if err != nil {
		e.t.Fatal(err)
	}
	hash, err := credential.Hash(secret)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.store.AddDevice(e.ctx, id, hash, labels); err != nil {
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
		require.Eventually(e.t, func() bool {
			dev, err := e.store.GetDevice(e.ctx, id)
			return err == nil && len(dev.Reported) > 0
		}, 10*time.Second, 50*time.Millisecond, id+"'s status in PostgreSQL")
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

func states(events []store.UpgradeEvent) string {
	var s []string
	for _, e := range events {
		s = append(s, string(e.State))
	}
	return strings.Join(s, ",")
}

func simID(prefix string, n int) string { return fmt.Sprintf("%s-%05d", prefix, n) }

// publisher is a package publisher's key pair, made for one test: OTAflow and the devices
// trust its public key (keys) or not.
type publisher struct {
	id   string
	key  ed25519.PrivateKey
	keys *pkgsig.TrustedKeys
}

func newPublisher(t *testing.T, id string) publisher {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pkgsig.NewTrustedKeys(map[string]ed25519.PublicKey{id: pub})
	if err != nil {
		t.Fatal(err)
	}
	return publisher{id: id, key: priv, keys: keys}
}

// sign signs the package of r, whose sha256 is sum, and sets r's integrity fields.
func (p publisher) sign(t *testing.T, r *ota.UpgradeRequest, sum string) {
	t.Helper()
	sig, err := pkgsig.Sign(p.key, pkgsig.Package{Type: r.Type, Version: r.Version, Size: r.Size, SHA256: sum})
	if err != nil {
		t.Fatal(err)
	}
	r.SHA256, r.Sig, r.KeyID = sum, sig, p.id
}
