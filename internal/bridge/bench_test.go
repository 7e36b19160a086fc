package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.temporal.io/api/serviceerror"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// BenchmarkIngest measures the whole path: devices publish to the real broker, the bridge
// validates, stores in PostgreSQL and signals Temporal, then acknowledges. Half the devices
// have a running workflow (real signals), half none (the signal is answered NotFound).
//
// Workloads:
//   - progress: each device reports attempts of 100 progress reports (1..100); every report is
//     stored, the first and the last (100) of each attempt are signalled (coalescing; the
//     merge window is off here, see benchmarkIngest).
//   - status: every report is a status report, each signalled.
//   - mixed, resembling a fleet upgrading: each device reports progress 5, 10, ... 100, then
//     its new versions (21 messages: 20 progress, 1 status; 3 signalled).
//
// Publishing is either saturating (as fast as the bridge acknowledges, with at most window
// messages unacknowledged) or paced at a fixed rate (rate=N in the name). Reported:
//   - msgs/s: messages acknowledged by the bridge per second (ns/op is its inverse);
//   - signals/s: signals sent per second (NotFound answers included);
//   - p50-ms, p99-ms: for each signalled message, the time from its publication to the
//     moment Temporal answered the bridge's signal (the signal is then in the workflow's
//     history; NotFound answers count too). Messages that are only stored (coalesced progress)
//     have no sample. The bridge's Signaler is wrapped to take the time; the message is
//     identified by its payload. Saturated runs stamp the time just before Publish, so their
//     latency is mostly queueing: by Little's law about window/throughput. Paced runs stamp
//     the time the message was due, so a publisher held up by the window does not hide delay.
func BenchmarkIngest(b *testing.B) {
	for _, kind := range []string{"progress", "status", "mixed"} {
		for _, shards := range []int{bridge.DefaultShards, 32} {
			b.Run(fmt.Sprintf("%s/shards=%d", kind, shards), func(b *testing.B) { benchmarkIngest(b, kind, shards, 0) })
		}
	}
	// Paced below what the saturated runs reach on a small machine, for the latency at a load
	// the bridge sustains.
	for _, p := range []struct {
		kind string
		rate int
	}{{"mixed", 2000}, {"mixed", 5000}, {"status", 500}} {
		b.Run(fmt.Sprintf("%s/shards=%d/rate=%d", p.kind, bridge.DefaultShards, p.rate), func(b *testing.B) {
			benchmarkIngest(b, p.kind, bridge.DefaultShards, p.rate)
		})
	}
}

// benchDevices is how many devices publish in BenchmarkIngest.
const benchDevices = 32

// benchWindow is how many messages BenchmarkIngest lets be published and not yet acknowledged
// by the bridge. mochi drops messages for a client whose write queue
// (broker.DefaultMaxPendingWrites) is full (internal/dev/broker puts them back, but slowly), so
// the publishers must not run further ahead of the bridge than that.
const benchWindow = 512

// benchMessage returns the i-th message of a workload: its device (index), topic and payload,
// and the key a signal of it carries (see signalKey).
func benchMessage(kind string, ids []string, i int) (d int, topic, payload, key string) {
	d = i % len(ids)
	n := i / len(ids) // the device's n-th message
	status := func() (int, string, string, string) {
		v := "1." + strconv.Itoa(i)
		return d, protocol.StatusTopic(ids[d]), fmt.Sprintf(`{"firmware_ver":%q,"app_ver":"2.0"}`, v), v
	}
	progress := func(attempt, p int) (int, string, string, string) {
		id := fmt.Sprintf("c%d-%d", d, attempt)
		return d, protocol.ProgressTopic(ids[d]), progressJSON(id, p), id + "/" + strconv.Itoa(p)
	}
	switch kind {
	case "status":
		return status()
	case "progress":
		return progress(n/100, 1+n%100)
	default: // mixed
		if n%21 == 20 {
			return status()
		}
		return progress(n/21, 5*(1+n%21))
	}
}

// signalKey is the key of the message a signal carries (see benchMessage).
func signalKey(arg any) string {
	switch a := arg.(type) {
	case ota.StatusSignal:
		return a.Status["firmware_ver"]
	case ota.ProgressSignal:
		return a.Progress.ID + "/" + strconv.Itoa(a.Progress.Progress)
	}
	return ""
}

// timingSignaler signals through Temporal and notes, for each signal Temporal answered, the
// time since its message was published.
type timingSignaler struct {
	bridge.Signaler
	mu        sync.Mutex
	published map[string]time.Time
	latencies []time.Duration
}

func (s *timingSignaler) publishing(key string, at time.Time) {
	s.mu.Lock()
	s.published[key] = at
	s.mu.Unlock()
}

func (s *timingSignaler) SignalWorkflow(ctx context.Context, workflowID, runID, name string, arg any) error {
	err := s.Signaler.SignalWorkflow(ctx, workflowID, runID, name, arg)
	var notFound *serviceerror.NotFound
	if err == nil || errors.As(err, &notFound) {
		now := time.Now()
		key := signalKey(arg)
		s.mu.Lock()
		if at, ok := s.published[key]; ok {
			s.latencies = append(s.latencies, now.Sub(at))
			delete(s.published, key)
		}
		s.mu.Unlock()
	}
	return err
}

// percentile returns the p-th percentile of sorted durations, in milliseconds.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(len(sorted)-1, int(float64(len(sorted))*p/100))
	return float64(sorted[i]) / float64(time.Millisecond)
}

// benchmarkIngest publishes b.N messages of a workload; rate 0 saturates the bridge.
func benchmarkIngest(b *testing.B, kind string, shards, rate int) {
	s := newStack(b)
	var ids []string
	var clients []paho.Client
	for i := range benchDevices {
		id := s.device(fmt.Sprintf("bench%d", i))
		if i%2 == 0 {
			s.startWorkflow(id)
		}
		ids = append(ids, id)
		clients = append(clients, s.connectDevice(id))
	}
	cfg := s.bridgeConfig("bridge-bench-" + randomHex(4))
	cfg.Shards = shards
	// Signalled at once, so that the latency figures measure the bridge, not the merge
	// window (which only takes signals away: TestMergeWindowEndToEnd).
	cfg.ProgressMerge = -1
	sig := &timingSignaler{Signaler: s.temporal, published: map[string]time.Time{}}
	br, _ := s.runBridgeWith(cfg, sig, nil)

	b.ResetTimer()
	start := time.Now()
	toks := make([]paho.Token, 0, b.N)
	for i := range b.N {
		stamp := time.Now()
		if rate > 0 {
			due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
			stamp = due
		}
		for int64(i)-br.Stats().Acked >= benchWindow {
			time.Sleep(100 * time.Microsecond)
		}
		d, topic, payload, key := benchMessage(kind, ids, i)
		if rate == 0 {
			stamp = time.Now()
		}
		sig.publishing(key, stamp)
		toks = append(toks, clients[d].Publish(topic, 1, false, payload))
	}
	deadline := time.Now().Add(5 * time.Minute)
	for br.Stats().Acked < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d messages acknowledged: %+v", br.Stats().Acked, b.N, br.Stats())
		}
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	for _, tok := range toks {
		if tok.Wait(); tok.Error() != nil {
			b.Fatal(tok.Error())
		}
	}
	st := br.Stats()
	if st.Stored != int64(b.N) || st.Rejected != 0 || st.Acked != int64(b.N) {
		b.Fatalf("stats %+v after %d messages", st, b.N)
	}
	sig.mu.Lock()
	lat := slices.Clone(sig.latencies)
	sig.mu.Unlock()
	if int64(len(lat)) != st.Signalled {
		b.Fatalf("%d signal latencies for %d signals", len(lat), st.Signalled)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(st.Signalled)/elapsed.Seconds(), "signals/s")
	b.ReportMetric(percentile(lat, 50), "p50-ms")
	b.ReportMetric(percentile(lat, 99), "p99-ms")
}
