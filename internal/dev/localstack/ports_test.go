package localstack

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
)

func TestFreePortCanBeListenedOn(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckPortFree(port); err != nil {
		t.Fatalf("FreePort returned %d, but: %v", port, err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("listen on the port FreePort returned: %v", err)
	}
	l.Close()
}

func TestCheckPortFree(t *testing.T) {
	l := listen(t)
	busy := l.Addr().(*net.TCPAddr).Port
	tests := []struct {
		name      string
		port      int
		inUse     bool
		wantInErr string
	}{
		{name: "taken", port: busy, inUse: true, wantInErr: fmt.Sprint(busy)},
		{name: "zero", port: 0, wantInErr: "not a TCP port"},
		{name: "negative", port: -1, wantInErr: "not a TCP port"},
		{name: "too big", port: 70000, wantInErr: "not a TCP port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPortFree(tt.port)
			if err == nil {
				t.Fatalf("CheckPortFree(%d) = nil, want an error", tt.port)
			}
			if got := errors.Is(err, ErrPortInUse); got != tt.inUse {
				t.Errorf("errors.Is(%v, ErrPortInUse) = %v, want %v", err, got, tt.inUse)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantInErr)
			}
		})
	}
}

func TestPickPortNamesPortAndFlag(t *testing.T) {
	l := listen(t)
	busy := l.Addr().(*net.TCPAddr).Port
	_, err := pickPort(busy, "Temporal gRPC", "--temporal-port")
	if !errors.Is(err, ErrPortInUse) {
		t.Fatalf("pickPort on a taken port: %v, want ErrPortInUse", err)
	}
	for _, want := range []string{"Temporal gRPC port", fmt.Sprint(busy), "--temporal-port"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	got, err := pickPort(0, "Temporal gRPC", "--temporal-port")
	if err != nil || got == 0 {
		t.Fatalf("pickPort(0) = %d, %v; want a free port", got, err)
	}
}

// listen holds a port on 127.0.0.1 until the test ends.
func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
