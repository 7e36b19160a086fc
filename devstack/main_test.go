package main

import (
	"bytes"
	"context"
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
		PostgresPort: ports[3], HTTPPort: ports[4], Out: &out}
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
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
	d, err := s.Client.DescribeWorkflow(ctx, ota.RolloutWorkflowID(name), "")
	if err != nil {
		t.Fatalf("the first run's rollout %s is gone after a restart: %v", name, err)
	}
	if st := d.Status.String(); st != "Completed" {
		t.Errorf("rollout %s is %s after the restart", name, st)
	}
}
