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

// TestFreePortRun: a run is returned only when every port of it is free and not taken.
func TestFreePortRun(t *testing.T) {
	p, err := FreePortRun(11000, 19000, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	for j := range 3 {
		if err := CheckPortFree(p + j); err != nil {
			t.Fatalf("FreePortRun returned %d, but port %d: %v", p, p+j, err)
		}
	}
	// Hold the middle port: no run of 3 fits in [p, p+3) any more, and of single ports, p
	// is taken and p+1 held, which leaves p+2.
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tests := []struct {
		name    string
		n       int
		taken   map[int]string
		want    int
		wantErr string
	}{
		{"a run over the held port", 3, nil, 0, fmt.Sprintf("no 3 free ports in a row between %d and %d", p, p+2)},
		{"single ports, one taken, one held", 1, map[int]string{p: "someone"}, p + 2, ""},
		{"a run longer than the range", 4, nil, 0, fmt.Sprintf("no run of 4 ports fits between %d and %d", p, p+2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FreePortRun(p, p+3, tt.n, tt.taken)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("FreePortRun = %d, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("FreePortRun = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}
