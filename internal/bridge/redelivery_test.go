package bridge

import (
	"fmt"
	"slices"
	"testing"

	"github.com/otaflow/otaflow/internal/protocol"
)

// fakeMQTTMessage is a fakeMessage as paho delivers it, with a packet ID.
type fakeMQTTMessage struct {
	*fakeMessage
	id  uint16
	dup bool
}

func (m fakeMQTTMessage) Duplicate() bool   { return m.dup }
func (m fakeMQTTMessage) Qos() byte         { return 1 }
func (m fakeMQTTMessage) MessageID() uint16 { return m.id }

func mqttMessage(id uint16, progress int, dup bool) fakeMQTTMessage {
	payload := fmt.Sprintf(`{"type":"app","version":"1.1","progress":%d}`, progress)
	return fakeMQTTMessage{fakeMessage: newMessage(protocol.ProgressTopic(dev), payload), id: id, dup: dup}
}

// TestSecondCopyOfPendingMessage checks that a message the broker sends again, on the same
// connection, while the first copy is being processed is not processed twice, and that
// packet IDs are free again once acknowledged or once the connection changed.
func TestSecondCopyOfPendingMessage(t *testing.T) {
	st := newFakeStore(t, dev)
	st.gate = make(chan struct{})
	st.entered = make(chan struct{}, 10)
	b, stop := startTest(t, testConfig(newFakeClock()), newFakeSignaler(), st)
	b.pending.newConnection()

	first := mqttMessage(5, 10, false)
	b.receive(first)
	<-st.entered // the worker holds the first copy
	again := mqttMessage(5, 10, true)
	b.receive(again)
	if s := b.Stats(); s.Received != 2 || s.Duplicates != 1 {
		t.Errorf("after a second copy: %+v, want 2 received and 1 duplicate", s)
	}
	close(st.gate)
	waitAcked(t, first.fakeMessage)

	// Once acknowledged, the broker may give the ID to a new message.
	reused := mqttMessage(5, 20, false)
	b.receive(reused)
	waitAcked(t, reused.fakeMessage)

	// A message taken from a connection that has ended is resent on the next one, where it
	// must be processed again (paho does not send the first copy's acknowledgement there).
	st.gate = make(chan struct{})
	old := mqttMessage(9, 30, false)
	b.receive(old)
	<-st.entered
	b.pending.newConnection()
	resent := mqttMessage(9, 30, true)
	b.receive(resent)
	close(st.gate)
	waitAcked(t, old.fakeMessage)
	waitAcked(t, resent.fakeMessage)
	// The old copy's acknowledgement does not free the ID on the new connection before the
	// new copy is acknowledged: it was, so a new message with the ID is processed.
	next := mqttMessage(9, 40, false)
	b.receive(next)
	waitAcked(t, next.fakeMessage)
	stop()

	if again.acks.Load() != 0 {
		t.Error("the second copy was acknowledged on its own")
	}
	progress, _, _ := st.snapshot()
	var got []int
	for _, p := range progress {
		got = append(got, p.P.Progress)
	}
	if want := []int{10, 20, 30, 30, 40}; !slices.Equal(got, want) {
		t.Errorf("stored progress %v, want %v", got, want)
	}
	if s := b.Stats(); s.Duplicates != 1 || s.Received != 6 || s.Acked != 5 {
		t.Errorf("stats %+v, want 6 received, 1 duplicate, 5 acked", s)
	}
}

// TestPendingIDs checks the bookkeeping of packet IDs across acknowledgements and connections.
func TestPendingIDs(t *testing.T) {
	var p pendingIDs
	p.newConnection()
	c1, ok := p.take(1)
	if !ok {
		t.Fatal("first take of ID 1 refused")
	}
	if _, ok := p.take(1); ok {
		t.Error("ID 1 taken twice while pending")
	}
	if _, ok := p.take(2); !ok {
		t.Error("ID 2 refused")
	}
	p.release(c1, 1)
	if _, ok := p.take(1); !ok {
		t.Error("ID 1 refused after its release")
	}
	p.newConnection()
	c2, ok := p.take(1)
	if !ok || c2 == c1 {
		t.Errorf("ID 1 on a new connection: ok %v, connection %d after %d", ok, c2, c1)
	}
	p.release(c1, 1) // the old connection's acknowledgement
	if _, ok := p.take(1); ok {
		t.Error("an old connection's release freed the ID on the new connection")
	}
	p.release(c2, 1)
	if _, ok := p.take(1); !ok {
		t.Error("ID 1 refused after its release on the new connection")
	}
}
