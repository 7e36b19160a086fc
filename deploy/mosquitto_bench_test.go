package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/errgroup"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// backlogBroker is a production broker (deploy/mosquitto's configuration) with a bridge
// session that is subscribed but offline, and devices to fill it.
type backlogBroker struct {
	round   int // marks the reports sent, see benchReport
	mu      sync.Mutex
	seen    map[string]bool // IDs of the round's reports the bridge received
	sent    atomic.Int64    // reports sent, for their numbers
	b       *testing.B
	ctx     context.Context
	m       *localstack.Mosquitto
	devices []paho.Client
	ids     []string
	acked   atomic.Int64
}

const (
	benchBridgeID       = "bench-bridge"
	benchBridgePassword = "bench-bridge-pw"
	// A report of 116 bytes, each with an ID of its own: round, device, number.
	benchReport = `{"id":"r%02d-%-20s-%012d","type":"firmware","version":"1.1.0","progress":42,"desc":"downloading"}`
)

func newBacklogBroker(b *testing.B, devices int) *backlogBroker {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	b.Cleanup(cancel)
	bb := &backlogBroker{b: b, ctx: ctx, m: testenv.Mosquitto(b), seen: map[string]bool{}}
	st, err := store.Open(ctx, testenv.DatabaseURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	admin, err := brokeraccounts.Dial(ctx, bb.m.AdminURL(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	if _, err := brokeraccounts.Provision(ctx, admin, brokeraccounts.Setup{WorkerPassword: "w", BridgePassword: benchBridgePassword, Registry: st}); err != nil {
		b.Fatal(err)
	}
	for i := range devices {
		id := fmt.Sprintf("bench-%d", i)
		if err := admin.AddDevice(ctx, id, "s-"+id); err != nil {
			b.Fatal(err)
		}
		bb.ids = append(bb.ids, id)
	}
	// The bridge subscribes with a persistent session, then goes away.
	c := bb.bridge(nil)
	c.Disconnect(100)
	bb.connectDevices()
	return bb
}

// bridge connects the bridge's session (resubscribing, which keeps its queue); onMessage gets
// what the broker delivers.
func (bb *backlogBroker) bridge(onMessage paho.MessageHandler) paho.Client {
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + bb.m.Addr()).SetClientID(benchBridgeID).
		SetUsername(brokeraccounts.BridgeAccount).SetPassword(benchBridgePassword).SetCleanSession(false).
		SetAutoReconnect(false).SetOrderMatters(false).SetDefaultPublishHandler(onMessage))
	if tok := c.Connect(); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		bb.b.Fatalf("connect the bridge: %v", tok.Error())
	}
	if tok := c.Subscribe(protocol.ProgressFilter, 1, onMessage); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		bb.b.Fatalf("subscribe the bridge: %v", tok.Error())
	}
	return c
}

func (bb *backlogBroker) connectDevices() {
	bb.devices = bb.devices[:0]
	for _, id := range bb.ids {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + bb.m.Addr()).SetClientID(id).SetUsername(id).
			SetPassword("s-" + id).SetCleanSession(false).SetAutoReconnect(false).SetWriteTimeout(10 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
			bb.b.Fatalf("connect %s: %v", id, tok.Error())
		}
		bb.devices = append(bb.devices, c)
	}
}

// publish sends n reports spread over the devices, at most rate a second when rate > 0,
// counting those the broker acknowledged, until n are sent or stop is closed.
func (bb *backlogBroker) publish(n int, rate float64, stop <-chan struct{}) error {
	var g errgroup.Group
	per := n / len(bb.devices)
	start := time.Now()
	for d, c := range bb.devices {
		g.Go(func() error {
			topic := protocol.ProgressTopic(bb.ids[d])
			for i := range per {
				if rate > 0 {
					due := start.Add(time.Duration(float64(i*len(bb.devices)+d) / rate * float64(time.Second)))
					select {
					case <-stop:
						return nil
					case <-time.After(time.Until(due)):
					}
				}
				tok := c.Publish(topic, 1, false, bb.report(bb.ids[d]))
				select {
				case <-tok.Done():
				case <-stop: // the broker is being killed: this one may never be acknowledged
					return nil
				case <-time.After(time.Minute):
					return fmt.Errorf("publish from %s: no acknowledgement within a minute", bb.ids[d])
				}
				if err := tok.Error(); err != nil {
					select {
					case <-stop:
						return nil
					default:
						return fmt.Errorf("publish from %s: %w", bb.ids[d], err)
					}
				}
				bb.acked.Add(1)
			}
			return nil
		})
	}
	return g.Wait()
}

// report is a new report of the current round from device id.
func (bb *backlogBroker) report(id string) string {
	return fmt.Sprintf(benchReport, bb.round, id, bb.sent.Add(1))
}

// count is the bridge's message handler: it counts the current round's reports, once each,
// and closes marker when the marker arrives.
func (bb *backlogBroker) count(marker chan struct{}, last *atomic.Int64) paho.MessageHandler {
	prefix := fmt.Sprintf(`{"id":"r%02d-`, bb.round)
	return func(_ paho.Client, m paho.Message) {
		last.Store(time.Now().UnixNano())
		p := string(m.Payload())
		switch {
		case p == "marker":
			close(marker)
		case strings.HasPrefix(p, prefix):
			bb.mu.Lock()
			bb.seen[p] = true
			bb.mu.Unlock()
		}
	}
}

func (bb *backlogBroker) received() int64 {
	bb.mu.Lock()
	defer bb.mu.Unlock()
	return int64(len(bb.seen))
}

// drain connects the bridge's session and returns how many of the current round's reports
// the bridge has received: all of want, or those that came before a quiet second once a
// marker sent after the bridge connected has arrived (Mosquitto 2.0.11 may deliver a new
// message before part of a restored queue, so the marker alone does not say the queue is
// empty).
func (bb *backlogBroker) drain(want int64) int64 {
	var last atomic.Int64
	marker := make(chan struct{})
	c := bb.bridge(bb.count(marker, &last))
	defer c.Disconnect(100)
	if tok := bb.devices[0].Publish(protocol.ProgressTopic(bb.ids[0]), 1, false, "marker"); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		bb.b.Fatalf("publish the marker: %v", tok.Error())
	}
	deadline := time.After(10 * time.Minute)
	select {
	case <-marker:
	case <-deadline:
		bb.b.Fatalf("the marker did not arrive; %d reports did", bb.received())
	}
	for bb.received() < want && time.Since(time.Unix(0, last.Load())) < time.Second {
		select {
		case <-deadline:
			bb.b.Fatalf("%d of %d reports delivered after 10 minutes", bb.received(), want)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return bb.received()
}

// BenchmarkMosquittoBacklog measures the production configuration holding reports for a
// bridge that is down: the broker's memory per queued report, the size of its persistence
// file and how long a save blocks it (it saves every autosave_interval seconds, and the
// broker serves no client meanwhile).
//
//	OTAFLOW_BENCH_BACKLOG=1000000 go test -run '^$' -bench BenchmarkMosquittoBacklog -benchtime 1x ./deploy/
func BenchmarkMosquittoBacklog(b *testing.B) {
	n := 100_000
	if v := os.Getenv("OTAFLOW_BENCH_BACKLOG"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1000 {
			b.Fatalf("OTAFLOW_BENCH_BACKLOG=%q: want a number of reports, at least 1000", v)
		}
	}
	bb := newBacklogBroker(b, 100)
	before := procRSS(b, bb.m)
	start := time.Now()
	if err := bb.publish(n, 0, nil); err != nil {
		b.Fatal(err)
	}
	n = int(bb.acked.Load())
	elapsed := time.Since(start)
	after := procRSS(b, bb.m)
	perReport := (after - before) * 1e6 / float64(n)
	b.Logf("%d reports of %d bytes queued in %s (%.0f/s); broker memory %.0f MB -> %.0f MB: %.0f bytes a queued report",
		n, len(fmt.Sprintf(benchReport, 0, bb.ids[0], 0)), elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), before, after, perReport)

	// A save, asked for with SIGUSR1, blocks the broker: the longest round trip of a device
	// publishing meanwhile is how long.
	var saves []time.Duration
	db := filepath.Join(bb.m.Dir(), "mosquitto.db")
	for range 3 {
		saves = append(saves, bb.saveStall(db))
	}
	fi, err := os.Stat(db)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("persistence file %.0f MB; a save holds the broker for %s", float64(fi.Size())/1e6, saves)
	// 10 minutes of 10,000 devices at the protocol's most, 1 report/s.
	const sizing = 6_000_000
	b.Logf("so %d reports (10 minutes of 10,000 devices at 1 report/s) would take about %.1f GB of the broker's memory and a %.1f GB file",
		sizing, perReport*sizing/1e9, float64(fi.Size())/float64(n)*sizing/1e9)
	b.ReportMetric(perReport, "bytes/report")
	b.ReportMetric(float64(fi.Size())/float64(n), "file-bytes/report")
	b.ReportMetric(saves[len(saves)-1].Seconds(), "save-s")

	if got, want := bb.drain(bb.acked.Load()), bb.acked.Load(); got != want {
		b.Fatalf("the bridge got %d reports, want %d", got, want)
	}
}

// saveStall makes the broker save its state (SIGUSR1) and returns the longest round trip of
// a device publishing while it does, until the persistence file db is replaced.
func (bb *backlogBroker) saveStall(db string) time.Duration {
	var was time.Time // none yet: the broker has not saved before
	if fi, err := os.Stat(db); err == nil {
		was = fi.ModTime()
	}
	var longest time.Duration
	if err := syscall.Kill(bb.m.Pid(), syscall.SIGUSR1); err != nil {
		bb.b.Fatal(err)
	}
	for {
		t0 := time.Now()
		if tok := bb.devices[0].Publish(protocol.ProgressTopic(bb.ids[0]), 1, false, bb.report(bb.ids[0])); !tok.WaitTimeout(10*time.Minute) || tok.Error() != nil {
			bb.b.Fatal(tok.Error())
		}
		bb.acked.Add(1)
		longest = max(longest, time.Since(t0))
		if now, err := os.Stat(db); err == nil && !now.ModTime().Equal(was) {
			return longest.Round(time.Millisecond)
		}
	}
}

// BenchmarkMosquittoCrash measures what a SIGKILL of the production broker loses. The fleet
// reports at a steady rate; the broker is killed and started again on its persistence, and the
// bridge's session is drained. With the bridge down, the reports lost are those the broker
// acknowledged after its last save (autosave_interval); with the bridge up, those the broker had
// acknowledged but not yet delivered to it.
//
//	go test -run '^$' -bench BenchmarkMosquittoCrash -benchtime 1x ./deploy/
func BenchmarkMosquittoCrash(b *testing.B) {
	const rate = 1000.0 // reports a second
	bb := newBacklogBroker(b, 50)
	for i, round := range []struct {
		after    time.Duration
		bridgeUp bool
	}{{2 * time.Second, false}, {7 * time.Second, false}, {11*time.Second + 500*time.Millisecond, false}, {7 * time.Second, true}} {
		bb.round = i + 1
		bb.seen = map[string]bool{}
		var live paho.Client
		if round.bridgeUp {
			var last atomic.Int64
			live = bb.bridge(bb.count(make(chan struct{}), &last))
		}
		before := bb.acked.Load()
		stop := make(chan struct{})
		done := make(chan error, 1)
		go func() { done <- bb.publish(1<<30, rate, stop) }()
		time.Sleep(round.after)
		close(stop)
		saved := "it had not saved yet"
		if fi, err := os.Stat(filepath.Join(bb.m.Dir(), "mosquitto.db")); err == nil {
			saved = time.Since(fi.ModTime()).Round(100*time.Millisecond).String() + " after its last save"
		}
		if err := bb.m.Kill(); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		sent := bb.acked.Load() - before
		if live != nil {
			live.Disconnect(0)
		}
		bb.m = testenv.RestartMosquitto(b, bb.m)
		bb.connectDevices()
		got := bb.drain(sent)
		state := "bridge down"
		if round.bridgeUp {
			state = "bridge up"
		}
		b.Logf("%s, killed %s after the fleet started reporting, %s: %d reports acknowledged, %d delivered to the bridge, %d lost (%.2f s of reports)",
			state, round.after, saved, sent, got, sent-got, float64(sent-got)/rate)
	}
}

// procRSS is the broker's resident memory in MB.
func procRSS(b *testing.B, m *localstack.Mosquitto) float64 {
	n, err := m.ResidentMemory()
	if err != nil {
		b.Fatal(err)
	}
	return float64(n) / (1 << 20)
}
