// Package broker runs OTAflow's embedded MQTT broker (mochi-mqtt) for the local stack and the
// tests. It authenticates devices against their registered secrets and services against
// fixed passwords, and enforces PROTOCOL.md's access rule: device {id} may subscribe only to
// its own command and cancel topics and publish only to its own progress and status topics.
// It also keeps
// the QoS 1 and 2 messages that mochi v2.7.9 would lose from persistent sessions (see
// sessionHook).
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Credentials looks up a device's secret hash (credential.Hash form) and whether it is
// disabled. It returns an error wrapping store.ErrNotFound for an unknown device.
// *store.Store satisfies it.
type Credentials interface {
	DeviceCredentials(ctx context.Context, id string) (secretHash string, disabled bool, err error)
}

// DisabledDevices tells which devices are disabled. *store.Store satisfies it.
type DisabledDevices interface {
	// DisabledAmong returns those of ids that are disabled.
	DisabledAmong(ctx context.Context, ids []string) ([]string, error)
}

// Defaults of Options.
const (
	DefaultAddr             = "127.0.0.1:1883"
	DefaultMaxPacketSize    = 64 * 1024
	DefaultMaxPendingWrites = 1024
	DefaultMaxInflight      = 65535
	DefaultSessionExpiry    = 7 * 24 * time.Hour
	DefaultLookupTimeout    = 5 * time.Second
	DefaultConnectTimeout   = 10 * time.Second
	DefaultVerifyTimeout    = time.Minute
	DefaultDisabledInterval = 2 * time.Second
)

// Options configures a Broker. Zero values take the defaults above.
type Options struct {
	// Addr is the TCP address to listen on, e.g. "127.0.0.1:1883"; port 0 picks a free port
	// (Addr reports the real one).
	Addr string
	// Credentials looks devices up. Required.
	Credentials Credentials
	// Services maps service usernames (e.g. "otaflow-bridge") to their passwords. Services may
	// publish and subscribe to anything, shared subscriptions included. No device may use a
	// service username as its ID.
	Services map[string]string
	// Disabled, when set, is asked every DisabledInterval which of the connected devices are
	// disabled; the broker closes their connections (their sessions stay), and they cannot
	// connect again while disabled (Credentials says so). Without it, disabling a device only
	// refuses its next connection.
	Disabled DisabledDevices
	// DisabledInterval is how often Disabled is asked.
	DisabledInterval time.Duration
	// Logger receives the broker's logs, refusals included (never secrets). Nil means
	// slog.Default().
	Logger *slog.Logger
	// StorePath, when set, is a file (bbolt) where the broker keeps its persistent sessions:
	// subscriptions and the QoS 1/2 messages held for each client. A broker started on the
	// file of one that stopped carries on with its sessions, so the commands queued for
	// offline devices and the reports not yet acknowledged by the bridge survive a restart.
	// Empty keeps sessions in memory only. Writes are not synced to disk (a crash of the
	// process loses nothing, a crash of the machine may).
	StorePath string

	// MaxPacketSize is the largest packet, in bytes, a client may send; a client sending a
	// bigger one is disconnected. Payloads are checked against protocol.MaxPayloadSize by the
	// bridge, not here.
	MaxPacketSize uint32
	// MaxPendingWrites is the per-client queue of messages waiting to be written to the socket.
	// Its buffer is allocated for every connection (8 bytes per slot), before the client is
	// known, so it is kept modest for 10,000 devices. A QoS 1 or 2 message that finds the queue
	// full (a client not reading, such as the bridge held up by its database) stays in the
	// client's session and is written once the client reads; a QoS 0 one is dropped and logged.
	MaxPendingWrites int
	// MaxInflight bounds the QoS 1/2 messages held per client (unacknowledged, or queued for an
	// offline persistent session). Held messages take memory only when they exist. mochi drops
	// a message for a client that holds MaxInflight already, logging "client store quota
	// reached": for the bridge, it bounds the reports an outage may keep waiting, so the
	// default is the most MQTT packet IDs allow.
	MaxInflight uint16
	// SessionExpiry is how long the persistent session (subscriptions and queued commands) of a
	// disconnected client is kept.
	SessionExpiry time.Duration
	// LookupTimeout bounds one credentials lookup.
	LookupTimeout time.Duration
	// ConnectTimeout is how long a new connection may take to send its CONNECT packet.
	ConnectTimeout time.Duration
	// VerifyTimeout bounds a connecting device's wait for its secret to be verified. Argon2id
	// verifications (about 5 ms and 8 MiB each) run at most GOMAXPROCS at a time, so when
	// 10,000 devices connect at once to a fresh broker the last wait tens of seconds.
	VerifyTimeout time.Duration
}

func (o *Options) setDefaults() {
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	if o.MaxPendingWrites == 0 {
		o.MaxPendingWrites = DefaultMaxPendingWrites
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.SessionExpiry == 0 {
		o.SessionExpiry = DefaultSessionExpiry
	}
	if o.LookupTimeout == 0 {
		o.LookupTimeout = DefaultLookupTimeout
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.VerifyTimeout == 0 {
		o.VerifyTimeout = DefaultVerifyTimeout
	}
	if o.DisabledInterval == 0 {
		o.DisabledInterval = DefaultDisabledInterval
	}
}

// ErrClosed is returned by Start on a broker that was closed.
var ErrClosed = errors.New("broker closed")

// Broker is an embedded MQTT broker with OTAflow's authentication and access rules.
type Broker struct {
	opts      Options
	log       *slog.Logger
	server    *mqtt.Server
	hook      *authHook
	establish *establishHook
	tcp       *tcpListener

	mu      sync.Mutex
	started bool
	closed  bool
	stop    func() bool // stops the context.AfterFunc that closes the broker
	// stopWatch ends watchDisabled, which closes watchDone when it returns; nil without
	// Options.Disabled.
	stopWatch context.CancelFunc
	watchDone chan struct{}
}

// New checks opts and prepares a broker; Start makes it listen.
func New(opts Options) (*Broker, error) {
	opts.setDefaults()
	if opts.Credentials == nil {
		return nil, errors.New("broker: Options.Credentials is required")
	}
	if opts.MaxPendingWrites < 0 || opts.SessionExpiry < 0 || opts.LookupTimeout < 0 || opts.ConnectTimeout < 0 || opts.VerifyTimeout < 0 ||
		opts.DisabledInterval < 0 {
		return nil, errors.New("broker: MaxPendingWrites, SessionExpiry, DisabledInterval and the timeouts must not be negative")
	}
	for user, pass := range opts.Services {
		if user == "" || pass == "" {
			return nil, fmt.Errorf("broker: service %q needs a non-empty username and password", user)
		}
	}
	if _, _, err := net.SplitHostPort(opts.Addr); err != nil {
		return nil, fmt.Errorf("broker: listen address %q: %w", opts.Addr, err)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = opts.MaxPacketSize
	caps.MaximumClientWritesPending = int32(opts.MaxPendingWrites)
	caps.MaximumInflight = opts.MaxInflight
	caps.MaximumSessionExpiryInterval = uint32(min(opts.SessionExpiry/time.Second, 1<<32-1))
	// Nothing in the protocol is retained; refusing retention keeps the broker's memory bounded
	// by its sessions. Retained publishes are delivered as ordinary messages.
	caps.RetainAvailable = 0

	log := opts.Logger.With("component", "broker")
	server := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 log,
		SysTopicResendInterval: 10,
	})
	hook := newAuthHook(opts, log, server)
	if err := server.AddHook(hook, nil); err != nil {
		return nil, fmt.Errorf("broker: add auth hook: %w", err)
	}
	establish := newEstablishHook()
	if err := server.AddHook(establish, nil); err != nil {
		return nil, fmt.Errorf("broker: add establish hook: %w", err)
	}
	var store heldMessages
	if opts.StorePath != "" {
		hook, err := openSessionStore(opts.StorePath, log)
		if err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
		if err := server.AddHook(hook, nil); err != nil {
			_ = hook.Stop()
			return nil, fmt.Errorf("broker: add session store: %w", err)
		}
		store = hook
	}
	if err := server.AddHook(newSessionHook(server, log, store), nil); err != nil {
		return nil, fmt.Errorf("broker: add session hook: %w", err)
	}
	return &Broker{
		opts:      opts,
		log:       log,
		server:    server,
		hook:      hook,
		establish: establish,
		tcp:       newTCPListener("tcp", opts.Addr, opts.ConnectTimeout),
	}, nil
}

// Start makes the broker listen on Options.Addr and serve. It returns once the broker accepts
// connections. The broker serves until ctx is done or Close is called; credentials lookups
// are made under ctx.
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return ErrClosed
	case b.started:
		return errors.New("broker: already started")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	b.hook.setContext(ctx)
	if err := b.server.AddListener(b.tcp); err != nil {
		return fmt.Errorf("start broker: listen on %s: %w", b.opts.Addr, err)
	}
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	b.started = true
	b.stop = context.AfterFunc(ctx, func() { _ = b.Close() })
	if b.opts.Disabled != nil {
		wctx, cancel := context.WithCancel(ctx)
		b.stopWatch, b.watchDone = cancel, make(chan struct{})
		go b.watchDisabled(wctx)
	}
	return nil
}

// Addr returns the address the broker listens on (host:port, with the real port when
// Options.Addr asked for port 0). Before Start it returns Options.Addr.
func (b *Broker) Addr() string { return b.tcp.Address() }

// URL returns a URL clients can dial, tcp://host:port; an unspecified listen host (":0",
// "0.0.0.0", "::") is given as 127.0.0.1.
func (b *Broker) URL() string {
	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil {
		return "tcp://" + b.Addr()
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "tcp://" + net.JoinHostPort(host, port)
}

// Close disconnects every client, stops listening and waits for the connections to end. It
// may be called more than once.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.stop != nil {
		b.stop()
	}
	if !b.started {
		return nil
	}
	if b.stopWatch != nil {
		b.stopWatch()
		<-b.watchDone
	}
	if err := b.server.Close(); err != nil {
		return fmt.Errorf("close broker: %w", err)
	}
	return nil
}

// ClientInfo is what the broker holds of one client's session, for diagnostics.
type ClientInfo struct {
	// Connected reports whether the client is connected now.
	Connected bool
	// Subscriptions are the session's topic filters, sorted.
	Subscriptions []string
	// Held counts the QoS 1 and 2 messages held for the client (unacknowledged or queued).
	Held int
}

// Client describes the session of the client with this ID; ok is false when the broker holds
// none.
func (b *Broker) Client(id string) (info ClientInfo, ok bool) {
	cl, ok := b.server.Clients.Get(id)
	if !ok {
		return ClientInfo{}, false
	}
	info.Connected = !cl.Closed()
	for f := range cl.State.Subscriptions.GetAll() {
		info.Subscriptions = append(info.Subscriptions, f)
	}
	slices.Sort(info.Subscriptions)
	info.Held = cl.State.Inflight.Len()
	return info, true
}
