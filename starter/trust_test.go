package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.temporal.io/api/serviceerror"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// signedPackage is a package file signed with a new key: the key pair, a directory that
// trusts it, the package's sidecar and its fields.
type signedPackage struct {
	body                []byte
	trusted, other      string // trusted keys directories: the signing key's, and another key's of the same ID
	sidecar             string
	sc                  pkgsig.Sidecar
	unsignedMD5, sizeOf string
}

func newSignedPackage(t *testing.T) signedPackage {
	t.Helper()
	dir := t.TempDir()
	p := signedPackage{body: []byte(strings.Repeat("OTAflow signed package\n", 100))}
	file := filepath.Join(dir, "fw-1.1.bin")
	if err := os.WriteFile(file, p.body, 0o644); err != nil {
		t.Fatal(err)
	}
	keys := func(name string) string {
		if _, err := pkgsig.WriteKeyPair(filepath.Join(dir, name), "release-1"); err != nil {
			t.Fatal(err)
		}
		trusted := filepath.Join(dir, name+"-trusted")
		if err := os.Mkdir(trusted, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, name, "release-1.pub"), filepath.Join(trusted, "release-1.pub")); err != nil {
			t.Fatal(err)
		}
		return trusted
	}
	p.trusted, p.other = keys("ours"), keys("theirs")
	p.sidecar = filepath.Join(dir, "fw-1.1.json")
	runCLI(t, context.Background(), offline("package", "sign", "--key", filepath.Join(dir, "ours", "release-1.key"),
		"--type", "firmware", "--version", "1.1", "--file", file, "--sidecar", p.sidecar)...).check(t, 0)
	sc, err := pkgsig.ReadSidecar(p.sidecar)
	if err != nil {
		t.Fatal(err)
	}
	p.sc = sc
	sum := md5.Sum(p.body)
	p.unsignedMD5, p.sizeOf = hex.EncodeToString(sum[:]), strconv.Itoa(len(p.body))
	return p
}

// TestPackageTrustFlags: the integrity, signature policy, compatibility and soak flags are
// checked before anything is dialled: bad input exits 2 saying why; good input goes on (and
// here fails to reach Temporal, exit 1).
func TestPackageTrustFlags(t *testing.T) {
	p := newSignedPackage(t)
	url := []string{"--url", "https://files.example.com/fw-1.1.bin"}
	upgrade := func(args ...string) []string {
		return slices.Concat([]string{"upgrade", "--device", "pump-1"}, url, args)
	}
	flags := func(sc pkgsig.Sidecar) []string {
		return []string{"--type", sc.Type, "--version", sc.Version, "--md5", sc.MD5, "--size", strconv.FormatInt(sc.Size, 10),
			"--sha256", sc.SHA256, "--sig", sc.Sig, "--key-id", sc.KeyID}
	}
	unsigned := []string{"--type", "firmware", "--version", "1.1", "--md5", p.unsignedMD5, "--size", p.sizeOf}
	// An upgrade whose flags pass their checks goes on to check the device registry, which
	// these offline runs do not have.
	const flagsPassed = "the upgrade checks the device registry first"
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"sidecar", upgrade("--sidecar", p.sidecar), exitUsage, flagsPassed},
		{"sidecar, verified", upgrade("--sidecar", p.sidecar, "--trusted-keys", p.trusted), exitUsage, flagsPassed},
		{"signature flags, verified", upgrade(append(flags(p.sc), "--trusted-keys", p.trusted)...), exitUsage, flagsPassed},
		{"signature, no trusted keys here: the worker verifies", upgrade(append(flags(p.sc), "--require-signatures")...), exitUsage, flagsPassed},
		{"sidecar with agreeing flags", upgrade("--sidecar", p.sidecar, "--version", "1.1", "--size", p.sizeOf), exitUsage, flagsPassed},
		{"sidecar with another version", upgrade("--sidecar", p.sidecar, "--version", "1.2"), exitUsage,
			"--version 1.2 differs from the sidecar's 1.1; the signature covers the sidecar's"},
		{"sidecar and --sig", upgrade("--sidecar", p.sidecar, "--sig", p.sc.Sig), exitUsage, "--sidecar gives the sha256, sig and key_id: leave out --sig"},
		{"missing sidecar", upgrade("--sidecar", filepath.Join(t.TempDir(), "none.json")), exitUsage, "--sidecar: sidecar: open"},
		{"sidecar without a URL", []string{"upgrade", "--device", "pump-1", "--sidecar", p.sidecar}, exitUsage, "missing required flag(s) --url"},
		{"bad signature", upgrade("--sidecar", p.sidecar, "--trusted-keys", p.other), exitUsage,
			`the package's signature fails against the trusted keys in ` + p.other + `: bad signature: key "release-1" did not sign`},
		{"signature of another version", upgrade(append(flags(p.sc), "--trusted-keys", p.trusted, "--version", "1.2")...), exitUsage,
			`bad signature: key "release-1" did not sign type "firmware", version "1.2"`},
		{"unknown key", upgrade(append(flags(p.sc), "--trusted-keys", p.trusted, "--key-id", "release-9")...), exitUsage,
			`unknown key_id: "release-9" is not a trusted key (trusted: release-1)`},
		{"unsigned, signatures required", upgrade(append(unsigned, "--require-signatures")...), exitUsage,
			"the package is not signed, and --require-signatures (OTAFLOW_REQUIRE_SIGNATURES) requires a signature"},
		{"unsigned, not required", upgrade(append(unsigned, "--trusted-keys", p.trusted)...), exitUsage, flagsPassed},
		{"sig without key ID", upgrade(append(unsigned, "--sha256", p.sc.SHA256, "--sig", p.sc.Sig)...), exitUsage, "--sig needs --key-id and --sha256"},
		{"sig without sha256", upgrade(append(unsigned, "--key-id", "release-1", "--sig", p.sc.Sig)...), exitUsage, "--sig needs --key-id and --sha256"},
		{"key ID without sig", upgrade(append(unsigned, "--key-id", "release-1")...), exitUsage, "--key-id without --sig"},
		{"uppercase sha256", upgrade(append(unsigned, "--sha256", strings.ToUpper(p.sc.SHA256))...), exitUsage, "--sha256 must be 64 lowercase hex digits"},
		{"short signature", upgrade(append(unsigned, "--sha256", p.sc.SHA256, "--key-id", "release-1", "--sig", "c2ln")...), exitUsage, "--sig: sig must be 64 bytes in standard base64"},
		{"trusted keys missing", upgrade("--sidecar", p.sidecar, "--trusted-keys", filepath.Join(t.TempDir(), "none")), exitUsage, "--trusted-keys: trusted keys:"},
		{"bad version range", upgrade(append(unsigned, "--compatible-versions", ">=1.0,<<2.0")...), exitUsage, `compatible versions ">=1.0,<<2.0": give constraints like ">=1.0,<2.0"`},
		{"empty version range", upgrade(append(unsigned, "--compatible-versions", " ")...), exitUsage, "--compatible-versions must not be empty"},
		{"label without value", upgrade(append(unsigned, "--compatible-label", "model")...), exitUsage, `--compatible-label: compatible label "model" is not KEY=VALUE`},
		{"label twice", upgrade(append(unsigned, "--compatible-label", "model=a", "--compatible-label", "model=b")...), exitUsage, `compatible label "model" given twice`},
		{"negative soak", upgrade(append(unsigned, "--soak", "-1m")...), exitUsage, "--soak must be 0 (no soak) or more, not -1m0s"},
		{"compatibility without a database", upgrade(append(unsigned, "--compatible-label", "model=pump-v2", "--compatible-versions", ">=1.0,<2.0", "--soak", "1h")...),
			exitUsage, flagsPassed},
		{"rollout start, sidecar", slices.Concat([]string{"rollout", "start", "--name", "r1", "--prefix", "pump-", "--sidecar", p.sidecar,
			"--compatible-label", "model=pump-v2", "--soak", "10m", "--require-signatures"}, url), exitFailure, "cannot reach Temporal"},
		{"rollout start, bad signature", slices.Concat([]string{"rollout", "start", "--name", "r1", "--prefix", "pump-", "--sidecar", p.sidecar,
			"--trusted-keys", p.other}, url), exitUsage, "bad signature"},
		{"rollout schedule, unsigned, signatures required", slices.Concat([]string{"rollout", "schedule", "--name", "r1", "--prefix", "pump-",
			"--at", "2099-01-01T00:00:00Z", "--require-signatures"}, unsigned, url), exitUsage, "the package is not signed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, context.Background(), offline(tt.args...)...)
			r.check(t, tt.code, tt.want)
		})
	}
}

// TestUpgradeRefusesIncompatibleDevice: with DATABASE_URL, `upgrade` reads the device and
// refuses one the package does not fit (exit 2, saying why); nothing is started. A device
// that fits is upgraded.
func TestUpgradeRefusesIncompatibleDevice(t *testing.T) {
	ctx := context.Background()
	f := startWorker(t)
	cli := func(args ...string) result { return runCLI(t, ctx, servers(f.dbURL, args...)...) }
	add := func(id, model, version string) {
		t.Helper()
		endUpgrade(t, id)
		cli("devices", "add", "--device", id, "--label", "model="+model).check(t, 0)
		if err := f.store.RecordStatus(ctx, id, protocol.Status{"firmware_ver": version}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	add("fit-1", "pump-v1", "1.0")
	add("fit-2", "pump-v2", "2.1")
	add("fit-3", "pump-v2", "1.4")
	upgrade := func(dev string) []string {
		return []string{"upgrade", "--device", dev, "--type", "firmware", "--version", "2.0", "--url", "https://files.example.com/fw-2.0.bin",
			"--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "4096", "--compatible-label", "model=pump-v2", "--compatible-versions", ">=1.0,<2.0"}
	}
	tests := []struct{ dev, want string }{
		{"fit-1", `device fit-1 does not fit the package: label model is "pump-v1", the package needs "pump-v2"; nothing was started`},
		{"fit-2", "device fit-2 does not fit the package: version 2.1 is outside >=1.0,<2.0; nothing was started"},
		{"unregistered-7", "unknown device unregistered-7: nothing was started; register it first"},
	}
	for _, tt := range tests {
		cli(upgrade(tt.dev)...).check(t, exitUsage, tt.want)
		_, err := testenv.TemporalClient().DescribeWorkflow(ctx, ota.DeviceWorkflowID(tt.dev), "")
		var notFound *serviceerror.NotFound
		if !errors.As(err, &notFound) {
			t.Errorf("%s: a workflow was started (describe: %v)", tt.dev, err)
		}
	}
	cli(upgrade("fit-3")...).check(t, 0)
	cmd := f.command(t, "fit-3", 1)
	signalStatus(t, "fit-3", protocol.Status{"firmware_ver": "2.0"})
	endUpgrade(t, "fit-3")
	if cmd.Version != "2.0" {
		t.Errorf("command %+v", cmd)
	}
}

// TestUpgradeSignedPackageWithSidecar: `upgrade --sidecar` sends the signed package: the
// worker checks it (downloading it) before the first command, which carries its sha256,
// signature and key ID.
func TestUpgradeSignedPackageWithSidecar(t *testing.T) {
	ctx := context.Background()
	p := newSignedPackage(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(p.body) }))
	defer srv.Close()
	f := startWorker(t)
	const dev = "signed-1"
	endUpgrade(t, dev)
	runCLI(t, ctx, servers(f.dbURL, "devices", "add", "--device", dev)...).check(t, 0)
	r := runCLI(t, ctx, servers(f.dbURL, "upgrade", "--device", dev, "--url", srv.URL+"/fw-1.1.bin", "--sidecar", p.sidecar,
		"--trusted-keys", p.trusted, "--require-signatures", "--json")...)
	r.check(t, 0)
	var rep upgradeReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("upgrade --json printed %q: %v", r.stdout, err)
	}
	cmd := f.command(t, dev, 1)
	if cmd.SHA256 != p.sc.SHA256 || cmd.Sig != p.sc.Sig || cmd.KeyID != "release-1" || cmd.MD5 != p.sc.MD5 || cmd.Size != p.sc.Size {
		t.Errorf("command %+v; want the sidecar's package and signature", cmd)
	}
	signalStatus(t, dev, protocol.Status{"firmware_ver": "1.1"})
	st, err := ota.UpgradeResult(ctx, testenv.TemporalClient().GetWorkflow(ctx, rep.WorkflowID, rep.RunID))
	if err != nil || st.State != ota.StateSucceeded {
		t.Errorf("upgrade ended %s (%q), err %v", st.State, st.Desc, err)
	}
}

// TestStatusShowsCancelConfirmation: `status` shows the device's last report of the attempt,
// an error code too, such as the confirmation of a cancel that came after the upgrade ended.
func TestStatusShowsCancelConfirmation(t *testing.T) {
	at := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	rep := statusReport{
		Device:  store.Device{ID: "pump-1", CreatedAt: at},
		Upgrade: &store.Upgrade{RunID: "run", WorkflowID: "ota-pump-1", DeviceID: "pump-1", Type: "firmware", Version: "1.1", State: ota.StateCanceled, Attempt: 1, CommandID: "run-1", CreatedAt: at},
		LastReport: &store.ProgressEvent{DeviceID: "pump-1", CommandID: "run-1", Type: "firmware", Version: "1.1",
			Progress: protocol.CodeOther, Desc: protocol.DescCanceled, ReceivedAt: at},
	}
	var out strings.Builder
	if err := printStatus(&out, rep); err != nil {
		t.Fatal(err)
	}
	want := "Last report  code -4 (" + protocol.CodeText(protocol.CodeOther) + ") canceled  (at " + formatTime(at) + ")"
	if !strings.Contains(out.String(), want) {
		t.Errorf("status shows:\n%s\nwant a line with %q", out.String(), want)
	}
}
