package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// flakyListener fails the accepts it is told to, then hands out its connections; a kick fails
// a waiting accept; closed, it fails every accept with net.ErrClosed.
type flakyListener struct {
	mu       sync.Mutex
	failures int
	conns    chan net.Conn
	kick     chan struct{}
	closed   chan struct{}
	accepts  int
}

var errNoFiles = errors.New("accept: too many open files")

func (f *flakyListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	f.accepts++
	fail := f.failures > 0
	if fail {
		f.failures--
	}
	f.mu.Unlock()
	if fail {
		return nil, errNoFiles
	}
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.kick:
		return nil, errNoFiles
	case <-f.closed:
		return nil, net.ErrClosed
	}
}

func (f *flakyListener) Close() error   { close(f.closed); return nil }
func (f *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func (f *flakyListener) attempts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.accepts
}

// TestListenerRetriesFailedAccepts: failed accepts are retried with backoff until a
// connection comes, and Close ends Serve even while it waits to retry.
func TestListenerRetriesFailedAccepts(t *testing.T) {
	fl := &flakyListener{failures: 3, conns: make(chan net.Conn, 1), kick: make(chan struct{}), closed: make(chan struct{})}
	l := newTCPListener("test", "", time.Minute)
	l.ln, l.log = fl, slog.New(slog.NewTextHandler(io.Discard, nil))

	established := make(chan string, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		l.Serve(func(id string, c net.Conn) error {
			established <- id
			return nil
		})
	}()
	server, client := net.Pipe()
	defer client.Close()
	fl.conns <- server
	select {
	case id := <-established:
		require.Equal(t, "test", id)
	case <-time.After(10 * time.Second):
		t.Fatal("no connection established after the failed accepts")
	}
	require.GreaterOrEqual(t, fl.attempts(), 4, "three failed accepts and the good one")

	// Failing for good: the waits between retries grow to a second (5 ms doubling: the ninth
	// wait is the first of a second), and Close ends Serve in the middle of one.
	fl.mu.Lock()
	fl.failures = 1000
	base := fl.accepts
	fl.mu.Unlock()
	fl.kick <- struct{}{}
	require.Eventually(t, func() bool { return fl.attempts() >= base+9 }, 20*time.Second, 10*time.Millisecond)
	closed := time.Now()
	l.Close(func(string) {})
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve goes on after Close")
	}
	require.Less(t, time.Since(closed), 500*time.Millisecond, "Serve waited out its retry after Close")
}
