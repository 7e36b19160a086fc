package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// floodConfig is testConfig with a small flood limit: rate per second, burst.
func floodConfig(clock *fakeClock, rate float64, burst int) Config {
	cfg := testConfig(clock)
	cfg.Flood = FloodConfig{Rate: rate, Burst: burst, Interval: time.Hour}
	return cfg
}

func progressMsg(device, id string, n int) *fakeMessage {
	return newMessage(protocol.ProgressTopic(device), fmt.Sprintf(`{"id":%q,"type":"firmware","version":"1.1","progress":%d}`, id, n))
}

func statusMsg(device, version string) *fakeMessage {
	return newMessage(protocol.StatusTopic(device), fmt.Sprintf(`{"firmware_ver":%q}`, version))
}

// waitAll waits until every message is acknowledged.
func waitAll(t *testing.T, msgs []*fakeMessage) {
	t.Helper()
	for _, m := range msgs {
		waitAcked(t, m)
	}
}

// storedProgress lists a device's stored progress values, in order.
func progressStored(st *fakeStore, device string) []int {
	progress, _, _ := st.snapshot()
	var out []int
	for _, p := range progress {
		if p.Device == device {
			out = append(out, p.P.Progress)
		}
	}
	return out
}

// TestFloodShedsProgressBeyondBudget: a device's progress reports beyond its burst are shed
// (acknowledged, counted, not stored) until its rate refills its budget; another device's
// reports are not touched.
func TestFloodShedsProgressBeyondBudget(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev, "other")
	b, stop := startTest(t, floodConfig(clock, 2, 5), newFakeSignaler(), st)
	var msgs []*fakeMessage
	send := func(m *fakeMessage) {
		msgs = append(msgs, m)
		b.admit(m)
	}
	for i := 1; i <= 20; i++ {
		send(progressMsg(dev, "c1", i))
	}
	for i := 1; i <= 5; i++ {
		send(progressMsg("other", "c9", i))
	}
	clock.Advance(time.Second) // two more
	for i := 21; i <= 25; i++ {
		send(progressMsg(dev, "c1", i))
	}
	waitAll(t, msgs)
	stop()

	if got, want := progressStored(st, dev), []int{1, 2, 3, 4, 5, 21, 22}; !slices.Equal(got, want) {
		t.Errorf("stored %v, want %v", got, want)
	}
	if got := progressStored(st, "other"); len(got) != 5 {
		t.Errorf("the other device: stored %v, want all 5", got)
	}
	if got, want := b.ShedCounts(), []ShedTotal{{Device: dev, Reason: ShedProgress, Count: 18}}; !reflect.DeepEqual(got, want) {
		t.Errorf("shed counts %+v, want %+v", got, want)
	}
	if s := b.Stats(); s.Received != 30 || s.Shed != 18 || s.Stored != 12 || s.Acked != 30 || s.Unfinished != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestFloodKeepsWhatUpgradesActOn: beyond the budget, error codes and progress 100 go through
// (an exact repeat of the last one is shed), a status report waits and the latest one wins,
// and a waiting status goes before the device's next report: signals keep the device's order.
func TestFloodKeepsWhatUpgradesActOn(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	sig := newFakeSignaler(ota.DeviceWorkflowID(dev))
	b, stop := startTest(t, floodConfig(clock, 1, 2), sig, st)
	errMsg := func(code int, desc string) *fakeMessage {
		return newMessage(protocol.ProgressTopic(dev), fmt.Sprintf(`{"id":"c1","type":"firmware","version":"1.1","progress":%d,"desc":%q}`, code, desc))
	}
	steps := []struct {
		m     *fakeMessage
		acked bool // acknowledged at once (stored or shed), not waiting
	}{
		{progressMsg(dev, "c1", 1), true},
		{progressMsg(dev, "c1", 2), true},           // the budget is spent
		{progressMsg(dev, "c1", 3), true},           // shed
		{errMsg(-1, "download failed"), true},       // stored
		{errMsg(-1, "download failed"), true},       // a repeat: shed
		{errMsg(-1, "download failed again"), true}, // not a repeat: stored
		{progressMsg(dev, "c2", 100), true},         // stored
		{progressMsg(dev, "c2", 100), true},         // a repeat: shed
		{statusMsg(dev, "1.0"), false},              // waits
		{statusMsg(dev, "1.1"), false},              // waits; the 1.0 one is superseded
		{progressMsg(dev, "c2", 50), true},          // shed: the budget is spent
		{errMsg(-3, "install failed"), true},        // the waiting status first, then this
	}
	for _, s := range steps {
		b.admit(s.m)
	}
	for i, s := range steps {
		if s.acked {
			waitAcked(t, s.m)
		} else if i == 8 {
			waitAcked(t, s.m) // superseded
		}
	}
	waitAcked(t, steps[9].m)
	stop()

	var got []string
	for _, s := range sig.sent() {
		switch a := s.Arg.(type) {
		case ota.ProgressSignal:
			got = append(got, fmt.Sprintf("%d", a.Progress.Progress))
		case ota.StatusSignal:
			got = append(got, "status "+a.Status["firmware_ver"])
		}
	}
	// The coalescer forwards the first report of an attempt, errors and 100.
	if want := []string{"1", "-1", "-1", "100", "status 1.1", "-3"}; !slices.Equal(got, want) {
		t.Errorf("signals %v, want %v", got, want)
	}
	if got, want := progressStored(st, dev), []int{1, 2, -1, -1, 100, -3}; !slices.Equal(got, want) {
		t.Errorf("stored progress %v, want %v", got, want)
	}
	want := []ShedTotal{{dev, ShedProgress, 2}, {dev, ShedRepeat, 2}, {dev, ShedSuperseded, 1}}
	if got := b.ShedCounts(); !reflect.DeepEqual(got, want) {
		t.Errorf("shed counts %+v, want %+v", got, want)
	}
	if s := b.Stats(); s.Received != int64(len(steps)) || s.Acked != int64(len(steps)) || s.Shed != 5 || s.Delayed != 2 {
		t.Errorf("stats %+v", s)
	}
	// The metrics say the same, by reason.
	wantMetrics := `
# HELP otaflow_bridge_reports_shed_total Reports over their device's flood budget acknowledged without being stored, by reason (progress, repeat, invalid, superseded_status).
# TYPE otaflow_bridge_reports_shed_total counter
otaflow_bridge_reports_shed_total{reason="invalid"} 0
otaflow_bridge_reports_shed_total{reason="progress"} 2
otaflow_bridge_reports_shed_total{reason="repeat"} 2
otaflow_bridge_reports_shed_total{reason="superseded_status"} 1
# HELP otaflow_bridge_status_delayed_total Status reports that waited for their device's flood budget (stored later, or superseded by a newer one).
# TYPE otaflow_bridge_status_delayed_total counter
otaflow_bridge_status_delayed_total 2
`
	if err := testutil.CollectAndCompare(b.Collector(), strings.NewReader(wantMetrics),
		"otaflow_bridge_reports_shed_total", "otaflow_bridge_status_delayed_total"); err != nil {
		t.Error(err)
	}
}

// TestFloodStatusWaitsForBudget: a status report beyond the budget waits, unacknowledged,
// until the device's rate gives it room, and is then stored with the time it was received.
func TestFloodStatusWaitsForBudget(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	b, stop := startTest(t, floodConfig(clock, 1, 1), newFakeSignaler(), st)
	s1, s2 := statusMsg(dev, "1.0"), statusMsg(dev, "1.1")
	b.admit(s1)
	waitAcked(t, s1)
	received := clock.Now()
	b.admit(s2)
	// Without budget the status waits, however often the limit looks.
	for range 3 {
		b.flood.releaseWaiting()
	}
	if s2.acks.Load() != 0 {
		t.Fatal("a status report beyond the budget was acknowledged before it was stored")
	}
	clock.Advance(time.Second)
	waitAcked(t, s2)
	stop()
	_, statuses, _ := st.snapshot()
	if len(statuses) != 2 || statuses[1].St["firmware_ver"] != "1.1" || !statuses[1].At.Equal(received) {
		t.Errorf("statuses %+v, want 1.0 then 1.1 received at %s", statuses, received)
	}
	if s := b.Stats(); s.Delayed != 1 || s.Shed != 0 || s.Stored != 2 {
		t.Errorf("stats %+v", s)
	}
}

// TestFloodStopLeavesWaitingStatus: a status still waiting when the bridge stops is left
// unacknowledged, for the broker to deliver again: never lost.
func TestFloodStopLeavesWaitingStatus(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	b, stop := startTest(t, floodConfig(clock, 1, 1), newFakeSignaler(), st)
	s1, s2 := statusMsg(dev, "1.0"), statusMsg(dev, "1.1")
	b.admit(s1)
	b.admit(s2)
	waitAcked(t, s1)
	stop()
	if s2.acks.Load() != 0 {
		t.Error("the waiting status was acknowledged at stop")
	}
	if s := b.Stats(); s.Unfinished != 1 || s.Received != 2 || s.Acked != 1 {
		t.Errorf("stats %+v", s)
	}
	// And a message after the stop is not taken.
	late := progressMsg(dev, "c1", 1)
	b.admit(late)
	if late.acks.Load() != 0 || b.Stats().Unfinished != 2 {
		t.Errorf("a message after the stop: acked %d, stats %+v", late.acks.Load(), b.Stats())
	}
}

// TestFloodInvalidBeyondBudget: the messages of a device that would be rejected are stored as
// rejected within its budget, and only counted beyond it.
func TestFloodInvalidBeyondBudget(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	b, stop := startTest(t, floodConfig(clock, 1, 3), newFakeSignaler(), st)
	var msgs []*fakeMessage
	for range 10 {
		m := newMessage(protocol.ProgressTopic(dev), `{"progress":`)
		msgs = append(msgs, m)
		b.admit(m)
	}
	waitAll(t, msgs)
	stop()
	if _, _, rejected := st.snapshot(); len(rejected) != 3 {
		t.Errorf("%d rejected messages stored, want 3", len(rejected))
	}
	if got, want := b.ShedCounts(), []ShedTotal{{dev, ShedInvalid, 7}}; !reflect.DeepEqual(got, want) {
		t.Errorf("shed counts %+v, want %+v", got, want)
	}
}

func TestFloodOff(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	cfg := testConfig(clock)
	cfg.Flood.Off = true
	b, stop := startTest(t, cfg, newFakeSignaler(), st)
	var msgs []*fakeMessage
	for i := range 300 {
		m := progressMsg(dev, "c1", 1+i%99)
		msgs = append(msgs, m)
		b.admit(m)
	}
	waitAll(t, msgs)
	stop()
	if n := len(progressStored(st, dev)); n != 300 || b.Stats().Shed != 0 || b.ShedCounts() != nil {
		t.Errorf("stored %d of 300 with the limit off, stats %+v", n, b.Stats())
	}
}

// shedStore is a fakeStore that also records shed counts, failing the first write when told.
type shedStore struct {
	*fakeStore
	mu      sync.Mutex
	writes  [][]store.ShedCount
	failOne bool
}

func (s *shedStore) RecordShed(_ context.Context, counts []store.ShedCount) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failOne {
		s.failOne = false
		return errTransient
	}
	s.writes = append(s.writes, slices.Clone(counts))
	return nil
}

func (s *shedStore) written() [][]store.ShedCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.writes)
}

// TestFloodCountsWrittenOncePerInterval: the shed counts are logged once per interval and
// written as one row per device, reason and interval; a failed write is tried again at the
// next interval, and what is left is written when the bridge stops.
func TestFloodCountsWrittenOncePerInterval(t *testing.T) {
	clock := newFakeClock()
	st := &shedStore{fakeStore: newFakeStore(t, dev, "other"), failOne: true}
	var logs testenv.Buffer
	cfg := floodConfig(clock, 1, 1)
	cfg.Flood.Interval = time.Second // real time: the flush runs on a ticker
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, stop := startTest(t, cfg, newFakeSignaler(), st)
	flood := func(device string, n int) {
		var msgs []*fakeMessage
		for i := range n {
			m := progressMsg(device, "c1", 1+i%99)
			msgs = append(msgs, m)
			b.admit(m)
		}
		waitAll(t, msgs)
	}
	flood(dev, 50)    // 49 shed in this interval
	flood("other", 4) // 3
	// The first write fails; the next interval's carries the counts again.
	deadline := time.Now().Add(10 * time.Second)
	for len(st.written()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no shed counts written")
		}
		time.Sleep(50 * time.Millisecond)
	}
	w := st.written()[0]
	period := clock.Now().Truncate(time.Second)
	want := []store.ShedCount{
		{DeviceID: dev, Reason: ShedProgress, PeriodStart: period, Count: 49, FirstAt: clock.Now(), LastAt: clock.Now()},
		{DeviceID: "other", Reason: ShedProgress, PeriodStart: period, Count: 3, FirstAt: clock.Now(), LastAt: clock.Now()},
	}
	if !reflect.DeepEqual(w, want) {
		t.Errorf("written %+v\nwant    %+v", w, want)
	}
	clock.Advance(time.Minute) // a new interval
	flood(dev, 2)              // the budget holds one again: one stored, one shed
	stop()
	writes := st.written()
	if last := writes[len(writes)-1]; len(last) != 1 || last[0].Count != 1 || !last[0].PeriodStart.Equal(clock.Now().Truncate(time.Second)) {
		t.Errorf("the counts written at stop: %+v", last)
	}
	if n := strings.Count(logs.String(), "device="+dev+" reason=progress count=49"); n != 1 {
		t.Errorf("the interval's count of %s logged %d times, want once:\n%s", dev, n, logs.String())
	}
	if !strings.Contains(logs.String(), "trying again at the next interval") {
		t.Errorf("the failed write was not logged:\n%s", logs.String())
	}
}

func TestFloodConfigValidated(t *testing.T) {
	for _, f := range []FloodConfig{
		{Rate: -1}, {Burst: -2}, {Interval: time.Millisecond}, {Rate: 1e9},
	} {
		if _, err := New(Config{Flood: f}, newFakeSignaler(), newFakeStore(t)); err == nil || !strings.Contains(err.Error(), "flood") {
			t.Errorf("New accepted %+v: %v", f, err)
		}
	}
	if _, err := New(Config{Flood: FloodConfig{Rate: -1, Off: true}}, newFakeSignaler(), newFakeStore(t)); err != nil {
		t.Errorf("an unused budget was checked: %v", err)
	}
}
