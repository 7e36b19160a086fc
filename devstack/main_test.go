package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/localstack"
	"github.com/otaflow/otaflow/internal/ota"
)

// TestStackRunsDemoRollout starts the whole local stack on free ports, as `go run ./devstack`
// does, runs the demo rollout on three simulated devices, then starts the stack again on the
// same data directory and finds the first run's rollout.
func TestStackRunsDemoRollout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts every server; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ports := make([]int, 6)
	for i := range ports {
		p, err := localstack.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	var out bytes.Buffer
	cfg := Config{DataDir: t.TempDir(), Devices: 3, TemporalPort: ports[0], UIPort: ports[1], MQTTPort: ports[2],
		PostgresPort: ports[3], HTTPPort: ports[4], MetricsPort: threeFreePorts(t), Out: &out}
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
	if err := s.demoRollout(ctx); err != nil {
		s.Close()
		t.Fatal(err)
	}
	s.Close()
	if !strings.Contains(out.String(), "completed: 3 succeeded") {
		t.Fatalf("demo output:\n%s", out.String())
	}
	name := strings.Fields(out.String()[strings.Index(out.String(), "Started rollout ")+len("Started rollout "):])[0]
	name = strings.TrimSuffix(name, ":")

	out.Reset()
	s, err = Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := s.Client.DescribeWorkflowExecution(ctx, ota.RolloutWorkflowID(name), "")
	if err != nil {
		t.Fatalf("the first run's rollout %s is gone after a restart: %v", name, err)
	}
	if st := d.GetWorkflowExecutionInfo().GetStatus().String(); st != "Completed" {
		t.Errorf("rollout %s is %s after the restart", name, st)
	}
}

// threeFreePorts returns a port that is free with the two after it.
func threeFreePorts(t *testing.T) int {
	t.Helper()
	for range 50 {
		p, err := localstack.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if p+2 < 65536 && localstack.CheckPortFree(p+1) == nil && localstack.CheckPortFree(p+2) == nil {
			return p
		}
	}
	t.Fatal("found no three free ports in a row")
	return 0
}
