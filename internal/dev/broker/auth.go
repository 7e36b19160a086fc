package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// authHook authenticates clients and applies the per-device access rule.
//
// Devices: client ID = username = device ID, password = secret, checked with credential.Verify
// against the registered hash. Every connection looks the device up (one indexed query), so
// disabling a device or changing its secret takes effect at its next connection; the costly
// argon2id verification is cached per device as (sha256(secret), hash verified against), so a
// device reconnecting with the same secret against an unchanged hash costs no verification.
// Verifications run at most GOMAXPROCS at a time, so that 10,000 devices connecting at once
// queue for the CPU instead of each allocating argon2's memory, and connections presenting the
// same secret share one verification. Failures that are not the client's fault (registry
// unreachable, verification queue too long) are answered "server unavailable" so that the
// client retries; wrong credentials "bad username or password".
//
// Services: fixed username/password pairs compared in constant time; they may use any topic.
//
// A client ID's session belongs to the username that created it: a client whose username
// differs from the one holding a live or persisted session with the same client ID is refused,
// so nobody can take over a device's (or a service's) session and its queued commands.
type authHook struct {
	mqtt.HookBase

	creds         Credentials
	services      map[string][32]byte // username -> sha256(password)
	log           *slog.Logger
	server        *mqtt.Server
	lookupTimeout time.Duration
	verifyTimeout time.Duration

	ctxMu sync.RWMutex
	ctx   context.Context

	verifySlots chan struct{}

	cacheMu  sync.Mutex
	verified map[string]verifiedSecret // device ID -> last successful verification
	running  map[verifyKey]*verifyCall // verifications under way

	verifications atomic.Int64 // argon2id verifications run, for tests

	// refused counts refused connections by reason (metrics.go).
	refused *prometheus.CounterVec

	// Connections are numbered as their CONNECT arrives (OnConnect). A connection whose
	// authentication ends after a later connection of the same client ID was accepted is
	// stale (see OnConnectAuthenticate).
	connSeq     atomic.Uint64
	seqMu       sync.Mutex
	arrived     map[*mqtt.Client]uint64
	newestAdmit map[string]uint64 // client ID -> number of the newest connection accepted
}

// verifiedSecret records that the secret with this sha256 matched this stored hash.
type verifiedSecret struct {
	sum  [32]byte
	hash string
}

func newAuthHook(opts Options, log *slog.Logger, server *mqtt.Server) *authHook {
	services := make(map[string][32]byte, len(opts.Services))
	for user, pass := range opts.Services {
		services[user] = sha256.Sum256([]byte(pass))
	}
	return &authHook{
		creds:         opts.Credentials,
		services:      services,
		log:           log,
		server:        server,
		lookupTimeout: opts.LookupTimeout,
		verifyTimeout: opts.VerifyTimeout,
		ctx:           context.Background(),
		verifySlots:   make(chan struct{}, max(1, runtime.GOMAXPROCS(0))),
		verified:      make(map[string]verifiedSecret),
		running:       make(map[verifyKey]*verifyCall),
		arrived:       make(map[*mqtt.Client]uint64),
		newestAdmit:   make(map[string]uint64),
		refused:       newRefusedCounter(),
	}
}

func (h *authHook) setContext(ctx context.Context) {
	h.ctxMu.Lock()
	h.ctx = ctx
	h.ctxMu.Unlock()
}

func (h *authHook) context() context.Context {
	h.ctxMu.RLock()
	defer h.ctxMu.RUnlock()
	return h.ctx
}

// ID names the hook in mochi's logs.
func (h *authHook) ID() string { return "otaflow-auth" }

// Provides tells mochi which events the hook handles.
func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

// OnConnect numbers the connection as its CONNECT arrives.
func (h *authHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	h.seqMu.Lock()
	h.arrived[cl] = h.connSeq.Add(1)
	h.seqMu.Unlock()
	return nil
}

// admit accepts cl unless a connection of the same client ID whose CONNECT arrived later was
// accepted first. Such a stale connection is one whose client gave up waiting for its CONNACK
// (authentication queued behind thousands of others) and connected again; mochi would let it
// take the session over from the live, newer connection, disconnecting that one and leaving
// the session to a connection nobody reads.
func (h *authHook) admit(cl *mqtt.Client) bool {
	h.seqMu.Lock()
	defer h.seqMu.Unlock()
	seq, ok := h.arrived[cl]
	delete(h.arrived, cl)
	if !ok {
		return true // not numbered (no OnConnect): nothing to compare
	}
	if h.newestAdmit[cl.ID] > seq {
		return false
	}
	h.newestAdmit[cl.ID] = seq
	return true
}

// OnConnectAuthenticate accepts a service or a device with the right credentials.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	ok := h.authenticate(cl, pk)
	if !ok {
		h.seqMu.Lock()
		delete(h.arrived, cl)
		h.seqMu.Unlock()
		return false
	}
	if !h.admit(cl) {
		h.log.Warn("connection refused", "client", cl.ID, "remote", cl.Net.Remote, "reason", reasonSuperseded)
		h.refused.WithLabelValues(refusalLabel(reasonSuperseded)).Inc()
		_ = h.server.SendConnack(cl, packets.ErrServerUnavailable, false, nil)
		return false
	}
	return true
}

// authenticate checks the credentials.
func (h *authHook) authenticate(cl *mqtt.Client, pk packets.Packet) bool {
	username := string(pk.Connect.Username)
	clientID := cl.ID
	refuse := func(reason string, attrs ...any) bool {
		h.log.Warn("connection refused", append([]any{"client", clientID, "username", username,
			"remote", cl.Net.Remote, "reason", reason}, attrs...)...)
		h.refused.WithLabelValues(refusalLabel(reason)).Inc()
		return false
	}
	// A failure that is not the client's fault is answered "server unavailable", so the
	// client retries instead of taking its credentials for wrong. (mochi then sends its own
	// "bad username or password" CONNACK, which the client no longer reads.)
	unavailable := func(reason string, attrs ...any) bool {
		refuse(reason, attrs...)
		_ = h.server.SendConnack(cl, packets.ErrServerUnavailable, false, nil)
		return false
	}
	if username == "" {
		return refuse("no username")
	}
	if want, ok := h.services[username]; ok {
		got := sha256.Sum256(pk.Connect.Password)
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			return refuse("wrong service password")
		}
		if owner, ok := h.sessionOwner(clientID); ok && owner != username {
			return refuse("client ID belongs to another user's session")
		}
		return true
	}

	// A device.
	if pk.Connect.ClientIdentifier != username {
		return refuse("client ID differs from username (a device connects with client ID = username = device ID)")
	}
	if err := protocol.ValidateDeviceID(username); err != nil {
		return refuse("invalid device ID")
	}
	if len(pk.Connect.Password) == 0 {
		return refuse("no password")
	}
	if owner, ok := h.sessionOwner(clientID); ok && owner != username {
		return refuse("client ID belongs to another user's session")
	}
	lookupCtx, cancel := context.WithTimeout(h.context(), h.lookupTimeout)
	defer cancel()
	hash, disabled, err := h.creds.DeviceCredentials(lookupCtx, username)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return refuse("unknown device")
	case err != nil:
		return unavailable("credentials lookup failed", "error", err)
	case disabled:
		return refuse("device disabled")
	}
	verifyCtx, cancel := context.WithTimeout(h.context(), h.verifyTimeout)
	defer cancel()
	ok, err := h.verify(verifyCtx, username, hash, pk.Connect.Password)
	switch {
	case errors.Is(err, credential.ErrMalformedHash):
		return refuse("registered secret hash is malformed", "error", err)
	case err != nil:
		return unavailable("cannot verify secret", "error", err)
	case !ok:
		return refuse("wrong secret")
	}
	return true
}

// sessionOwner returns the username of the client (connected or with a persisted session)
// holding clientID.
func (h *authHook) sessionOwner(clientID string) (string, bool) {
	existing, ok := h.server.Clients.Get(clientID)
	if !ok {
		return "", false
	}
	return string(existing.Properties.Username), true
}

// verifyKey names one verification: a device's secret (by its sha256) against a stored hash.
type verifyKey struct {
	id   string
	sum  [32]byte
	hash string
}

// verifyCall is a verification under way; done is closed when ok and err are set.
type verifyCall struct {
	done chan struct{}
	ok   bool
	err  error
}

// verify checks password against the device's stored hash, through the cache. Concurrent
// attempts with the same secret share one verification, and a verification runs to the end
// even when the connection that asked gave up waiting: a device that retries after a timeout
// joins it or finds the result cached, instead of queueing more work.
func (h *authHook) verify(ctx context.Context, id, hash string, password []byte) (bool, error) {
	key := verifyKey{id: id, sum: sha256.Sum256(password), hash: hash}
	h.cacheMu.Lock()
	if cached, ok := h.verified[id]; ok && cached.hash == hash && subtle.ConstantTimeCompare(cached.sum[:], key.sum[:]) == 1 {
		h.cacheMu.Unlock()
		return true, nil
	}
	call, running := h.running[key]
	if !running {
		call = &verifyCall{done: make(chan struct{})}
		h.running[key] = call
		go h.runVerify(key, call, string(password))
	}
	h.cacheMu.Unlock()

	select {
	case <-call.done:
		return call.ok, call.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// runVerify runs one argon2id verification when a slot is free, and records the result.
func (h *authHook) runVerify(key verifyKey, call *verifyCall, password string) {
	defer func() {
		h.cacheMu.Lock()
		delete(h.running, key)
		if call.ok {
			h.verified[key.id] = verifiedSecret{sum: key.sum, hash: key.hash}
		} else if c, found := h.verified[key.id]; found && c.hash != key.hash {
			delete(h.verified, key.id)
		}
		h.cacheMu.Unlock()
		close(call.done)
	}()
	ctx := h.context()
	select {
	case h.verifySlots <- struct{}{}:
	case <-ctx.Done():
		call.err = fmt.Errorf("broker stopping: %w", ctx.Err())
		return
	}
	h.verifications.Add(1)
	call.ok, call.err = credential.Verify(key.hash, password)
	<-h.verifySlots
}

// OnACLCheck lets services use any topic and a device only its own topics (PROTOCOL.md 1.1):
// it subscribes to its command and cancel topics and publishes to its progress and status
// topics. It is called for a client's publishes (write), its subscriptions (the filter) and
// each delivery to it.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	username := string(cl.Properties.Username)
	if _, ok := h.services[username]; ok {
		return true
	}
	id := cl.ID
	action := "subscribe"
	if write {
		action = "publish"
	}
	if username != id {
		// Authentication admits no such device; refuse whatever it is.
		h.log.Warn(action+" refused", "client", id, "username", username, "topic", topic,
			"reason", "client is neither a service nor an authenticated device")
		return false
	}
	if write {
		if topic == protocol.ProgressTopic(id) || topic == protocol.StatusTopic(id) {
			return true
		}
		h.log.Warn("publish refused", "device", id, "topic", topic,
			"reason", "a device may publish only to its own progress and status topics")
		return false
	}
	if topic == protocol.CommandTopic(id) || topic == protocol.CancelTopic(id) {
		return true
	}
	h.log.Warn("subscribe refused", "device", id, "topic", topic,
		"reason", "a device may subscribe only to its own command and cancel topics")
	return false
}
