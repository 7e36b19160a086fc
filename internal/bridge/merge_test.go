package bridge

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// mergeStep is one step of TestProgressMerge, at after since the previous one: a progress
// report (id, progress), a status report (status set), or the end of windows checked (flush).
type mergeStep struct {
	after    time.Duration
	device   string
	id       string
	progress int
	status   protocol.Status
	flush    bool
}

func prog(after time.Duration, device, id string, progress int) mergeStep {
	return mergeStep{after: after, device: device, id: id, progress: progress}
}

func stat(after time.Duration, device string, kv ...string) mergeStep {
	st := protocol.Status{}
	for i := 0; i+1 < len(kv); i += 2 {
		st[kv[i]] = kv[i+1]
	}
	return mergeStep{after: after, device: device, status: st}
}

func flushAt(after time.Duration) mergeStep { return mergeStep{after: after, flush: true} }

// describe names a sent signal: "a c1 45" for progress, "a status firmware_ver=1.1".
func describe(s sentSignal) string {
	device := strings.TrimPrefix(s.WorkflowID, ota.DeviceWorkflowID(""))
	switch a := s.Arg.(type) {
	case ota.ProgressSignal:
		return fmt.Sprintf("%s %s %d", device, a.Progress.ID, a.Progress.Progress)
	case ota.StatusSignal:
		var kv []string
		for k, v := range a.Status {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		return device + " status " + strings.Join(kv, ",")
	}
	return fmt.Sprintf("%s %v", device, s.Arg)
}

// TestProgressMerge drives one shard worker's forwarding by hand, with a fake clock: which
// reports are signalled, in which order, and which the merge window makes moot.
func TestProgressMerge(t *testing.T) {
	const a, b = "a", "b"
	s := time.Second
	tests := []struct {
		name          string
		merge         time.Duration // 0: the default
		steps         []mergeStep
		want          []string
		wantCoalesced int64
	}{
		{"first report and 100 within the window: one signal, 100", 0, []mergeStep{
			prog(0, a, "c1", 1), prog(s, a, "c1", 45), prog(s, a, "c1", 100), flushAt(3 * s),
		}, []string{"a c1 100"}, 2},
		{"the window's end signals the held report", 0, []mergeStep{
			prog(0, a, "c1", 1), flushAt(4 * s), prog(s/2, a, "c1", 2), flushAt(s / 2),
			prog(s, a, "c1", 50), // intermediate: not forwarded
			prog(s, a, "c1", 100), flushAt(4 * s), flushAt(s),
		}, []string{"a c1 2", "a c1 100"}, 2},
		{"an error code is signalled at once and drops the held report", 0, []mergeStep{
			prog(0, a, "c1", 1), prog(s, a, "c1", protocol.CodeDownloadFailed), flushAt(10 * s),
		}, []string{"a c1 -1"}, 1},
		{"a status with the held report's version drops it", 0, []mergeStep{
			prog(0, a, "c1", 100), stat(s, a, "firmware_ver", "1.1", "app_ver", "3.0"), flushAt(10 * s),
		}, []string{"a status app_ver=3.0,firmware_ver=1.1"}, 1},
		{"a status with another version has the held report signalled first", 0, []mergeStep{
			prog(0, a, "c1", 100), stat(s, a, "firmware_ver", "1.0"), flushAt(10 * s),
		}, []string{"a c1 100", "a status firmware_ver=1.0"}, 0},
		{"a status without the type's key has the held report signalled first", 0, []mergeStep{
			prog(0, a, "c1", 30), stat(s, a, "app_ver", "1.1"),
		}, []string{"a c1 30", "a status app_ver=1.1"}, 0},
		{"a status without a held report is signalled alone", 0, []mergeStep{
			prog(0, a, "c1", 1), flushAt(5 * s), stat(s, a, "firmware_ver", "1.1"),
		}, []string{"a c1 1", "a status firmware_ver=1.1"}, 0},
		{"a new attempt within the window replaces the old one's report", 0, []mergeStep{
			prog(0, a, "c1", 100), prog(s, a, "c2", 1), flushAt(4 * s),
		}, []string{"a c2 1"}, 1},
		{"devices have windows of their own", 0, []mergeStep{
			prog(0, a, "c1", 1), prog(2*s, b, "c9", 1), stat(s, b, "firmware_ver", "1.1"), flushAt(2 * s), prog(0, b, "c9", 100), flushAt(5 * s),
		}, []string{"b status firmware_ver=1.1", "a c1 1", "b c9 100"}, 1},
		{"a longer window", 10 * s, []mergeStep{
			prog(0, a, "c1", 1), flushAt(9 * s), prog(0, a, "c1", 100), flushAt(s),
		}, []string{"a c1 100"}, 1},
		{"merge window off: forwarded at once, as without it", -1, []mergeStep{
			prog(0, a, "c1", 1), prog(s, a, "c1", 45), prog(s, a, "c1", 100), stat(s, a, "firmware_ver", "1.1"),
		}, []string{"a c1 1", "a c1 100", "a status firmware_ver=1.1"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			sig := newFakeSignaler(ota.DeviceWorkflowID(a), ota.DeviceWorkflowID(b))
			cfg := testConfig(clock)
			cfg.ProgressMerge = tt.merge
			br, err := New(cfg, sig, newFakeStore(t, a, b))
			if err != nil {
				t.Fatal(err)
			}
			w := br.newWorker(0, context.Background(), context.Background())
			var got []string
			for i, st := range tt.steps {
				clock.Advance(st.after)
				if st.flush {
					w.flushHeld(false)
					continue
				}
				it := &item{device: st.device, in: inbound{at: clock.Now()}}
				if st.status != nil {
					it.isStatus, it.status = true, st.status
				} else {
					it.progress = protocol.Progress{ID: st.id, Type: "firmware", Version: "1.1", Progress: st.progress}
				}
				if err := w.forward(it); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			for _, s := range sig.sent() {
				got = append(got, describe(s))
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("signals\n%q\nwant\n%q", got, tt.want)
			}
			if c := br.Stats().Coalesced; c != tt.wantCoalesced {
				t.Errorf("coalesced %d, want %d", c, tt.wantCoalesced)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			if h := w.coalescer.held; len(h) != 0 && tt.steps[len(tt.steps)-1].flush {
				t.Errorf("still held after the last window: %+v", h)
			}
		})
	}
}

// TestProgressMergeThroughBridge runs the merge window in the shard workers: the held report
// is acknowledged once stored, signalled when its window ends (the worker woken with the
// fake clock past it), and what is held when the bridge stops is signalled then.
func TestProgressMergeThroughBridge(t *testing.T) {
	clock := newFakeClock()
	st := newFakeStore(t, dev)
	sig := newFakeSignaler(ota.DeviceWorkflowID(dev))
	cfg := testConfig(clock)
	cfg.ProgressMerge = DefaultProgressMerge
	b, stop := startTest(t, cfg, sig, st)
	send := func(progress int) {
		m := newMessage(protocol.ProgressTopic(dev), fmt.Sprintf(`{"id":"c1","type":"app","version":"1.1","progress":%d}`, progress))
		b.deliver(m)
		waitAcked(t, m)
	}
	send(1)
	clock.Advance(time.Second)
	send(100)
	if n := len(sig.sent()); n != 0 {
		t.Fatalf("%d signals within the window, want none yet", n)
	}
	clock.Advance(DefaultProgressMerge)
	b.flushDue()
	require.Eventually(t, func() bool { return len(sig.sent()) == 1 }, 5*time.Second, time.Millisecond, "the held report signalled")
	if got := sig.sent()[0].Arg.(ota.ProgressSignal); got.Progress.Progress != 100 || !got.ReceivedAt.Equal(clock.Now().Add(-DefaultProgressMerge)) {
		t.Errorf("signalled %+v, want 100 as received", got)
	}

	send(1) // a new attempt's first report, held when the bridge stops
	stop()
	if n := len(sig.sent()); n != 2 {
		t.Errorf("%d signals after the stop, want 2 (the report held then signalled)", n)
	}
	if s := b.Stats(); s.Coalesced != 1 || s.Stored != 3 || s.Signalled != 2 || s.Acked != 3 {
		t.Errorf("stats %+v", s)
	}
}

// TestProgressMergeKeepsOrder sends, for many devices at once, 100 then a status with the
// old version (the install did not take): whatever the batches, each device's workflow
// gets the 100 first.
func TestProgressMergeKeepsOrder(t *testing.T) {
	var devices, ids []string
	for i := range 16 {
		devices = append(devices, fmt.Sprintf("d%d", i))
		ids = append(ids, ota.DeviceWorkflowID(devices[i]))
	}
	st := newFakeStore(t, devices...)
	sig := newFakeSignaler(ids...)
	cfg := testConfig(newFakeClock())
	cfg.Shards, cfg.QueueSize, cfg.BatchSize, cfg.ProgressMerge = 2, 64, 32, DefaultProgressMerge
	b, stop := startTest(t, cfg, sig, st)
	var msgs []*fakeMessage
	for round := range 3 {
		for _, d := range devices {
			p := newMessage(protocol.ProgressTopic(d), fmt.Sprintf(`{"id":"c%d","type":"app","version":"2.0","progress":100}`, round))
			s := newMessage(protocol.StatusTopic(d), `{"app_ver":"1.0"}`)
			msgs = append(msgs, p, s)
			b.deliver(p)
			b.deliver(s)
		}
	}
	for _, m := range msgs {
		waitAcked(t, m)
	}
	stop()
	got := map[string][]string{}
	for _, s := range sig.sent() {
		got[s.WorkflowID] = append(got[s.WorkflowID], describe(s))
	}
	for _, d := range devices {
		want := []string{d + " c0 100", d + " status app_ver=1.0", d + " c1 100", d + " status app_ver=1.0", d + " c2 100", d + " status app_ver=1.0"}
		if !reflect.DeepEqual(got[ota.DeviceWorkflowID(d)], want) {
			t.Errorf("%s: signals %q, want %q", d, got[ota.DeviceWorkflowID(d)], want)
		}
	}
}
