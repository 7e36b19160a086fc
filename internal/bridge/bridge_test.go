package bridge

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

const dev = "sensor-1"

func TestRejectedMessages(t *testing.T) {
	oversized := `{"type":"firmware","version":"1.1","progress":50,"desc":"` + strings.Repeat("x", protocol.MaxPayloadSize) + `"}`
	tests := []struct {
		name       string
		topic      string
		payload    string
		wantDevice string
		wantReason string
	}{
		{"malformed JSON", protocol.ProgressTopic(dev), `{"type":"firmware","progress":`, dev, "malformed JSON"},
		{"not an object", protocol.ProgressTopic(dev), `[1,2]`, dev, "malformed JSON"},
		{"null payload", protocol.StatusTopic(dev), `null`, dev, "not a JSON object"},
		{"trailing data", protocol.StatusTopic(dev), `{"app_ver":"1"} {}`, dev, "trailing data"},
		{"empty payload", protocol.ProgressTopic(dev), ``, dev, "empty payload"},
		{"oversized", protocol.ProgressTopic(dev), oversized, dev, "more than 4096"},
		{"progress of wrong type", protocol.ProgressTopic(dev), `{"type":"firmware","version":"1.1","progress":true}`, dev, `"progress" must be an integer`},
		{"progress as a string", protocol.ProgressTopic(dev), `{"type":"firmware","version":"1.1","progress":"70"}`, dev, `"progress" must be an integer`},
		{"fractional progress", protocol.ProgressTopic(dev), `{"type":"firmware","version":"1.1","progress":7.5}`, dev, `"progress" must be an integer`},
		{"type of wrong type", protocol.ProgressTopic(dev), `{"type":7,"version":"1.1","progress":70}`, dev, `"type" must be a string`},
		{"missing version", protocol.ProgressTopic(dev), `{"type":"firmware","progress":70}`, dev, `"version" is missing`},
		{"non-UTF-8", protocol.ProgressTopic(dev), "{\"type\":\"firmware\",\"version\":\"1.1\",\"progress\":70,\"desc\":\"\xff\xfe\"}", dev, "not UTF-8"},
		{"progress 0", protocol.ProgressTopic(dev), `{"type":"firmware","version":"1.1","progress":0}`, dev, "not 0"},
		{"progress 101", protocol.ProgressTopic(dev), `{"type":"firmware","version":"1.1","progress":101}`, dev, "not 101"},
		{"progress -5", protocol.ProgressTopic(dev), `{"type":"firmware","version":"1.1","progress":-5}`, dev, "not -5"},
		{"desc too long", protocol.ProgressTopic(dev), `{"type":"firmware","version":"1.1","progress":5,"desc":"` + strings.Repeat("é", 257) + `"}`, dev, `"desc" is longer`},
		{"empty status", protocol.StatusTopic(dev), `{}`, dev, "no versions"},
		{"non-string status value", protocol.StatusTopic(dev), `{"app_ver":1.1}`, dev, "must be a string"},
		{"nested status value", protocol.StatusTopic(dev), `{"app_ver":{"v":"1"}}`, dev, "must be a string"},
		{"bad device ID in topic", "devices/bad id!/status", `{"app_ver":"1.1"}`, "", "device ID must be"},
		{"unknown topic kind", "devices/" + dev + "/ota/other", `{}`, "", "not an OTAflow device topic"},
		{"not a device topic", "other/" + dev + "/status", `{"app_ver":"1.1"}`, "", "not an OTAflow device topic"},
		{"command topic", protocol.CommandTopic(dev), `{"id":"x"}`, dev, "do not publish on ota/command"},
		{"topic with NUL and bad UTF-8", "devices/a\x00\xff/status", `{"app_ver":"1.1"}`, "", "device ID must be"},
		{"unknown device progress", protocol.ProgressTopic("ghost"), `{"type":"firmware","version":"1.1","progress":5}`, "ghost", ReasonUnknownDevice},
		{"unknown device status", protocol.StatusTopic("ghost"), `{"app_ver":"1.1"}`, "ghost", ReasonUnknownDevice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			st := newFakeStore(t, dev)
			sig := newFakeSignaler(ota.DeviceWorkflowID(dev), ota.DeviceWorkflowID("ghost"))
			b, stop := startTest(t, testConfig(clock), sig, st)
			m := newMessage(tt.topic, tt.payload)
			b.deliver(m)
			waitAcked(t, m)
			stop()

			progress, statuses, rejected := st.snapshot()
			if len(progress) != 0 || len(statuses) != 0 || len(sig.sent()) != 0 {
				t.Errorf("a rejected message changed state: progress %v, status %v, signals %v", progress, statuses, sig.sent())
			}
			if len(rejected) != 1 {
				t.Fatalf("got %d rejected records, want 1", len(rejected))
			}
			r := rejected[0]
			if !strings.Contains(r.Reason, tt.wantReason) {
				t.Errorf("reason %q does not contain %q", r.Reason, tt.wantReason)
			}
			if r.DeviceID != tt.wantDevice {
				t.Errorf("device %q, want %q", r.DeviceID, tt.wantDevice)
			}
			if !r.ReceivedAt.Equal(clock.Now()) {
				t.Errorf("received at %v, want %v", r.ReceivedAt, clock.Now())
			}
			if len(tt.payload) <= MaxStoredPayload && !bytes.Equal(r.Payload, []byte(tt.payload)) {
				t.Errorf("stored payload %q, want %q", r.Payload, tt.payload)
			}
			s := b.Stats()
			if s.Received != 1 || s.Rejected != 1 || s.Acked != 1 || s.Stored != 0 || s.Signalled != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

func TestOversizedPayloadIsTruncated(t *testing.T) {
	payload := bytes.Repeat([]byte("a"), 3*protocol.MaxPayloadSize)
	got := truncatePayload(payload)
	want := append(bytes.Repeat([]byte("a"), MaxStoredPayload), fmt.Sprintf("...[truncated, %d bytes in all]", len(payload))...)
	if !bytes.Equal(got, want) {
		t.Errorf("truncatePayload kept %d bytes ending %q", len(got), got[len(got)-40:])
	}
	small := []byte(`{"a":"b"}`)
	if got := truncatePayload(small); !bytes.Equal(got, small) {
		t.Errorf("truncatePayload changed a small payload: %q", got)
	}
}

func TestSafeText(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"devices/a/status", 100, "devices/a/status"},
		{"a\x00b", 100, "a\uFFFDb"},
		{"a\xffb", 100, "a\uFFFDb"},
		{"devices/a/status", 9, "device..."},                   // protocol.Truncate's cut (TestTruncate there)
		{"a\x00" + strings.Repeat("b", 20), 9, "a\uFFFDbb..."}, // cleaned, then cut
	}
	for _, tt := range tests {
		if got := safeText(tt.in, tt.max); got != tt.want {
			t.Errorf("safeText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestValidMessagesAreStoredAndSignalled(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	sig := newFakeSignaler(ota.DeviceWorkflowID(dev))
	b, stop := startTest(t, testConfig(clock), sig, st)

	pm := newMessage(protocol.ProgressTopic(dev), `{"id":"c1","type":"firmware","version":"1.1","progress":70,"desc":"downloading","extra":true}`)
	sm := newMessage(protocol.StatusTopic(dev), `{"app_ver":"1.1","firmware_ver":"2.3"}`)
	b.deliver(pm)
	b.deliver(sm)
	waitAcked(t, pm)
	waitAcked(t, sm)
	stop()

	wantP := protocol.Progress{ID: "c1", Type: "firmware", Version: "1.1", Progress: 70, Desc: "downloading"}
	wantS := protocol.Status{"app_ver": "1.1", "firmware_ver": "2.3"}
	progress, statuses, rejected := st.snapshot()
	if want := []recordedProgress{{dev, wantP, clock.Now()}}; !reflect.DeepEqual(progress, want) {
		t.Errorf("stored progress %+v, want %+v", progress, want)
	}
	if want := []recordedStatus{{dev, wantS, clock.Now()}}; !reflect.DeepEqual(statuses, want) {
		t.Errorf("stored status %+v, want %+v", statuses, want)
	}
	if len(rejected) != 0 {
		t.Errorf("rejected %+v", rejected)
	}
	wantSignals := []sentSignal{
		{ota.DeviceWorkflowID(dev), "", ota.SignalProgress, ota.ProgressSignal{Progress: wantP, ReceivedAt: clock.Now()}},
		{ota.DeviceWorkflowID(dev), "", ota.SignalStatus, ota.StatusSignal{Status: wantS, ReceivedAt: clock.Now()}},
	}
	if got := sig.sent(); !reflect.DeepEqual(got, wantSignals) {
		t.Errorf("signals %+v\nwant %+v", got, wantSignals)
	}
	if s := b.Stats(); s != (Stats{Received: 2, Stored: 2, Signalled: 2, Acked: 2}) {
		t.Errorf("stats %+v", s)
	}
}

func TestNoWorkflowIsNotAnError(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	sig := newFakeSignaler() // no workflow runs: every signal gets NotFound
	b, stop := startTest(t, testConfig(clock), sig, st)
	msgs := []*fakeMessage{
		newMessage(protocol.StatusTopic(dev), `{"app_ver":"1.0"}`),
		newMessage(protocol.ProgressTopic(dev), `{"type":"app","version":"1.1","progress":10}`),
	}
	for _, m := range msgs {
		b.deliver(m)
	}
	for _, m := range msgs {
		waitAcked(t, m)
	}
	stop()
	progress, statuses, _ := st.snapshot()
	if len(progress) != 1 || len(statuses) != 1 {
		t.Errorf("stored %d progress and %d status reports, want 1 and 1", len(progress), len(statuses))
	}
	if s := b.Stats(); s.NoWorkflow != 2 || s.Signalled != 2 || s.Retries != 0 || s.Acked != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestRetainedReplayIsIgnored(t *testing.T) {
	st := newFakeStore(t, dev)
	sig := newFakeSignaler(ota.DeviceWorkflowID(dev))
	b, stop := startTest(t, testConfig(newFakeClock()), sig, st)
	m := newMessage(protocol.StatusTopic(dev), `{"app_ver":"0.9"}`)
	m.retained = true
	b.deliver(m)
	waitAcked(t, m)
	stop()
	progress, statuses, rejected := st.snapshot()
	if len(progress)+len(statuses)+len(rejected)+len(sig.sent()) != 0 {
		t.Errorf("a retained replay changed state")
	}
	if s := b.Stats(); s.Ignored != 1 || s.Acked != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestTransientFailuresAreRetried checks every step is retried until it succeeds, that a
// successful step is not repeated, and that the message is acknowledged only once the
// report is stored and signalled (or the rejection recorded).
func TestTransientFailuresAreRetried(t *testing.T) {
	tests := []struct {
		name          string
		topic         string
		payload       string
		storeFailures map[string]int
		signalFails   int
		wantRetries   int64
		wantCalls     map[string]int
		wantSignals   int
		wantRejected  int
	}{
		{"progress store down", protocol.ProgressTopic(dev), `{"type":"app","version":"1.1","progress":10}`,
			map[string]int{"progress": 3}, 0, 3, map[string]int{"progress": 4}, 1, 0},
		{"status store down", protocol.StatusTopic(dev), `{"app_ver":"1.1"}`,
			map[string]int{"status": 2}, 0, 2, map[string]int{"status": 3}, 1, 0},
		{"temporal down", protocol.StatusTopic(dev), `{"app_ver":"1.1"}`,
			nil, 4, 4, map[string]int{"status": 1}, 1, 0},
		{"store and temporal down", protocol.ProgressTopic(dev), `{"type":"app","version":"1.1","progress":100}`,
			map[string]int{"progress": 2}, 2, 4, map[string]int{"progress": 3}, 1, 0},
		{"rejected store down", protocol.StatusTopic(dev), `{}`,
			map[string]int{"rejected": 5}, 0, 5, map[string]int{"rejected": 6}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newFakeStore(t, dev)
			for op, n := range tt.storeFailures {
				st.failures[op] = n
			}
			sig := newFakeSignaler(ota.DeviceWorkflowID(dev))
			sig.failures = tt.signalFails
			b, stop := startTest(t, testConfig(newFakeClock()), sig, st)
			m := newMessage(tt.topic, tt.payload)
			m.onAck = func() {
				progress, statuses, rejected := st.snapshot()
				if len(progress)+len(statuses) != tt.wantSignals || len(sig.sent()) != tt.wantSignals || len(rejected) != tt.wantRejected {
					t.Errorf("acknowledged before the work was done: %d reports stored, %d signals, %d rejected",
						len(progress)+len(statuses), len(sig.sent()), len(rejected))
				}
			}
			b.deliver(m)
			waitAcked(t, m)
			stop()
			st.mu.Lock()
			calls := st.calls
			st.mu.Unlock()
			if !reflect.DeepEqual(calls, tt.wantCalls) {
				t.Errorf("store calls %v, want %v", calls, tt.wantCalls)
			}
			if s := b.Stats(); s.Retries != tt.wantRetries || s.Acked != 1 || m.acks.Load() != 1 {
				t.Errorf("stats %+v, acks %d", s, m.acks.Load())
			}
		})
	}
}

// TestStopDuringOutageLeavesMessageUnacknowledged checks that a message whose report cannot
// be stored is never acknowledged, so that the broker redelivers it.
func TestStopDuringOutageLeavesMessageUnacknowledged(t *testing.T) {
	tests := []struct {
		name   string
		outage func(*fakeStore, *fakeSignaler)
	}{
		{"database down", func(st *fakeStore, _ *fakeSignaler) { st.failures["status"] = -1 }},
		{"temporal down", func(_ *fakeStore, sig *fakeSignaler) { sig.failures = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newFakeStore(t, dev)
			sig := newFakeSignaler(ota.DeviceWorkflowID(dev))
			tt.outage(st, sig)
			b, stop := startTest(t, testConfig(newFakeClock()), sig, st)
			msgs := []*fakeMessage{newMessage(protocol.StatusTopic(dev), `{"app_ver":"1.1"}`),
				newMessage(protocol.StatusTopic(dev), `{"app_ver":"1.2"}`)}
			for _, m := range msgs {
				b.deliver(m)
			}
			require.Eventually(t, func() bool { return b.Stats().Retries >= 3 }, 5*time.Second, time.Millisecond, "retries during the outage")
			stop()
			for _, m := range msgs {
				if m.acks.Load() != 0 {
					t.Errorf("message acknowledged during an outage")
				}
			}
			if s := b.Stats(); s.Unfinished != 2 || s.Acked != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// TestPerDeviceOrder checks that each device's reports are stored in the order delivered,
// while devices are spread over the shards.
func TestPerDeviceOrder(t *testing.T) {
	devices := []string{"d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"}
	st := newFakeStore(t, devices...)
	sig := newFakeSignaler()
	b, stop := startTest(t, testConfig(newFakeClock()), sig, st)
	var msgs []*fakeMessage
	for p := 1; p <= 100; p++ {
		for _, d := range devices {
			m := newMessage(protocol.ProgressTopic(d), fmt.Sprintf(`{"type":"app","version":"1.1","progress":%d}`, p))
			msgs = append(msgs, m)
			b.deliver(m)
		}
	}
	for _, m := range msgs {
		waitAcked(t, m)
	}
	stop()
	progress, _, _ := st.snapshot()
	next := map[string]int{}
	for _, r := range progress {
		next[r.Device]++
		if r.P.Progress != next[r.Device] {
			t.Fatalf("device %s: stored progress %d, want %d", r.Device, r.P.Progress, next[r.Device])
		}
	}
	for _, d := range devices {
		if next[d] != 100 {
			t.Errorf("device %s: %d reports stored, want 100", d, next[d])
		}
	}
}

// TestBackPressure checks that deliver blocks while the device's shard queue is full and
// resumes when the shard catches up.
func TestBackPressure(t *testing.T) {
	st := newFakeStore(t, dev)
	st.gate = make(chan struct{})
	st.entered = make(chan struct{}, 10)
	cfg := testConfig(newFakeClock())
	cfg.Shards, cfg.QueueSize = 1, 1
	b, stop := startTest(t, cfg, newFakeSignaler(), st)
	payload := `{"type":"app","version":"1.1","progress":%d}`
	b.deliver(newMessage(protocol.ProgressTopic(dev), fmt.Sprintf(payload, 1)))
	<-st.entered                                                                // the worker holds message 1
	b.deliver(newMessage(protocol.ProgressTopic(dev), fmt.Sprintf(payload, 2))) // fills the queue
	done := make(chan struct{})
	go func() {
		b.deliver(newMessage(protocol.ProgressTopic(dev), fmt.Sprintf(payload, 3)))
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("deliver returned although the shard queue was full")
	case <-time.After(50 * time.Millisecond):
	}
	close(st.gate)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("deliver still blocked after the shard caught up")
	}
	stop()
}

// TestBatchMixesOutcomes holds the shard on a first batch while a mix of messages queues
// behind it, so that they form one batch: valid reports, an unregistered device's report
// (rejected without failing the others), invalid messages and a retained replay. Each must
// end as it would alone, and be acknowledged once.
func TestBatchMixesOutcomes(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev, "sensor-2")
	st.gate, st.entered = make(chan struct{}), make(chan struct{}, 10)
	sig := newFakeSignaler(ota.DeviceWorkflowID(dev), ota.DeviceWorkflowID("sensor-2"))
	cfg := testConfig(clock)
	cfg.Shards, cfg.QueueSize, cfg.BatchSize = 1, 16, 16
	b, stop := startTest(t, cfg, sig, st)

	first := newMessage(protocol.ProgressTopic(dev), `{"id":"c1","type":"app","version":"1.1","progress":1}`)
	b.deliver(first)
	<-st.entered // the shard holds the first batch: the rest queue up
	retained := newMessage(protocol.StatusTopic(dev), `{"app_ver":"0.9"}`)
	retained.retained = true
	msgs := []*fakeMessage{
		newMessage(protocol.ProgressTopic(dev), `{"id":"c1","type":"app","version":"1.1","progress":100}`),
		newMessage(protocol.ProgressTopic("ghost"), `{"id":"c9","type":"app","version":"1.1","progress":5}`),
		newMessage(protocol.StatusTopic("sensor-2"), `{"app_ver":"2.0"}`),
		newMessage(protocol.ProgressTopic(dev), `{"id":"c1","type":"app","progress":`),
		retained,
		newMessage(protocol.StatusTopic("ghost"), `{"app_ver":"1.0"}`),
		newMessage(protocol.StatusTopic(dev), `{"app_ver":"1.1"}`),
		newMessage(protocol.CommandTopic(dev), `{}`),
	}
	for _, m := range msgs {
		b.deliver(m)
	}
	close(st.gate)
	waitAcked(t, first)
	for _, m := range msgs {
		waitAcked(t, m)
	}
	stop()

	progress, statuses, rejected := st.snapshot()
	var stored []string
	for _, p := range progress {
		stored = append(stored, fmt.Sprintf("%s:%d", p.Device, p.P.Progress))
	}
	for _, s := range statuses {
		stored = append(stored, s.Device+":"+s.St["app_ver"])
	}
	if want := []string{dev + ":1", dev + ":100", "sensor-2:2.0", dev + ":1.1"}; !reflect.DeepEqual(stored, want) {
		t.Errorf("stored %v, want %v", stored, want)
	}
	var reasons []string
	for _, r := range rejected {
		reasons = append(reasons, r.DeviceID+": "+r.Reason)
	}
	want := []string{dev + ": malformed JSON", dev + ": devices do not publish on ota/command topics",
		"ghost: " + ReasonUnknownDevice, "ghost: " + ReasonUnknownDevice}
	if len(reasons) != len(want) {
		t.Fatalf("rejected %v, want %v", reasons, want)
	}
	for i := range want {
		device, reason, _ := strings.Cut(want[i], ": ")
		if !strings.HasPrefix(reasons[i], device+": ") || !strings.Contains(reasons[i], reason) {
			t.Errorf("rejection %d: %q, want %q", i, reasons[i], want[i])
		}
	}
	if got := st.batches; len(got) < 2 || got[1] < 5 {
		t.Errorf("batch sizes %v: the queued messages were not taken as one batch", got)
	}
	if got := len(sig.sent()); got != 4 { // progress 1 and 100, two status reports
		t.Errorf("%d signals, want 4", got)
	}
	for _, m := range append(msgs, first) {
		if m.acks.Load() != 1 {
			t.Errorf("message on %s acknowledged %d times", m.topic, m.acks.Load())
		}
	}
	want2 := Stats{Received: 9, Rejected: 4, Stored: 4, Signalled: 4, Ignored: 1, Acked: 9}
	if s := b.Stats(); s != want2 {
		t.Errorf("stats %+v\nwant  %+v", s, want2)
	}
}

// TestSignalOrderWithinBatches checks that, while different devices of a batch are
// signalled concurrently, each device's signals keep the order of its messages.
func TestSignalOrderWithinBatches(t *testing.T) {
	devices := []string{"d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"}
	var ids []string
	for _, d := range devices {
		ids = append(ids, ota.DeviceWorkflowID(d))
	}
	st := newFakeStore(t, devices...)
	sig := newFakeSignaler(ids...)
	cfg := testConfig(newFakeClock())
	cfg.Shards, cfg.QueueSize, cfg.BatchSize = 2, 64, 32
	b, stop := startTest(t, cfg, sig, st)
	var msgs []*fakeMessage
	for v := 1; v <= 50; v++ {
		for _, d := range devices {
			m := newMessage(protocol.StatusTopic(d), fmt.Sprintf(`{"app_ver":"1.%d"}`, v))
			msgs = append(msgs, m)
			b.deliver(m)
		}
	}
	for _, m := range msgs {
		waitAcked(t, m)
	}
	stop()
	next := map[string]int{}
	for _, s := range sig.sent() {
		next[s.WorkflowID]++
		if got, want := s.Arg.(ota.StatusSignal).Status["app_ver"], fmt.Sprintf("1.%d", next[s.WorkflowID]); got != want {
			t.Fatalf("%s: signal %d carries %s, want %s", s.WorkflowID, next[s.WorkflowID], got, want)
		}
	}
	for _, id := range ids {
		if next[id] != 50 {
			t.Errorf("%s: %d signals, want 50", id, next[id])
		}
	}
}

// TestCoalescingThroughBridge checks that every progress report is stored while only the
// coalesced selection is signalled.
func TestCoalescingThroughBridge(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	sig := newFakeSignaler(ota.DeviceWorkflowID(dev))
	cfg := testConfig(clock)
	cfg.ProgressInterval = time.Minute
	b, stop := startTest(t, cfg, sig, st)
	send := func(progress int) {
		m := newMessage(protocol.ProgressTopic(dev), fmt.Sprintf(`{"id":"c1","type":"app","version":"1.1","progress":%d}`, progress))
		b.deliver(m)
		waitAcked(t, m)
		clock.Advance(time.Second)
	}
	for p := 1; p <= 100; p++ {
		send(p)
	}
	stop()
	progress, _, _ := st.snapshot()
	if len(progress) != 100 {
		t.Errorf("stored %d progress reports, want 100", len(progress))
	}
	var got []int
	for _, s := range sig.sent() {
		got = append(got, s.Arg.(ota.ProgressSignal).Progress.Progress)
	}
	// 1 starts the attempt; one a minute later (61); 100 ends it.
	if want := []int{1, 61, 100}; !reflect.DeepEqual(got, want) {
		t.Errorf("signalled progress %v, want %v", got, want)
	}
	if s := b.Stats(); s.Coalesced != 97 || s.Stored != 100 {
		t.Errorf("stats %+v", s)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"broker URL", Config{BrokerURL: "tcp://u:p@localhost:1883"}, true},
		{"bad scheme", Config{BrokerURL: "http://localhost:1883"}, false},
		{"no host", Config{BrokerURL: "tcp://"}, false},
		{"negative step", Config{ProgressStep: -1}, false},
		{"step over 100", Config{ProgressStep: 101}, false},
		{"negative interval", Config{ProgressInterval: -time.Second}, false},
		{"negative shards", Config{Shards: -1}, false},
		{"retry min over max", Config{RetryMin: time.Minute, RetryMax: time.Second}, false},
		{"batch of one", Config{BatchSize: 1}, true},
		{"negative batch size", Config{BatchSize: -1}, false},
		{"huge batch size", Config{BatchSize: 10001}, false},
		{"one signal at a time", Config{SignalConcurrency: 1}, true},
		{"negative signal concurrency", Config{SignalConcurrency: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, newFakeSignaler(), newFakeStore(t))
			if (err == nil) != tt.ok {
				t.Errorf("New: %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if _, err := New(Config{}, nil, newFakeStore(t)); err == nil {
		t.Error("New without a signaler succeeded")
	}
}

func TestNewTakesCredentialsFromURL(t *testing.T) {
	b, err := New(Config{BrokerURL: "tcp://otaflow-bridge:s3cret@localhost:1883"}, newFakeSignaler(), newFakeStore(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.opts.Username != "otaflow-bridge" || b.opts.Password != "s3cret" {
		t.Errorf("username %q password %q", b.opts.Username, b.opts.Password)
	}
	if len(b.opts.Servers) != 1 || b.opts.Servers[0].User != nil {
		t.Errorf("servers %v still carry credentials", b.opts.Servers)
	}
	if b.opts.CleanSession || !b.opts.AutoReconnect || !b.opts.AutoAckDisabled || !b.opts.Order || b.opts.ClientID != DefaultClientID {
		t.Errorf("options: clean %v reconnect %v autoAckDisabled %v order %v client %q",
			b.opts.CleanSession, b.opts.AutoReconnect, b.opts.AutoAckDisabled, b.opts.Order, b.opts.ClientID)
	}
	b, err = New(Config{BrokerURL: "tcp://a:b@localhost:1883", Username: "x", Password: "y"}, newFakeSignaler(), newFakeStore(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.opts.Username != "x" || b.opts.Password != "y" {
		t.Errorf("Config credentials not preferred: %q %q", b.opts.Username, b.opts.Password)
	}
}

func TestFilters(t *testing.T) {
	if got, want := Filters(false), []string{protocol.ProgressFilter, protocol.StatusFilter}; !reflect.DeepEqual(got, want) {
		t.Errorf("Filters(false) = %v", got)
	}
	if got, want := Filters(true), []string{protocol.SharedFilter(protocol.ProgressFilter), protocol.SharedFilter(protocol.StatusFilter)}; !reflect.DeepEqual(got, want) {
		t.Errorf("Filters(true) = %v", got)
	}
}
