package broker

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// tcpListener is a mochi listener that, unlike mochi's own TCP listener, bounds the wait for a
// new connection's CONNECT packet and closes every connection it accepted when it closes, so
// a half-open connection can neither hold a goroutine forever nor stall Broker.Close (mochi
// waits for all client goroutines to end).
type tcpListener struct {
	id             string
	addr           string
	connectTimeout time.Duration
	log            *slog.Logger

	// closing ends when Close begins: Serve waits no longer to retry a failed accept.
	closing context.Context
	unwait  context.CancelFunc

	mu     sync.Mutex
	ln     net.Listener
	conns  map[*trackedConn]struct{}
	closed bool
}

var _ listeners.Listener = (*tcpListener)(nil)

func newTCPListener(id, addr string, connectTimeout time.Duration) *tcpListener {
	closing, unwait := context.WithCancel(context.Background())
	return &tcpListener{id: id, addr: addr, connectTimeout: connectTimeout, closing: closing, unwait: unwait,
		conns: map[*trackedConn]struct{}{}}
}

// ID returns the listener's ID.
func (l *tcpListener) ID() string { return l.id }

// Protocol returns "tcp".
func (l *tcpListener) Protocol() string { return "tcp" }

// Address returns the bound address once listening, the configured one before.
func (l *tcpListener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// Init binds the address.
func (l *tcpListener) Init(log *slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ln, l.log = ln, log
	l.mu.Unlock()
	return nil
}

// Serve accepts connections and hands each to establish in its own goroutine.
func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.accept()
		if err != nil {
			return // closed
		}
		tc := &trackedConn{Conn: conn, l: l}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			conn.Close()
			return
		}
		l.conns[tc] = struct{}{}
		l.mu.Unlock()
		// mochi replaces this deadline with the keep-alive one once CONNECT is read.
		_ = conn.SetDeadline(time.Now().Add(l.connectTimeout))
		go func() {
			defer tc.Close()
			if err := establish(l.id, tc); err != nil {
				// Refusals are logged by the auth hook; the rest is ordinary disconnection.
				l.log.Debug("connection ended", "remote", conn.RemoteAddr().String(), "error", err)
			}
		}()
	}
}

// accept returns the next connection. A failure (out of file descriptors and the like) is
// retried after a wait, from 5 ms doubling up to a second; accept fails once the listener is
// closed.
func (l *tcpListener) accept() (net.Conn, error) {
	return backoff.Retry(l.closing, func() (net.Conn, error) {
		conn, err := l.ln.Accept()
		if err == nil {
			return conn, nil
		}
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed || errors.Is(err, net.ErrClosed) {
			return nil, backoff.Permanent(err)
		}
		return nil, err
	}, backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 5 * time.Millisecond, Multiplier: 2, MaxInterval: time.Second}),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) { l.log.Warn("accept failed", "error", err, "retry_in", wait) }))
}

// Close stops accepting, lets mochi disconnect its clients, then closes whatever connection
// is left (those still in their handshake).
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	ln := l.ln
	l.mu.Unlock()
	l.unwait()
	if ln != nil {
		_ = ln.Close()
	}
	closeClients(l.id)
	l.mu.Lock()
	left := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		left = append(left, c)
	}
	l.mu.Unlock()
	for _, c := range left {
		_ = c.Close()
	}
}

// trackedConn removes itself from its listener when closed.
type trackedConn struct {
	net.Conn
	l    *tcpListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return err
}
