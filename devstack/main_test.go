package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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
}
