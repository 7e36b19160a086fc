package localstack

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"syscall"
)

// ErrPortInUse is wrapped by the errors returned when a port a server needs is taken.
var ErrPortInUse = errors.New("port already in use")

// localhost is the only address the local servers listen on.
const localhost = "127.0.0.1"

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on.
//
// On Linux the port is left in TIME_WAIT, so the kernel does not hand it out again to another
// bind(:0) for a while, yet the server about to use it can still bind it.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(localhost, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	addr := l.Addr().(*net.TCPAddr)
	if runtime.GOOS == "linux" {
		// Connect and close from the server side to park the port in TIME_WAIT.
		c, err := net.DialTCP("tcp", nil, addr)
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		s, err := l.Accept()
		if err != nil {
			c.Close()
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		s.Close()
		c.Close()
	}
	return addr.Port, nil
}

// CheckPortFree returns nil when port can be listened on at 127.0.0.1, and an error wrapping
// ErrPortInUse when another process holds it.
func CheckPortFree(port int) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("port %d is not a TCP port (1-65535)", port)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(localhost, fmt.Sprint(port)))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("port %d on %s: %w", port, localhost, ErrPortInUse)
		}
		return fmt.Errorf("port %d on %s: %w", port, localhost, err)
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("port %d on %s: %w", port, localhost, err)
	}
	return nil
}

// FreePortRun returns the first of n ports in a row on 127.0.0.1, within [low, high), that are
// free and that taken (which may be nil) does not hold, trying from a random start. Ports
// below Linux's ephemeral range (32768-60999) stay free until used: no connection and no
// bind(:0) takes them meanwhile.
func FreePortRun(low, high, n int, taken map[int]string) (int, error) {
	span := high - low - n + 1
	if n < 1 || span < 1 {
		return 0, fmt.Errorf("no run of %d ports fits between %d and %d", n, low, high-1)
	}
	start := rand.IntN(span)
next:
	for i := range span {
		p := low + (start+i)%span
		for j := range n {
			if _, ok := taken[p+j]; ok || CheckPortFree(p+j) != nil {
				continue next
			}
		}
		return p, nil
	}
	if n == 1 {
		return 0, fmt.Errorf("no free port between %d and %d", low, high-1)
	}
	return 0, fmt.Errorf("no %d free ports in a row between %d and %d", n, low, high-1)
}

// pickPort returns port when it is free, or a free port when port is 0. what names the port
// for people ("Temporal gRPC") and flag the command-line flag that chooses it.
func pickPort(port int, what, flag string) (int, error) {
	if port == 0 {
		p, err := FreePort()
		if err != nil {
			return 0, fmt.Errorf("%s port: %w", what, err)
		}
		return p, nil
	}
	if err := CheckPortFree(port); err != nil {
		if errors.Is(err, ErrPortInUse) {
			return 0, fmt.Errorf("%s port %d is already in use (is another server running? `ss -ltnp 'sport = :%d'` shows which process): "+
				"stop it, or choose another port with %s (0 picks a free one): %w", what, port, port, flag, ErrPortInUse)
		}
		return 0, fmt.Errorf("%s port: %w", what, err)
	}
	return port, nil
}
