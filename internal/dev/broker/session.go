package broker

import (
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeoverMemory is how long a settled session takeover is remembered, so that a message
// routed to the replaced connection by a publisher that looked the client up just before the
// takeover still reaches the new one. Such a publisher is late by microseconds, or by the
// time the Go scheduler left it waiting under load; a minute is ample.
const takeoverMemory = time.Minute

// sessionHook keeps the QoS 1 and 2 messages that mochi v2.7.9 loses in three situations.
//
// Session takeover. When a client connects to its persistent session while mochi still lists
// an older connection for its client ID (connected or not), mochi (inheritClientSession)
// marks the old connection taken over, copies its in-flight messages to the new connection,
// clears them from the old one, and only then lists the new connection under the client ID
// (Clients.Add). A message routed to the client ID in between is looked up to the old
// connection and stored in its in-flight messages after the copy: it is then cleared with
// the others, or stays behind in the discarded connection. Either way it is never delivered,
// though its publisher got its PUBACK (mochi acknowledges a publish before routing it). A
// bridge that reconnects while devices report loses reports that way. The hook notes every
// message stored in a connection marked taken over (OnQosPublish) and, once the new
// connection has been sent its session's messages (OnSessionEstablished), gives it those the
// copy missed under new packet IDs, and removes them from the old connection.
//
// Full write queue. A message for a connected client whose queue of pending writes
// (Options.MaxPendingWrites) is full is dropped, and deleted from its session. That happens
// when a client stops reading, as the bridge does while its database is down (MQTT 3.1.1 has
// no flow control), and many devices publish to it at once. The hook puts such a QoS 1 or 2
// message back in the client's session under a new packet ID and writes it from a goroutine
// that waits for the client to read; should the connection end first, the session keeps it
// for the next connection. (The queue is allocated, at MaxPendingWrites, for each connection
// before its CONNECT packet is read, so a service cannot be given a longer one; mochi has no
// setting to block instead of dropping.)
//
// Packet ID shared with the client's publish. mochi keeps the messages it sends a client and
// the acknowledgements of the client's QoS 2 publishes in one map keyed by packet ID, though
// the client picks its packet IDs independently (MQTT 3.1.1, 2.3.1). A QoS 1 or 2 PUBLISH
// from the client deletes whatever the map holds under its packet ID, so a device reporting
// progress with the packet ID of a command it has not acknowledged yet deletes that command
// from its session: a device that restarts before acknowledging it never gets it again. The
// hook sets such a message aside when the PUBLISH is read (OnPacketRead) and puts it back
// once it is processed (OnPacketProcessed).
//
// All are at-least-once repairs: a message may, rarely, be delivered twice, never lost. The
// hook's lock is never held while calling into a client (whose own lock mochi holds while a
// write to it blocks).
type sessionHook struct {
	mqtt.HookBase

	server *mqtt.Server
	log    *slog.Logger
	// store, when sessions are persisted, is told of the messages the hook puts in a session
	// or takes out of one, which mochi does not report to its hooks.
	store heldMessages

	mu        sync.Mutex
	takeovers map[*mqtt.Client]*takeover // by the connection taken over
	heirs     map[*mqtt.Client]*takeover // by the connection taking over, until settled
	settled   []*takeover                // settled takeovers, oldest first, until forgotten
	backlogs  map[*mqtt.Client]*backlog  // messages a goroutine is writing to a client

	displaced sync.Map // *mqtt.Client -> packets.Packet: a message set aside while a PUBLISH with its ID is processed
}

// takeover is one connection's session passing to a new connection.
type takeover struct {
	old, heir *mqtt.Client
	// settledAt is when the heir got its session's messages; zero until then.
	settledAt time.Time
	// stranded holds, until the takeover settles, the messages the heir must be given.
	stranded []stranded
}

// stranded is a message for a session that mochi did not store in the session's current
// connection.
type stranded struct {
	pk packets.Packet
	// from is the connection whose in-flight messages hold pk, nil if none does.
	from *mqtt.Client
}

// backlog is the messages waiting to be written to a client by a goroutine.
type backlog struct {
	queue []packets.Packet
}

// heldMessages is told when a message is held in, or removed from, a client's session.
type heldMessages interface {
	OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int)
	OnQosComplete(cl *mqtt.Client, pk packets.Packet)
}

// noStore is the heldMessages of a broker that keeps its sessions in memory only.
type noStore struct{}

func (noStore) OnQosPublish(*mqtt.Client, packets.Packet, int64, int) {}
func (noStore) OnQosComplete(*mqtt.Client, packets.Packet)            {}

func newSessionHook(server *mqtt.Server, log *slog.Logger, store heldMessages) *sessionHook {
	if store == nil {
		store = noStore{}
	}
	return &sessionHook{
		server:    server,
		log:       log,
		store:     store,
		takeovers: make(map[*mqtt.Client]*takeover),
		heirs:     make(map[*mqtt.Client]*takeover),
		backlogs:  make(map[*mqtt.Client]*backlog),
	}
}

// ID names the hook in mochi's logs.
func (h *sessionHook) ID() string { return "otaflow-sessions" }

// Provides tells mochi which events the hook handles.
func (h *sessionHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnQosPublish, mqtt.OnPublishDropped,
		mqtt.OnPacketRead, mqtt.OnPacketProcessed, mqtt.OnDisconnect:
		return true
	}
	return false
}

// OnSessionEstablish is called for a new connection right before mochi gives it the session
// of its client ID: it notes a takeover whose session mochi keeps.
func (h *sessionHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	existing, ok := h.server.Clients.Get(cl.ID)
	if !ok || existing == cl {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forget(time.Now())
	var carried []stranded
	if t := h.heirs[existing]; t != nil {
		// existing took its session over but ended before it was given the messages mochi
		// stranded: they pass on with the session.
		carried, t.stranded = t.stranded, nil
		h.settle(t)
	}
	// mochi's condition for discarding the old session instead of passing it on.
	if pk.Connect.Clean || (existing.Properties.Clean && existing.Properties.ProtocolVersion < 5) {
		return
	}
	t := &takeover{old: existing, heir: cl, stranded: carried}
	h.takeovers[existing] = t
	h.heirs[cl] = t
}

// OnSessionEstablished is called once a new connection has been sent its session's
// messages: it gives a connection that took a session over the messages mochi stranded.
func (h *sessionHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	t := h.heirs[cl]
	var pending []stranded
	if t != nil {
		pending, t.stranded = t.stranded, nil
		h.settle(t)
	}
	h.mu.Unlock()
	for _, s := range pending {
		h.hand(cl, s)
	}
}

// OnQosPublish is called when mochi stores a QoS 1 or 2 message in a connection's in-flight
// messages, and when it resends one: a message stored in a connection taken over may have
// missed the copy of its session.
func (h *sessionHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || !cl.IsTakenOver() {
		return // the usual case, decided without a lock
	}
	h.strandedIn(cl, pk)
}

// strandedIn handles a message stored in cl, a connection taken over (or being taken over).
func (h *sessionHook) strandedIn(cl *mqtt.Client, pk packets.Packet) {
	s := stranded{pk: pk, from: cl}
	h.mu.Lock()
	var to *mqtt.Client
	if _, tracked := h.takeovers[cl]; tracked {
		to = h.route(cl, s)
	} // else the session was discarded (a clean session), or the takeover is long over
	h.mu.Unlock()
	if to != nil {
		h.hand(to, s)
	}
}

// OnPublishDropped is called when a message finds a connected client's write queue full:
// mochi drops it and deletes it from the session. A QoS 1 or 2 message is put back.
func (h *sessionHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	out, ok := h.delivery(cl, pk)
	if !ok {
		h.log.Warn("message dropped: client's write queue is full", "client", cl.ID, "topic", pk.TopicName,
			"qos", pk.FixedHeader.Qos)
		return
	}
	h.mu.Lock()
	to := h.route(cl, stranded{pk: out})
	h.mu.Unlock()
	if to != nil {
		h.hand(to, stranded{pk: out})
	}
	// mochi counted the dropped copy as in flight and does not uncount it (v2.7.9), so the
	// copy put back must not be counted again.
	atomic.AddInt64(&h.server.Info.Inflight, -1)
}

// OnPacketRead is called for each packet read from a client, before it is processed: a QoS 1
// or 2 PUBLISH with the packet ID of a message sent to the client and not acknowledged yet
// would delete that message, which is set aside.
func (h *sessionHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	if sent, ok := cl.State.Inflight.Get(pk.PacketID); ok && sent.FixedHeader.Type == packets.Publish {
		h.displaced.Store(cl, sent)
	}
	return pk, nil
}

// OnPacketProcessed is called once a packet from a client has been processed: a message set
// aside for a PUBLISH is put back.
func (h *sessionHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos > 0 {
		h.restore(cl)
	}
}

// OnDisconnect is called when a client's connection ends: a message still set aside (its
// PUBLISH failed validation and ended the connection) is put back.
func (h *sessionHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.restore(cl)
}

// restore puts back the message set aside for cl, if any, unless the packet ID has been
// given to another message meanwhile (mochi hands out IDs in increasing order, so only after
// it went round all 65535 of them) or the client's QoS 2 publish holds it.
func (h *sessionHook) restore(cl *mqtt.Client) {
	v, ok := h.displaced.LoadAndDelete(cl)
	if !ok {
		return
	}
	sent := v.(packets.Packet)
	if in, taken := cl.State.Inflight.Get(sent.PacketID); taken {
		if !samePacket(in, sent) {
			h.log.Error("message lost: the client used the packet ID of a message it had not acknowledged yet",
				"client", cl.ID, "topic", sent.TopicName, "packet_id", sent.PacketID)
		}
		return
	}
	if cl.State.Inflight.Set(sent) {
		atomic.AddInt64(&h.server.Info.Inflight, 1)
	}
	h.store.OnQosPublish(cl, sent, sent.Created, 0)
}

// delivery is the packet mochi sends cl for pk, as publishToClient builds it (except topic
// aliases), and whether it needs acknowledging (QoS 1 or 2).
func (h *sessionHook) delivery(cl *mqtt.Client, pk packets.Packet) (packets.Packet, bool) {
	if pk.FixedHeader.Qos == 0 {
		return packets.Packet{}, false
	}
	subs := h.server.Topics.Subscribers(pk.TopicName)
	sub, ok := subs.Subscriptions[cl.ID]
	for _, group := range subs.Shared {
		if s, in := group[cl.ID]; in {
			if ok {
				sub = sub.Merge(s)
			} else {
				sub, ok = s, true
			}
		}
	}
	if !ok {
		return packets.Packet{}, false // unsubscribed meanwhile
	}
	out := pk.Copy(false)
	if cl.Properties.ProtocolVersion < 5 || !sub.RetainAsPublished {
		out.FixedHeader.Retain = false
	}
	if len(sub.Identifiers) > 0 {
		ids := make([]int, 0, len(sub.Identifiers))
		for _, id := range sub.Identifiers {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		out.Properties.SubscriptionIdentifier = ids
	}
	out.FixedHeader.Qos = min(out.FixedHeader.Qos, sub.Qos, h.server.Options.Capabilities.MaximumQos)
	return out, out.FixedHeader.Qos > 0
}

// route returns the connection holding now the session that cl held; while the session is
// passing to a new connection, it keeps s for it and returns nil. h.mu is held.
func (h *sessionHook) route(cl *mqtt.Client, s stranded) *mqtt.Client {
	for {
		if t := h.takeovers[cl]; t != nil {
			if t.settledAt.IsZero() {
				t.stranded = append(t.stranded, s)
				return nil
			}
			cl = t.heir
			continue
		}
		if t := h.heirs[cl]; t != nil {
			// cl took the session over but has not been sent its messages yet.
			t.stranded = append(t.stranded, s)
			return nil
		}
		return cl
	}
}

// settle records that a takeover's heir has been given the stranded messages. h.mu is held.
func (h *sessionHook) settle(t *takeover) {
	t.settledAt = time.Now()
	delete(h.heirs, t.heir)
	h.settled = append(h.settled, t)
}

// hand stores a stranded message in cl's in-flight messages and has it written, unless cl
// holds it already (mochi's copy of the session took it). Should cl have been taken over
// meanwhile, the message is handled as one mochi stored there.
func (h *sessionHook) hand(cl *mqtt.Client, s stranded) {
	out, ok := h.adopt(cl, s)
	if !ok {
		return
	}
	if cl.IsTakenOver() {
		h.strandedIn(cl, out)
		return
	}
	h.write(cl, []packets.Packet{out})
}

// adopt stores a stranded message in cl's in-flight messages under a new packet ID, and
// returns it, unless cl holds it already. It removes the message from the connection it was
// stranded in.
func (h *sessionHook) adopt(cl *mqtt.Client, s stranded) (packets.Packet, bool) {
	if s.from != nil {
		if in, ok := cl.State.Inflight.Get(s.pk.PacketID); ok && samePacket(in, s.pk) {
			return packets.Packet{}, false
		}
		if in, ok := s.from.State.Inflight.Get(s.pk.PacketID); ok && samePacket(in, s.pk) &&
			s.from.State.Inflight.Delete(s.pk.PacketID) {
			atomic.AddInt64(&h.server.Info.Inflight, -1)
			h.store.OnQosComplete(s.from, s.pk)
		}
	}
	id, err := cl.NextPacketID()
	if err != nil {
		h.log.Error("message lost: no free packet ID in the client's session", "client", cl.ID,
			"topic", s.pk.TopicName, "error", err)
		return packets.Packet{}, false
	}
	out := s.pk
	out.PacketID = uint16(id)
	out.FixedHeader.Dup = false
	if cl.State.Inflight.Set(out) {
		atomic.AddInt64(&h.server.Info.Inflight, 1)
	}
	h.store.OnQosPublish(cl, out, out.Created, 0)
	return out, true
}

// samePacket reports whether a and b are the same stored message. Each subscriber's copy of
// a message has its own payload, which copies of the session share.
func samePacket(a, b packets.Packet) bool {
	if a.PacketID != b.PacketID || a.Created != b.Created || a.TopicName != b.TopicName || len(a.Payload) != len(b.Payload) {
		return false
	}
	return len(a.Payload) == 0 || &a.Payload[0] == &b.Payload[0]
}

// write has a goroutine write messages to cl, waiting for it to read. Messages whose
// connection ends first stay in the session for the next connection.
func (h *sessionHook) write(cl *mqtt.Client, pks []packets.Packet) {
	if len(pks) == 0 || cl.Closed() {
		return
	}
	h.mu.Lock()
	if b := h.backlogs[cl]; b != nil {
		b.queue = append(b.queue, pks...)
		h.mu.Unlock()
		return
	}
	b := &backlog{queue: pks}
	h.backlogs[cl] = b
	h.mu.Unlock()
	go h.drain(cl, b)
}

// drain writes a client's backlog until it is empty or the connection ends.
func (h *sessionHook) drain(cl *mqtt.Client, b *backlog) {
	for {
		h.mu.Lock()
		if len(b.queue) == 0 || cl.Closed() {
			delete(h.backlogs, cl)
			h.mu.Unlock()
			return
		}
		pk := b.queue[0]
		b.queue = b.queue[1:]
		h.mu.Unlock()
		if err := cl.WritePacket(pk); err != nil && !cl.Closed() {
			h.log.Warn("cannot write a message kept for the client; it stays in the session",
				"client", cl.ID, "topic", pk.TopicName, "error", err)
		}
	}
}

// forget drops the takeovers settled longer than takeoverMemory ago. h.mu is held.
func (h *sessionHook) forget(now time.Time) {
	n := 0
	for _, t := range h.settled {
		if now.Sub(t.settledAt) < takeoverMemory {
			break
		}
		if h.takeovers[t.old] == t {
			delete(h.takeovers, t.old)
		}
		n++
	}
	if n > 0 {
		h.settled = slices.Delete(h.settled, 0, n)
	}
}
