package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/ota"
	"go.temporal.io/sdk/client"
)

// demoRollout rolls the demo package out to the simulated fleet in three waves and prints
// the progress until the rollout ends.
func (s *Stack) demoRollout(ctx context.Context) error {
	// The demo upgrades the simulated devices still on firmware 1.0. They keep what they
	// installed across restarts: once none is left on 1.0, there is nothing to show.
	onOld := map[string]string{"firmware_ver": "1.0"}
	left, err := s.Store.CountDevices(ctx, ota.DeviceFilter{Prefix: "sim-", Labels: onOld})
	if err != nil {
		return err
	}
	if left == 0 {
		s.say("\nNo simulated device runs firmware 1.0 any more (the devices keep what they installed, in %s):",
			s.simStateDir())
		s.say("no demo rollout this time. Roll something else out with the starter (below), or delete %s to start afresh.", s.cfg.DataDir)
		return nil
	}
	name := "demo-" + time.Now().UTC().Format("20060102-150405")
	req := ota.RolloutRequest{
		Name: name,
		Upgrade: ota.UpgradeRequest{Type: s.Signed.Type, Version: s.Signed.Version,
			URL: s.Package.URL, MD5: s.Package.MD5, Size: s.Package.Size,
			SHA256: s.Signed.SHA256, Sig: s.Signed.Sig, KeyID: s.Signed.KeyID},
		Targets:         ota.Targets{Prefix: "sim-", Where: onOld},
		Waves:           []ota.Wave{{Percent: 10}, {Percent: 50, Bake: ota.Duration(3 * time.Second)}, {Percent: 100}},
		MaxInFlight:     20,
		FailurePercent:  20,
		FailureMinCount: 3,
	}
	run, err := ota.StartRollout(ctx, s.Client, req)
	if err != nil {
		return err
	}
	s.say("\nStarted rollout %s: firmware 1.1, signed by %s, to the %d simulated devices on 1.0 in waves of 10%%, 50%%, 100%%.", name, s.Signed.KeyID, left)
	if s.UIURL != "" {
		s.say("  Watch it in the Web UI: %s/namespaces/default/workflows/%s", s.UIURL, run.GetID())
	}
	p, err := s.watchRollout(ctx, run)
	if err != nil {
		return err
	}
	s.say("Rollout %s %s: %d succeeded, %d skipped, %d failed, %d timed out of %d devices.",
		name, p.State, p.Counts.Succeeded, p.Counts.Skipped, p.Counts.Failed, p.Counts.TimedOut, p.Total)
	return nil
}

// watchRollout prints a progress line whenever the rollout's counts change, until it ends.
func (s *Stack) watchRollout(ctx context.Context, run client.WorkflowRun) (ota.RolloutProgress, error) {
	done := make(chan error, 1)
	go func() { done <- run.Get(ctx, nil) }()
	last := ""
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		var p ota.RolloutProgress
		if v, err := s.Client.QueryWorkflow(ctx, run.GetID(), "", ota.QueryProgress); err == nil {
			_ = v.Get(&p)
			if line := progressLine(p); line != last {
				s.say("%s", line)
				last = line
			}
		}
		select {
		case err := <-done:
			var final ota.RolloutProgress
			v, qerr := s.Client.QueryWorkflow(ctx, run.GetID(), "", ota.QueryProgress)
			if qerr == nil {
				qerr = v.Get(&final)
			}
			if qerr != nil {
				return final, errors.Join(err, qerr)
			}
			return final, nil
		case <-ctx.Done():
			return p, ctx.Err()
		case <-tick.C:
		}
	}
}

// progressLine draws one line: the state, the current wave and a bar of the finished devices.
// Before the waves are cut (pre-flight), it says what the rollout does.
func progressLine(p ota.RolloutProgress) string {
	if len(p.Waves) == 0 {
		return fmt.Sprintf("  %-16s checking the package and fixing the targets", p.State)
	}
	const width = 30
	finished := p.Counts.Finished()
	filled := 0
	if p.Total > 0 {
		filled = width * finished / p.Total
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	line := fmt.Sprintf("  %-16s wave %d/%d [%s] %d/%d done: %d ok, %d failed, %d running",
		p.State, p.CurrentWave, len(p.Waves), bar, finished, p.Total,
		p.Counts.Succeeded+p.Counts.Skipped, p.Counts.Failures(), p.Counts.Running())
	if p.Reason != "" {
		line += " (" + p.Reason + ")"
	}
	return line
}

// printNext prints the starter commands to try against this stack.
func (s *Stack) printNext() {
	env := fmt.Sprintf("export TEMPORAL_ADDRESS=%s DATABASE_URL='%s'", s.TemporalAddress, s.DatabaseURL)
	if shown := credential.RedactURL(s.DatabaseURL); shown != s.DatabaseURL {
		// A DATABASE_URL of the caller's, with a password that is not printed: it is set already.
		env = fmt.Sprintf("export TEMPORAL_ADDRESS=%s   # and your DATABASE_URL (%s)", s.TemporalAddress, shown)
	}
	s.say("\nTry next, in another terminal:")
	s.say("  %s", env)
	if s.real != nil {
		s.say("  export MQTT_ADMIN_URL=tcp://%s:$(cat %s)@%s   # devices add|import|rotate-secret|disable create and change broker accounts",
			localstack.DefaultMosquittoAdmin, filepath.Join(s.cfg.DataDir, "real", "mqtt-admin.secret"), s.real.Broker.Addr())
	}
	s.say("  go build -o bin/ ./starter   # once (go run would turn the starter's exit codes 2 and 3 into 1)")
	s.say("  bin/starter devices list")
	s.say("  bin/starter status --device sim-00001")
	s.say("  bin/starter rollout list")
	s.say("  bin/starter package inspect --url %s", s.Package.URL)
	s.say("  bin/starter upgrade --device sim-00002 --url %s --sidecar %s --trusted-keys %s --soak 30s --wait",
		s.Package.URL, s.AppSidecar, s.Publisher.trustedDir)
	if s.UIURL != "" {
		s.say("Web UI: %s (filter with OtaState, OtaDevice, OtaRollout, OtaTargetVersion)", s.UIURL)
	}
}
