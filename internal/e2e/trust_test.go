package e2e

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
)

// tampered writes a package of the test package's size with other bytes, as an attacker
// would put in its place, and points r at it with its md5: only the sha256 (and the
// signature over it) still name the genuine package.
func (e *env) tampered(r *ota.UpgradeRequest) {
	e.t.Helper()
	b := make([]byte, e.sys.Package.Size)
	if _, err := rand.Read(b); err != nil {
		e.t.Fatal(err)
	}
	path := filepath.Join(e.pkgDir, "tampered.bin")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		e.t.Fatal(err)
	}
	d, err := system.FileDigest(path)
	if err != nil {
		e.t.Fatal(err)
	}
	r.URL, r.MD5 = e.sys.FileURL("tampered.bin"), d.MD5
}

// TestSignedPackages runs PROTOCOL.md 1.1's package checks end to end, on the worker
// (pre-flight: no command reaches the device) and on the device alone (it refuses with -2):
// the upgrade fails, saying which check failed, and nothing is installed.
func TestSignedPackages(t *testing.T) {
	release := newPublisher(t, "release-1")
	rogue := newPublisher(t, "release-1") // another key under the trusted key's ID
	stranger := newPublisher(t, "release-9")
	trusted := pkgsig.Policy{Keys: release.keys}
	requiring := pkgsig.Policy{Keys: release.keys, RequireSignature: true}
	type signing func(e *env, r *ota.UpgradeRequest)
	signedBy := func(p publisher) signing {
		return func(e *env, r *ota.UpgradeRequest) { p.sign(t, r, e.sys.Package.SHA256) }
	}
	tests := []struct {
		name   string
		worker pkgsig.Policy // the worker's policy; zero: devices alone check
		device pkgsig.Policy
		faults simulator.Faults
		sign   signing
		// wantDesc starts the upgrade's failure desc; "" means it succeeds.
		wantDesc string
		// wantCode is the device's error code (-2) when the device refused, 0 when the worker did.
		wantCode int
	}{
		{name: "signed, checked by both", worker: trusted, device: trusted, sign: signedBy(release)},
		{name: "worker: bad signature", worker: trusted, device: trusted, sign: signedBy(rogue),
			wantDesc: "pre-flight check failed, no command was sent: bad signature: "},
		{name: "worker: unknown key", worker: trusted, device: trusted, sign: signedBy(stranger),
			wantDesc: `pre-flight check failed, no command was sent: unknown key_id: "release-9" is not a trusted key`},
		{name: "worker: tampered package", worker: trusted, device: trusted,
			sign:     func(e *env, r *ota.UpgradeRequest) { release.sign(t, r, e.sys.Package.SHA256); e.tampered(r) },
			wantDesc: "pre-flight check failed, no command was sent: sha256 mismatch: "},
		{name: "worker: missing signature under the policy", worker: requiring, device: requiring,
			wantDesc: "missing signature: the package is not signed, and a signature is required"},
		{name: "device: bad signature", device: trusted, sign: signedBy(rogue),
			wantDesc: "bad signature: ", wantCode: protocol.CodeMD5Mismatch},
		{name: "device: unknown key", device: trusted, sign: signedBy(stranger),
			wantDesc: `unknown key_id: "release-9"`, wantCode: protocol.CodeMD5Mismatch},
		{name: "device: tampered download", device: trusted, sign: signedBy(release),
			faults:   simulator.Faults{Tamper: simulator.Fault{Rate: 1}},
			wantDesc: "sha256 mismatch: ", wantCode: protocol.CodeMD5Mismatch},
		{name: "device: missing signature under its policy", device: requiring,
			wantDesc: "missing signature: ", wantCode: protocol.CodeMD5Mismatch},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := "sig" + string(rune('a'+i))
			e := newEnv(t, system.Config{Devices: 1, Prefix: prefix, WorkerPolicy: tt.worker, DevicePolicy: tt.device, Faults: tt.faults})
			id := simID(prefix, 1)
			req := e.request(id)
			req.MaxAttempts = 1
			if tt.sign != nil {
				tt.sign(e, &req)
			}
			run, err := ota.StartDeviceUpgrade(e.ctx, e.c, req)
			if err != nil {
				t.Fatal(err)
			}
			st, err := ota.UpgradeResult(e.ctx, run)
			dev, _ := e.sys.Fleet.Device(id)
			if tt.wantDesc == "" {
				if err != nil || st.State != ota.StateSucceeded || dev.Installs != 1 {
					t.Fatalf("result %s (%q), err %v, device installs %d; want succeeded", st.State, st.Desc, err, dev.Installs)
				}
				n := e.historyLength(run.GetID(), run.GetRunID())
				t.Logf("history events of a signed package's upgrade, pre-flight check included: %d", n)
				return
			}
			var appErr *temporal.ApplicationError
			if st.State != ota.StateFailed || !errors.As(err, &appErr) || appErr.Type() != ota.ErrTypeUpgradeFailed ||
				!strings.HasPrefix(st.Desc, tt.wantDesc) || st.ErrorCode != tt.wantCode {
				t.Fatalf("result %s code %d (%q), err %v; want failed with code %d and a desc starting %q",
					st.State, st.ErrorCode, st.Desc, err, tt.wantCode, tt.wantDesc)
			}
			if dev.Installs != 0 || dev.Status["firmware_ver"] != "1.0" {
				t.Errorf("device installed %d times and reports %v: a refused package must not be installed", dev.Installs, dev.Status)
			}
			if commands := len(dev.Received); (tt.wantCode == 0) != (commands == 0) {
				t.Errorf("device received %d commands; the worker's refusal sends none, the device's needs one", commands)
			}
			if tt.wantCode != 0 && !strings.HasPrefix(dev.LastDesc, tt.wantDesc) {
				t.Errorf("device reported %q, want a desc starting %q", dev.LastDesc, tt.wantDesc)
			}
			up, err := e.store.LatestUpgrade(e.ctx, id)
			if err != nil || up.State != ota.StateFailed || up.ErrorDesc != st.Desc || up.ErrorCode != tt.wantCode {
				t.Errorf("upgrade record %+v, err %v; want failed with the same reason", up, err)
			}
		})
	}
}

// TestProtocolV1Devices: devices built for PROTOCOL.md 1.0 know neither sha256 nor
// signatures: a signed package, checked by the worker, still upgrades them.
func TestProtocolV1Devices(t *testing.T) {
	release := newPublisher(t, "release-1")
	e := newEnv(t, system.Config{Devices: 2, Prefix: "v1dev", Protocol: simulator.ProtocolV1,
		WorkerPolicy: pkgsig.Policy{Keys: release.keys, RequireSignature: true}})
	req := e.request(simID("v1dev", 1))
	release.sign(t, &req, e.sys.Package.SHA256)
	if st, err := e.upgrade(req); err != nil || st.State != ota.StateSucceeded || st.Reported != "1.1" {
		t.Fatalf("signed package on a protocol 1 device: %s (%q), err %v; want succeeded", st.State, st.Desc, err)
	}
	// Through a rollout too, which checks the package once for all its devices.
	r := e.rollout("v1-rollout", "v1dev")
	release.sign(t, &r.Upgrade, e.sys.Package.SHA256)
	r.Targets.IncludeUpToDate = true
	p, err := e.finish(e.startRollout(r))
	if err != nil || p.State != ota.RolloutCompleted || p.Counts.Succeeded != 1 || p.Counts.Skipped != 1 {
		t.Fatalf("rollout %s, counts %+v, err %v; want one succeeded and one skipped", p.State, p.Counts, err)
	}
}

// TestRolloutPreflightChecksSignature: a rollout whose package fails the worker's check
// fails in its pre-flight, and no device gets a command.
func TestRolloutPreflightChecksSignature(t *testing.T) {
	release, rogue := newPublisher(t, "release-1"), newPublisher(t, "release-1")
	e := newEnv(t, system.Config{Devices: 2, Prefix: "rpre", WorkerPolicy: pkgsig.Policy{Keys: release.keys}})
	r := e.rollout("rpre-rollout", "rpre")
	rogue.sign(t, &r.Upgrade, e.sys.Package.SHA256)
	p, err := e.finish(e.startRollout(r))
	const want = `pre-flight check failed, no device was touched: bad signature: key "release-1" did not sign`
	if err == nil || p.State != ota.RolloutFailed || !strings.HasPrefix(p.Reason, want) || p.Counts.Started != 0 {
		t.Fatalf("rollout %s (%q), counts %+v, err %v; want failed with the reason %q...", p.State, p.Reason, p.Counts, err, want)
	}
	if stats := e.sys.Fleet.Stats(); stats.Commands != 0 {
		t.Errorf("devices received %d commands", stats.Commands)
	}
}
