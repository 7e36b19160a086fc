package broker

import (
	"bytes"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// establishWait bounds how long a connection waits for another connection of its client ID
// to finish establishing its session, should the release never come.
const establishWait = 2 * time.Second

// establishHook makes mochi's establishment of a session atomic per client ID. mochi v2.7.9
// (attachClient) looks up the connection listed under the client ID, takes its session over,
// and lists the new connection, in three steps without a lock. Two connections of one client
// ID established at the same moment (a device whose first CONNECT waited long for its
// verification has connected again) may then both take over the same old session, and the one
// listed last hides the other: that one stays connected and subscribed but receives nothing,
// as messages are routed to the listed connection. The hook holds a lock per client ID from
// OnSessionEstablish, before the takeover, until the connection's CONNACK is encoded, after it
// was listed; the next connection of the client ID then takes the first one's session over in
// the usual way, and a client disconnected so reconnects.
type establishHook struct {
	mqtt.HookBase

	mu   sync.Mutex
	held map[string]*establishing // client ID -> the connection establishing its session
}

type establishing struct {
	holder *mqtt.Client
	done   chan struct{}
}

func newEstablishHook() *establishHook {
	return &establishHook{held: make(map[string]*establishing)}
}

// ID names the hook in mochi's logs.
func (h *establishHook) ID() string { return "otaflow-establish" }

// Provides tells mochi which events the hook handles.
func (h *establishHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablish, mqtt.OnPacketEncode, mqtt.OnDisconnect}, []byte{b})
}

// OnSessionEstablish waits until no other connection of the client ID is establishing its
// session, then holds the client ID for cl.
func (h *establishHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	deadline := time.NewTimer(establishWait)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		e := h.held[cl.ID]
		if e == nil {
			h.held[cl.ID] = &establishing{holder: cl, done: make(chan struct{})}
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		select {
		case <-e.done:
		case <-deadline.C:
			// The holder never got to its CONNACK (it was closed first): take the client ID.
			h.release(e.holder)
		}
	}
}

// OnPacketEncode releases the client ID when cl's CONNACK is about to be written: cl is
// listed under it by then.
func (h *establishHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		h.release(cl)
	}
	return pk
}

// OnDisconnect releases the client ID, should cl end before its CONNACK.
func (h *establishHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.release(cl) }

func (h *establishHook) release(cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.held[cl.ID]; e != nil && e.holder == cl {
		delete(h.held, cl.ID)
		close(e.done)
	}
}
