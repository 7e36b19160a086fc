package bridge_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otaflow/otaflow/internal/protocol"
)

// BenchmarkIngest measures messages per second through the whole path: devices publish to
// the real broker, the bridge validates, stores in PostgreSQL and signals Temporal, then
// acknowledges. Half the devices have a running workflow (real signals), half none (the
// signal is answered NotFound). "progress" is coalesced (every report stored, few signalled);
// "status" signals every report.
func BenchmarkIngest(b *testing.B) {
	for _, kind := range []string{protocol.KindProgress, protocol.KindStatus} {
		for _, shards := range []int{8, 32} {
			name := fmt.Sprintf("%s/shards=%d", strings.TrimPrefix(kind, "ota/"), shards)
			b.Run(name, func(b *testing.B) { benchmarkIngest(b, kind, shards) })
		}
	}
}

func benchmarkIngest(b *testing.B, kind string, shards int) {
	const devices = 32
	// Messages published but not yet acknowledged by the bridge. mochi drops messages for a
	// client whose write queue (broker.DefaultMaxPendingWrites) is full, so the publishers
	// must not run further ahead of the bridge than that.
	const window = 512
	s := newStack(b)
	var ids []string
	var clients []paho.Client
	for i := range devices {
		id := s.device(fmt.Sprintf("bench%d", i))
		if i%2 == 0 {
			s.startWorkflow(id)
		}
		ids = append(ids, id)
		clients = append(clients, s.connectDevice(id))
	}
	cfg := s.bridgeConfig("bridge-bench-" + randomHex(4))
	cfg.Shards = shards
	br, _ := s.runBridge(cfg, nil)

	b.ResetTimer()
	start := time.Now()
	var toks []paho.Token
	for i := range b.N {
		for int64(i)-br.Stats().Acked >= window {
			time.Sleep(100 * time.Microsecond)
		}
		d := i % devices
		var topic, payload string
		if kind == protocol.KindProgress {
			topic, payload = protocol.ProgressTopic(ids[d]), progressJSON("c1", 1+(i/devices)%99)
		} else {
			topic, payload = protocol.StatusTopic(ids[d]), fmt.Sprintf(`{"firmware_ver":"1.%d","app_ver":"2.0"}`, i)
		}
		toks = append(toks, clients[d].Publish(topic, 1, false, payload))
	}
	deadline := time.Now().Add(5 * time.Minute)
	for br.Stats().Acked < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d messages acknowledged: %+v", br.Stats().Acked, b.N, br.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	for _, tok := range toks {
		if tok.Wait(); tok.Error() != nil {
			b.Fatal(tok.Error())
		}
	}
	st := br.Stats()
	if st.Stored != int64(b.N) || st.Rejected != 0 {
		b.Fatalf("stats %+v after %d messages", st, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(st.Signalled)/elapsed.Seconds(), "signals/s")
}
