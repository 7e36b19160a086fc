package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"go.temporal.io/api/serviceerror"

	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// errTransient stands for a database or Temporal outage.
var errTransient = errors.New("connection refused")

// fakeStore is an in-memory Store. Devices not in devices are unknown. failures makes the
// next calls of an operation fail transiently.
type fakeStore struct {
	mu       sync.Mutex
	devices  map[string]bool
	progress []recordedProgress
	statuses []recordedStatus
	rejected []store.Rejected
	failures map[string]int // "progress", "status", "rejected" -> calls left to fail
	calls    map[string]int
	batches  []int         // size of each batch stored
	gate     chan struct{} // when set, RecordBatch with progress reports waits for it
	entered  chan struct{} // when set, RecordBatch with progress reports signals it has been called
	t        testing.TB
}

type recordedProgress struct {
	Device string
	P      protocol.Progress
	At     time.Time
}

type recordedStatus struct {
	Device string
	St     protocol.Status
	At     time.Time
}

func newFakeStore(t testing.TB, devices ...string) *fakeStore {
	s := &fakeStore{devices: map[string]bool{}, failures: map[string]int{}, calls: map[string]int{}, t: t}
	for _, d := range devices {
		s.devices[d] = true
	}
	return s
}

// fail counts a call of op and fails it while failures are configured for op.
func (s *fakeStore) fail(op string) error {
	s.calls[op]++
	if s.failures[op] != 0 {
		if s.failures[op] > 0 {
			s.failures[op]--
		}
		return fmt.Errorf("%s: %w", op, errTransient)
	}
	return nil
}

// RecordBatch stores the batch unless one of the operations it holds ("progress", "status",
// "rejected") fails; each of them counts one call. It records every batch's size in batches.
func (s *fakeStore) RecordBatch(ctx context.Context, reports []store.Report, rejected []store.Rejected) ([]bool, error) {
	ops := map[string]bool{}
	for _, r := range reports {
		if r.Progress != nil {
			ops["progress"] = true
		} else {
			ops["status"] = true
		}
	}
	if len(rejected) > 0 {
		ops["rejected"] = true
	}
	if ops["progress"] {
		if s.entered != nil {
			s.entered <- struct{}{}
		}
		if s.gate != nil {
			select {
			case <-s.gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var failed error
	for _, op := range []string{"progress", "status", "rejected"} {
		if ops[op] {
			if err := s.fail(op); err != nil && failed == nil {
				failed = err
			}
		}
	}
	if failed != nil {
		return nil, failed
	}
	s.batches = append(s.batches, len(reports)+len(rejected))
	stored := make([]bool, len(reports))
	for i, r := range reports {
		if !s.devices[r.DeviceID] {
			continue
		}
		stored[i] = true
		if r.Progress != nil {
			s.progress = append(s.progress, recordedProgress{r.DeviceID, *r.Progress, r.ReceivedAt})
		} else {
			s.statuses = append(s.statuses, recordedStatus{r.DeviceID, r.Status, r.ReceivedAt})
		}
	}
	for _, r := range rejected {
		// PostgreSQL text columns take valid UTF-8 without NUL only, and payload is NOT NULL.
		for _, v := range []string{r.Topic, r.DeviceID, r.Reason} {
			if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
				s.t.Errorf("RecordBatch got a rejected value PostgreSQL text would refuse: %q", v)
			}
		}
		if r.Payload == nil {
			s.t.Errorf("RecordBatch got a rejected message with a nil payload (NULL)")
		}
		s.rejected = append(s.rejected, r)
	}
	return stored, nil
}

func (s *fakeStore) snapshot() (progress []recordedProgress, statuses []recordedStatus, rejected []store.Rejected) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]recordedProgress(nil), s.progress...), append([]recordedStatus(nil), s.statuses...),
		append([]store.Rejected(nil), s.rejected...)
}

// fakeSignaler records signals. Workflows not in running answer NotFound, like Temporal.
type fakeSignaler struct {
	mu       sync.Mutex
	running  map[string]bool
	signals  []sentSignal
	failures int // calls left to fail transiently; -1 forever
	calls    int
}

type sentSignal struct {
	WorkflowID, RunID, Name string
	Arg                     any
}

func newFakeSignaler(workflowIDs ...string) *fakeSignaler {
	f := &fakeSignaler{running: map[string]bool{}}
	for _, id := range workflowIDs {
		f.running[id] = true
	}
	return f
}

func (f *fakeSignaler) SignalWorkflow(_ context.Context, workflowID, runID, name string, arg any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.failures != 0 {
		if f.failures > 0 {
			f.failures--
		}
		return fmt.Errorf("signal: %w", serviceerror.NewUnavailable("temporal unavailable"))
	}
	if !f.running[workflowID] {
		return serviceerror.NewNotFound("workflow execution not found for workflow ID " + workflowID)
	}
	f.signals = append(f.signals, sentSignal{workflowID, runID, name, arg})
	return nil
}

func (f *fakeSignaler) sent() []sentSignal {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sentSignal(nil), f.signals...)
}

// fakeMessage is a Message whose Ack runs onAck (once) and closes acked.
type fakeMessage struct {
	topic    string
	payload  []byte
	retained bool
	acks     atomic.Int32
	acked    chan struct{}
	onAck    func()
}

func newMessage(topic string, payload string) *fakeMessage {
	return &fakeMessage{topic: topic, payload: []byte(payload), acked: make(chan struct{})}
}

func (m *fakeMessage) Topic() string   { return m.topic }
func (m *fakeMessage) Payload() []byte { return m.payload }
func (m *fakeMessage) Retained() bool  { return m.retained }
func (m *fakeMessage) Ack() {
	if m.acks.Add(1) == 1 {
		if m.onAck != nil {
			m.onAck()
		}
		close(m.acked)
	}
}

// waitAcked fails the test unless m is acknowledged within a few seconds.
func waitAcked(t *testing.T, m *fakeMessage) {
	t.Helper()
	select {
	case <-m.acked:
	case <-time.After(5 * time.Second):
		t.Fatalf("message on %s was not acknowledged", m.topic)
	}
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testConfig is a Config for unit tests: fast retries, silent logs, the given clock, and no
// merge window (forwarded progress is signalled at once; merge_test.go tests the window).
func testConfig(clock *fakeClock) Config {
	return Config{
		Shards: 4, QueueSize: 8, ProgressMerge: -1,
		RetryMin: time.Millisecond, RetryMax: 4 * time.Millisecond,
		AttemptTimeout: 5 * time.Second, ShutdownTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:    clock.Now,
	}
}

// startTest creates a bridge without MQTT and starts its workers; the returned function
// stops it as Run does and waits for the workers.
func startTest(t *testing.T, cfg Config, sig Signaler, st Store) (*Bridge, func()) {
	t.Helper()
	b, err := New(cfg, sig, st)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	workCtx, cancelWork := context.WithCancel(context.Background())
	stopCtx, stop := context.WithCancel(context.Background())
	wait := b.startWorkers(stopCtx, workCtx)
	var once sync.Once
	shutdown := func() {
		once.Do(func() {
			stop()
			close(b.stopping)
			wait()
			cancelWork()
		})
	}
	t.Cleanup(shutdown)
	return b, shutdown
}
