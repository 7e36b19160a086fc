package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/ota"
)

// TestStackRunsDemoRollout starts the whole local stack on free ports, as `go run ./devstack`
// does, and as `go run ./devstack --real-servers` does (the production topology: the Temporal
// server on PostgreSQL, Mosquitto, two workers and two bridges as processes), runs the demo
// rollout on three simulated devices, then starts the stack again on the same data directory:
// it finds the first run's rollout, and the simulated devices report the version they
// installed (not their initial one, beside an upgrade that succeeded), so the demo has nothing
// left to roll out.
func TestStackRunsDemoRollout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts every server; skipped in -short mode")
	}
	for _, real := range []bool{false, true} {
		t.Run(map[bool]string{false: "dev server", true: "real servers"}[real], func(t *testing.T) { testStackRunsDemoRollout(t, real) })
	}
}

func testStackRunsDemoRollout(t *testing.T, real bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	base := freePortRun(t, 9)
	ports := []int{base, base + 1, base + 2, base + 3, base + 4, base + 5}
	var out bytes.Buffer
	cfg := Config{DataDir: t.TempDir(), Devices: 3, TemporalPort: ports[0], UIPort: ports[1], MQTTPort: ports[2],
		PostgresPort: ports[3], HTTPPort: ports[4], RealServers: real, MetricsPort: base + 6, Out: &out}
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Each /metrics URL on a line of its own, and each serves.
	s.printMetrics()
	for i, part := range []string{"worker", "bridge", "broker"} {
		url := fmt.Sprintf("http://127.0.0.1:%d/metrics", cfg.MetricsPort+i)
		if !strings.Contains(out.String(), "\n  Metrics "+part+strings.Repeat(" ", 8-len(part))+url+"\n") {
			t.Errorf("no line for the %s's metrics at %s:\n%s", part, url, out.String())
		}
		resp, err := http.Get(url)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %v %v", url, resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	// The broker's page has its clients: the embedded broker's by kind, Mosquitto's read
	// from $SYS (kind="all").
	brokerURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", cfg.MetricsPort+2)
	want := map[bool]string{false: `otaflow_broker_clients_connected{kind="device"} 3`, true: `otaflow_broker_clients_connected{kind="all"} `}[real]
	var page string
	if !assert.Eventually(t, func() bool {
		page = httpGet(brokerURL)
		return strings.Contains(page, "\n"+want)
	}, 30*time.Second, 100*time.Millisecond) {
		s.Close()
		t.Fatalf("no %q at %s:\n%s", want, brokerURL, page)
	}
	if err := s.demoRollout(ctx); err != nil {
		s.Close()
		t.Fatal(err)
	}
	firstSig := s.Signed.Sig
	s.Close()
	if !strings.Contains(out.String(), "completed: 3 succeeded") || !strings.Contains(out.String(), "firmware 1.1, signed by devstack-demo") {
		t.Fatalf("demo output:\n%s", out.String())
	}
	// The private key stays with the publisher, mode 0600; the trusted keys are public keys.
	if fi, err := os.Stat(filepath.Join(cfg.DataDir, "publisher", "devstack-demo.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the demo's private key: %v, %v; want mode 0600", fi, err)
	}
	if trusted, err := os.ReadDir(filepath.Join(cfg.DataDir, "trusted-keys")); err != nil || len(trusted) != 1 || trusted[0].Name() != "devstack-demo.pub" {
		t.Errorf("trusted keys directory holds %v (%v), want devstack-demo.pub alone", trusted, err)
	}
	name := strings.Fields(out.String()[strings.Index(out.String(), "Started rollout ")+len("Started rollout "):])[0]
	name = strings.TrimSuffix(name, ":")

	out.Reset()
	s, err = Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Signed.Sig != firstSig {
		t.Errorf("the second start signed the demo package with another key")
	}
	d, err := s.Client.DescribeWorkflow(ctx, ota.RolloutWorkflowID(name), "")
	if err != nil {
		t.Fatalf("the first run's rollout %s is gone after a restart: %v", name, err)
	}
	if st := d.Status.String(); st != "Completed" {
		t.Errorf("rollout %s is %s after the restart", name, st)
	}
	for _, id := range []string{"sim-00001", "sim-00002", "sim-00003"} {
		if st, _ := s.Fleet.Device(id); st.Status["firmware_ver"] != "1.1" {
			t.Errorf("after the restart %s runs %v, want firmware 1.1", id, st.Status)
		}
		// What `starter status` shows as reported.
		if dev, err := s.Store.GetDevice(ctx, id); err != nil || dev.Reported["firmware_ver"] != "1.1" {
			t.Errorf("after the restart PostgreSQL has %s reporting %v (%v), want firmware 1.1", id, dev.Reported, err)
		}
		if u, err := s.Store.LatestUpgrade(ctx, id); err != nil || u.State != ota.StateSucceeded || u.Version != "1.1" {
			t.Errorf("%s's latest upgrade = %+v (%v), want succeeded to 1.1", id, u, err)
		}
	}
	if err := s.demoRollout(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "No simulated device runs firmware 1.0 any more") || strings.Contains(out.String(), "Started rollout") {
		t.Errorf("the second demo:\n%s", out.String())
	}
}

// httpGet returns the body of url, "" when it cannot be read.
func httpGet(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

// freePortRun returns the first of n free ports in a row, below Linux's ephemeral range
// (32768-60999) and the Temporal server's membership ports (20000-32767): the stack's second
// start must find them free again, and a port of the ephemeral range that is free now can
// meanwhile become the local port of one of the many connections the servers open, or a port
// picked free for a server.
func freePortRun(t *testing.T, n int) int {
	t.Helper()
	p, err := localstack.FreePortRun(10000, 20000, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
