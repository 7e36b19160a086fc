package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/pkgsig"
)

// keygen makes a key pair with `package keygen` and returns its files.
func keygen(t *testing.T, dir, keyID string) pkgsig.KeyFiles {
	t.Helper()
	runCLI(t, context.Background(), offline("package", "keygen", "--out", dir, "--key-id", keyID)...).check(t, 0)
	return pkgsig.KeyFiles{Private: filepath.Join(dir, keyID+".key"), Public: filepath.Join(dir, keyID+".pub")}
}

// trustedDir is a trusted keys directory holding copies of the public keys given.
func trustedDir(t *testing.T, pubs ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, pub := range pubs {
		data, err := os.ReadFile(pub)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(pub)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPackageKeygen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	r := runCLI(t, context.Background(), offline("package", "keygen", "--out", dir, "--key-id", "release-2026")...)
	r.check(t, 0)
	priv, pub := filepath.Join(dir, "release-2026.key"), filepath.Join(dir, "release-2026.pub")
	for _, want := range []string{"private key  " + priv, "public key   " + pub, "starter package sign --key " + priv + " --key-id release-2026"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if fi, err := os.Stat(priv); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v, %v; want mode 0600", fi, err)
	}
	key, err := pkgsig.ReadPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubKey, err := pkgsig.ReadPublicKey(pub)
	if err != nil || !pubKey.Equal(key.Public()) {
		t.Fatalf("public key file: %v", err)
	}
	before, _ := os.ReadFile(priv)

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"existing key", []string{"--out", dir, "--key-id", "release-2026"}, []string{"release-2026.key already exists; refusing to overwrite"}},
		{"bad key ID", []string{"--out", dir, "--key-id", "release/2026"}, []string{"--key-id: key_id must be 1 to 64 characters of A-Z a-z 0-9 _ . -"}},
		{"key ID too long", []string{"--out", dir, "--key-id", strings.Repeat("k", 65)}, []string{"--key-id"}},
		{"no key ID", []string{"--out", dir}, []string{"missing required flag(s) --key-id"}},
		{"no directory", []string{"--key-id", "k"}, []string{"missing required flag(s) --out"}},
		{"positional argument", []string{"--out", dir, "--key-id", "k", "now"}, []string{`unexpected argument "now"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, context.Background(), offline(append([]string{"package", "keygen"}, tt.args...)...)...)
			r.check(t, exitUsage, tt.want...)
			if r.stdout != "" {
				t.Errorf("stdout: %s", r.stdout)
			}
		})
	}
	if after, _ := os.ReadFile(priv); !bytes.Equal(before, after) {
		t.Error("the private key was overwritten")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("the key directory holds %d files, want the one key pair", len(entries))
	}
}

// packageServer serves testPackage at /fw/1.1.bin.
func packageServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fw/1.1.bin" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(testPackage)))
		_, _ = w.Write(testPackage)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestPackageSign(t *testing.T) {
	t.Setenv(envTrustedKeys, "")
	dir := t.TempDir()
	keys := keygen(t, filepath.Join(dir, "keys"), "release")
	other := keygen(t, filepath.Join(dir, "other"), "release") // same ID, another key
	trusted := trustedDir(t, keys.Public)
	file := filepath.Join(dir, "fw-1.1.bin")
	if err := os.WriteFile(file, testPackage, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := packageServer(t)
	pub, err := pkgsig.LoadTrustedKeys(trusted)
	if err != nil {
		t.Fatal(err)
	}
	want := pkgsig.Package{Type: "firmware", Version: "1.1", Size: int64(len(testPackage)), SHA256: sha256Hex(testPackage)}
	sign := func(args ...string) result {
		return runCLI(t, context.Background(), offline(append([]string{"package", "sign", "--type", "firmware", "--version", "1.1"}, args...)...)...)
	}

	for _, tt := range []struct {
		name string
		args []string
	}{
		{"file", []string{"--key", keys.Private, "--key-id", "release", "--file", file}},
		{"URL", []string{"--key", keys.Private, "--key-id", "release", "--url", srv.URL + "/fw/1.1.bin"}},
		{"key ID from the key file's name", []string{"--key", keys.Private, "--file", file}},
		{"checked against the trusted keys", []string{"--key", keys.Private, "--file", file, "--trusted-keys", trusted}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := sign(tt.args...)
			r.check(t, 0)
			lines := map[string]string{}
			for _, line := range strings.Split(r.stdout, "\n") {
				if k, v, ok := strings.Cut(line, " "); ok {
					lines[k] = strings.TrimSpace(v)
				}
			}
			if lines["sha256"] != want.SHA256 || lines["md5"] != md5Hex(testPackage) || lines["size"] != strconv.Itoa(len(testPackage)) || lines["key_id"] != "release" {
				t.Fatalf("output:\n%s", r.stdout)
			}
			if err := pub.Verify(want, lines["sig"], "release"); err != nil {
				t.Fatalf("the printed signature does not verify: %v", err)
			}
			if !strings.Contains(r.stdout, "--sha256 "+want.SHA256+" --sig "+lines["sig"]+" --key-id release\n") {
				t.Errorf("no ready-to-paste flags:\n%s", r.stdout)
			}
		})
	}

	t.Run("sidecar and JSON", func(t *testing.T) {
		path := filepath.Join(dir, "fw-1.1.json")
		r := sign("--key", keys.Private, "--file", file, "--sidecar", path, "--json")
		r.check(t, 0)
		var out signed
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("--json output: %v\n%s", err, r.stdout)
		}
		s, err := pkgsig.ReadSidecar(path)
		if err != nil {
			t.Fatal(err)
		}
		if s != out.Sidecar || out.Written != path || out.Path != file || s.Package() != want || s.MD5 != md5Hex(testPackage) || s.KeyID != "release" {
			t.Fatalf("sidecar %+v, output %+v", s, out)
		}
		if err := pub.Verify(s.Package(), s.Sig, s.KeyID); err != nil {
			t.Fatal(err)
		}
	})

	notKey := filepath.Join(dir, "not-a-key.key")
	if err := os.WriteFile(notKey, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	badName := filepath.Join(dir, "release 2026.key")
	if data, err := os.ReadFile(keys.Private); err != nil || os.WriteFile(badName, data, 0o600) != nil {
		t.Fatal("copy the key", err)
	}
	failures := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"missing key file", []string{"--key", filepath.Join(dir, "none.key"), "--file", file}, exitFailure, []string{"--key: private key: open", "no such file"}},
		{"public key as the key", []string{"--key", keys.Public, "--key-id", "release", "--file", file}, exitUsage, []string{`a PEM "PUBLIC KEY" block`}},
		{"not a key", []string{"--key", notKey, "--key-id", "release", "--file", file}, exitUsage, []string{`no PEM "PRIVATE KEY" block`}},
		{"key ID not derivable", []string{"--key", badName, "--file", file}, exitUsage, []string{"--key-id: key_id must be", "(from the key file's name; give --key-id)"}},
		{"bad key ID", []string{"--key", keys.Private, "--key-id", "a b", "--file", file}, exitUsage, []string{"--key-id: key_id must be"}},
		{"untrusted key ID", []string{"--key", keys.Private, "--key-id", "rogue", "--file", file, "--trusted-keys", trusted}, exitUsage,
			[]string{`key "rogue" is not among the trusted keys`, "(release)"}},
		{"trusted key of that ID is another key", []string{"--key", other.Private, "--file", file, "--trusted-keys", trusted}, exitUsage,
			[]string{`the trusted key "release" in ` + trusted + " is not the public key of " + other.Private}},
		{"bad trusted keys", []string{"--key", keys.Private, "--file", file, "--trusted-keys", filepath.Join(dir, "keys")}, exitUsage, []string{"looks like a private key"}},
		{"file and URL", []string{"--key", keys.Private, "--file", file, "--url", srv.URL + "/fw/1.1.bin"}, exitUsage, []string{"give --file or --url, not both"}},
		{"no package", []string{"--key", keys.Private}, exitUsage, []string{"give the package with --file or --url"}},
		{"ftp URL", []string{"--key", keys.Private, "--url", "ftp://f/x.bin"}, exitUsage, []string{"--url", `scheme "ftp" is not supported`}},
		{"missing package", []string{"--key", keys.Private, "--file", filepath.Join(dir, "none.bin")}, exitFailure, []string{"no such file"}},
		{"404", []string{"--key", keys.Private, "--url", srv.URL + "/fw/none.bin"}, exitFailure, []string{"404 Not Found"}},
		{"sidecar in a missing directory", []string{"--key", keys.Private, "--file", file, "--sidecar", filepath.Join(dir, "no", "s.json")}, exitFailure, []string{"write sidecar"}},
		{"bad type", []string{"--key", keys.Private, "--file", file, "--type", "Firmware"}, exitUsage, []string{`--type: "type" must be 1 to 32 characters of a-z 0-9 _ -`}},
		{"empty version", []string{"--key", keys.Private, "--file", file, "--version", ""}, exitUsage, []string{`--version: "version" must be 1 to 64 characters`}},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			r := sign(tt.args...)
			r.check(t, tt.code, tt.want...)
			if r.stdout != "" {
				t.Errorf("a refused sign wrote to stdout:\n%s", r.stdout)
			}
			if strings.Contains(r.stderr, "invalid message") {
				t.Errorf("the error speaks of a message: %s", r.stderr)
			}
		})
	}
	if r := runCLI(t, context.Background(), offline("package", "sign", "--key", keys.Private)...); r.code != exitUsage || !strings.Contains(r.stderr, "missing required flag(s) --type, --version") {
		t.Errorf("sign without --type and --version: %d %s", r.code, r.stderr)
	}
}

func TestPackageVerify(t *testing.T) {
	t.Setenv(envTrustedKeys, "")
	dir := t.TempDir()
	keys := keygen(t, filepath.Join(dir, "keys"), "release")
	rogue := keygen(t, filepath.Join(dir, "rogue"), "rogue")
	trusted := trustedDir(t, keys.Public)
	file := filepath.Join(dir, "fw-1.1.bin")
	if err := os.WriteFile(file, testPackage, 0o644); err != nil {
		t.Fatal(err)
	}
	// tampered has the package's size but other bytes; longer one byte more.
	tampered, longer := filepath.Join(dir, "tampered.bin"), filepath.Join(dir, "longer.bin")
	bad := bytes.Clone(testPackage)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(tampered, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(longer, append(bytes.Clone(testPackage), 'x'), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := packageServer(t)
	sidecar := func(key pkgsig.KeyFiles, version string) (string, pkgsig.Sidecar) {
		path := filepath.Join(t.TempDir(), "s.json")
		runCLI(t, context.Background(), offline("package", "sign", "--key", key.Private, "--type", "firmware", "--version", version,
			"--file", file, "--sidecar", path)...).check(t, 0)
		s, err := pkgsig.ReadSidecar(path)
		if err != nil {
			t.Fatal(err)
		}
		return path, s
	}
	good, s := sidecar(keys, "1.1")
	rogueSidecar, rs := sidecar(rogue, "1.1")
	flags := func(s pkgsig.Sidecar, extra ...string) []string {
		return append([]string{"--type", s.Type, "--version", s.Version, "--sig", s.Sig, "--key-id", s.KeyID}, extra...)
	}
	verify := func(args ...string) result {
		return runCLI(t, context.Background(), offline(append([]string{"package", "verify"}, args...)...)...)
	}

	for _, tt := range []struct {
		name string
		args []string
	}{
		{"sidecar", []string{"--file", file, "--sidecar", good, "--trusted-keys", trusted}},
		{"URL", []string{"--url", srv.URL + "/fw/1.1.bin", "--sidecar", good, "--trusted-keys", trusted}},
		{"flags", append(flags(s, "--sha256", s.SHA256, "--md5", s.MD5, "--size", strconv.FormatInt(s.Size, 10)), "--file", file, "--trusted-keys", trusted)},
		{"flags without digests", append(flags(s), "--file", file, "--trusted-keys", trusted)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := verify(tt.args...)
			r.check(t, 0)
			if !strings.HasPrefix(r.stdout, "verified: signed by release\n") || !strings.Contains(r.stdout, "sha256   "+s.SHA256) {
				t.Errorf("output:\n%s", r.stdout)
			}
		})
	}
	t.Run("environment and JSON", func(t *testing.T) {
		t.Setenv(envTrustedKeys, trusted)
		r := verify("--file", file, "--sidecar", good, "--json")
		r.check(t, 0)
		var out verified
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Sidecar != s || out.Path != file {
			t.Fatalf("--json: %+v, %v\n%s", out, err, r.stdout)
		}
	})

	other := s
	other.Version = "1.2"
	failures := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"tampered package", []string{"--file", tampered, "--sidecar", good, "--trusted-keys", trusted}, exitFailure, []string{"sha256 mismatch: "}},
		{"tampered package, no sha256 given", append(flags(s), "--file", tampered, "--trusted-keys", trusted), exitFailure, []string{"bad signature: "}},
		{"longer package", []string{"--file", longer, "--sidecar", good, "--trusted-keys", trusted}, exitFailure, []string{"size mismatch: the package is"}},
		{"other md5", append(flags(s, "--md5", strings.Repeat("0", 32)), "--file", file, "--trusted-keys", trusted), exitFailure, []string{"md5 mismatch"}},
		{"unknown key", []string{"--file", file, "--sidecar", rogueSidecar, "--trusted-keys", trusted}, exitFailure, []string{`unknown key_id: "rogue" is not a trusted key`}},
		{"another key's signature", append(flags(rs), "--key-id", "release", "--file", file, "--trusted-keys", trusted), exitFailure, []string{"bad signature: "}},
		{"signed for another version", append(flags(other), "--file", file, "--trusted-keys", trusted), exitFailure, []string{"bad signature: ", `version "1.2"`}},
		{"no trusted keys", []string{"--file", file, "--sidecar", good}, exitUsage, []string{"give the trusted keys: --trusted-keys DIR or OTAFLOW_TRUSTED_KEYS"}},
		{"sidecar and flags", []string{"--file", file, "--sidecar", good, "--type", "firmware", "--trusted-keys", trusted}, exitUsage, []string{"--type: the sidecar gives"}},
		{"missing flags", []string{"--file", file, "--type", "firmware", "--trusted-keys", trusted}, exitUsage, []string{"missing required flag(s) --version, --sig, --key-id (or give --sidecar)"}},
		{"malformed sig", append(flags(s, "--sig", "abc"), "--file", file, "--trusted-keys", trusted), exitUsage, []string{"--sig: sig must be 64 bytes"}},
		{"malformed sha256", append(flags(s, "--sha256", "ABC"), "--file", file, "--trusted-keys", trusted), exitUsage, []string{"--sha256: sha256 must be"}},
		{"bad sidecar", []string{"--file", file, "--sidecar", keys.Public, "--trusted-keys", trusted}, exitUsage, []string{"--sidecar: sidecar", "is not a JSON object"}},
		{"no package", []string{"--sidecar", good, "--trusted-keys", trusted}, exitUsage, []string{"give the package with --file or --url"}},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			r := verify(tt.args...)
			r.check(t, tt.code, tt.want...)
			if r.stdout != "" {
				t.Errorf("a failed verify wrote to stdout:\n%s", r.stdout)
			}
		})
	}
}

// TestPackageSignOpenSSL: a key pair made by openssl signs, and the signature verifies with
// openssl's public key in the trusted keys directory.
func TestPackageSignOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed (internal/pkgsig checks a key and signature it made)")
	}
	t.Setenv(envTrustedKeys, "")
	dir := t.TempDir()
	key, trusted := filepath.Join(dir, "ossl.key"), filepath.Join(dir, "trusted")
	if err := os.Mkdir(trusted, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"genpkey", "-algorithm", "ed25519", "-out", key},
		{"pkey", "-in", key, "-pubout", "-out", filepath.Join(trusted, "ossl.pub")},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	file := filepath.Join(dir, "fw.bin")
	if err := os.WriteFile(file, testPackage, 0o644); err != nil {
		t.Fatal(err)
	}
	sidecar := filepath.Join(dir, "fw.json")
	runCLI(t, context.Background(), offline("package", "sign", "--key", key, "--type", "os", "--version", "9.0", "--file", file,
		"--sidecar", sidecar, "--trusted-keys", trusted)...).check(t, 0)
	runCLI(t, context.Background(), offline("package", "verify", "--file", file, "--sidecar", sidecar, "--trusted-keys", trusted)...).check(t, 0)
}
