package bridge

import (
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// pendingIDs tracks the packet IDs of the QoS 1 messages taken from the current connection
// and not acknowledged yet. A broker may not give a new message the packet ID of one the
// client has not acknowledged, so a message arriving with a pending ID is the broker sending
// that message again (MQTT 3.1.1, 4.3.2). mochi v2.7.9 does that when a message reaches a
// reconnecting client's session between the takeover and the resending of the session's
// messages: it queues the message for writing and resends it as well. Processing the second
// copy would store the report twice; the first copy's acknowledgement covers both.
//
// paho drops the acknowledgements of a connection's messages once that connection is gone,
// and the broker resends those messages on the next one, where they must be processed: each
// connection starts with no pending ID.
type pendingIDs struct {
	mu   sync.Mutex
	conn uint64              // counts connection attempts
	ids  map[uint16]struct{} // taken from connection conn and not acknowledged
}

// newConnection forgets the previous connection's IDs. paho calls it (as its connection
// attempt handler) before each connection attempt, after it has handed over every message of
// the previous connection.
func (p *pendingIDs) newConnection() {
	p.mu.Lock()
	p.conn++
	p.ids = nil
	p.mu.Unlock()
}

// take records a message's packet ID as pending. It returns the connection the message came
// from, and false when the ID was pending already.
func (p *pendingIDs) take(id uint16) (conn uint64, first bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.ids[id]; dup {
		return p.conn, false
	}
	if p.ids == nil {
		p.ids = make(map[uint16]struct{})
	}
	p.ids[id] = struct{}{}
	return p.conn, true
}

// release forgets a pending ID of connection conn; it must be called before the message is
// acknowledged, after which the broker may reuse the ID.
func (p *pendingIDs) release(conn uint64, id uint16) {
	p.mu.Lock()
	if p.conn == conn {
		delete(p.ids, id)
	}
	p.mu.Unlock()
}

// count is how many IDs are pending.
func (p *pendingIDs) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ids)
}

// pendingMessage is a message whose packet ID is pending until it is acknowledged.
type pendingMessage struct {
	mqtt.Message
	pending *pendingIDs
	conn    uint64
}

// Ack releases the message's packet ID and acknowledges it.
func (m pendingMessage) Ack() {
	m.pending.release(m.conn, m.MessageID())
	m.Message.Ack()
}

// receive is the MQTT client's message handler: it passes every message on to admit (the
// flood limit, then its shard), except a copy of a message still being processed.
func (b *Bridge) receive(m mqtt.Message) {
	if m.Qos() == 0 {
		b.admit(m)
		return
	}
	conn, first := b.pending.take(m.MessageID())
	if !first {
		b.stats.received.Add(1)
		b.stats.duplicates.Add(1)
		b.log.Debug("message sent again while its first copy is processed; not processed twice",
			"topic", safeText(m.Topic(), 200), "packet_id", m.MessageID())
		return
	}
	b.admit(pendingMessage{Message: m, pending: &b.pending, conn: conn})
}
