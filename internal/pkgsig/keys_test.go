package pkgsig

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// opensslCmd runs openssl, failing the test on an error.
func opensslCmd(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func requireOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed; TestVerifyOpenSSLSignature still checks a key and signature it made")
	}
}

// TestOpenSSLInterop: keys made by openssl work here, and keys and signatures made here work
// with openssl.
func TestOpenSSLInterop(t *testing.T) {
	requireOpenSSL(t)
	dir := t.TempDir()
	trusted := filepath.Join(dir, "trusted")
	if err := os.Mkdir(trusted, 0o755); err != nil {
		t.Fatal(err)
	}
	p := testPackage()
	msg := filepath.Join(dir, "msg")
	if err := os.WriteFile(msg, p.Message(), 0o644); err != nil {
		t.Fatal(err)
	}

	// openssl's key pair: Go reads the private key and signs; the public key, in the trusted
	// directory, verifies that and a signature made by openssl.
	osslKey := filepath.Join(dir, "ossl.key")
	opensslCmd(t, "genpkey", "-algorithm", "ed25519", "-out", osslKey)
	opensslCmd(t, "pkey", "-in", osslKey, "-pubout", "-out", filepath.Join(trusted, "ossl.pub"))
	priv, err := ReadPrivateKey(osslKey)
	if err != nil {
		t.Fatalf("openssl's private key: %v", err)
	}
	goSig, err := Sign(priv, p)
	if err != nil {
		t.Fatal(err)
	}
	osslSig := base64.StdEncoding.EncodeToString(opensslCmd(t, "pkeyutl", "-sign", "-rawin", "-inkey", osslKey, "-in", msg))

	// Our key pair: openssl derives the very public key file we wrote, and verifies our
	// signature.
	files, err := WriteKeyPair(filepath.Join(dir, "ours"), "ours")
	if err != nil {
		t.Fatal(err)
	}
	derived := opensslCmd(t, "pkey", "-in", files.Private, "-pubout")
	written, err := os.ReadFile(files.Public)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(derived, written) {
		t.Errorf("openssl derives\n%s\nfrom our private key; we wrote\n%s", derived, written)
	}
	ourPriv, err := ReadPrivateKey(files.Private)
	if err != nil {
		t.Fatal(err)
	}
	ourSig, err := Sign(ourPriv, p)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(ourSig)
	sigFile := filepath.Join(dir, "sig")
	if err := os.WriteFile(sigFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out := opensslCmd(t, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", files.Public, "-in", msg, "-sigfile", sigFile)
	if !strings.Contains(string(out), "Signature Verified Successfully") {
		t.Errorf("openssl does not verify our signature: %s", out)
	}
	if err := os.WriteFile(filepath.Join(trusted, "ours.pub"), written, 0o644); err != nil {
		t.Fatal(err)
	}

	keys, err := LoadTrustedKeys(trusted)
	if err != nil {
		t.Fatal(err)
	}
	if got := keys.IDs(); !slices.Equal(got, []string{"ossl", "ours"}) {
		t.Fatalf("IDs() = %v", got)
	}
	for _, tt := range []struct{ name, sig, keyID string }{
		{"openssl key, Go signature", goSig, "ossl"},
		{"openssl key, openssl signature", osslSig, "ossl"},
		{"our key, our signature", ourSig, "ours"},
	} {
		if err := keys.Verify(p, tt.sig, tt.keyID); err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	if err := keys.Verify(p, osslSig, "ours"); !errors.Is(err, ErrBadSignature) {
		t.Errorf("openssl's signature under our key: %v", err)
	}
}

func TestWriteKeyPair(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "keys")
	files, err := WriteKeyPair(dir, "release-2026")
	if err != nil {
		t.Fatal(err)
	}
	if want := (KeyFiles{Private: filepath.Join(dir, "release-2026.key"), Public: filepath.Join(dir, "release-2026.pub")}); files != want {
		t.Fatalf("files = %+v, want %+v", files, want)
	}
	for path, mode := range map[string]fs.FileMode{dir: fs.ModeDir | 0o700, files.Private: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode(), mode)
		}
	}
	if fi, err := os.Stat(files.Public); err != nil || fi.Mode().Perm()&0o022 != 0 {
		t.Errorf("public key mode %v, %v: want it writable by its owner only", fi.Mode(), err)
	}
	priv, err := ReadPrivateKey(files.Private)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ReadPublicKey(files.Public)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(priv.Public()) {
		t.Fatal("the public key file does not hold the private key's public key")
	}
	privPEM, _ := os.ReadFile(files.Private)
	pubPEM, _ := os.ReadFile(files.Public)
	if !bytes.HasPrefix(privPEM, []byte("-----BEGIN PRIVATE KEY-----\n")) || !bytes.HasPrefix(pubPEM, []byte("-----BEGIN PUBLIC KEY-----\n")) {
		t.Errorf("key files are not PEM PKCS#8 and SubjectPublicKeyInfo:\n%s%s", privPEM, pubPEM)
	}

	// Never overwrites, and leaves both files as they were.
	if _, err := WriteKeyPair(dir, "release-2026"); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second WriteKeyPair() = %v, want fs.ErrExist", err)
	}
	if again, _ := os.ReadFile(files.Private); !bytes.Equal(again, privPEM) {
		t.Error("the private key changed")
	}
	if again, _ := os.ReadFile(files.Public); !bytes.Equal(again, pubPEM) {
		t.Error("the public key changed")
	}
	// Only the public key exists: no private key is written beside it.
	if err := os.WriteFile(filepath.Join(dir, "half.pub"), pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteKeyPair(dir, "half"); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteKeyPair() over a lone .pub = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "half.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("half.key was written: %v", err)
	}

	for _, bad := range []string{"", "a/b", "../x", strings.Repeat("k", 65), "clé"} {
		if _, err := WriteKeyPair(dir, bad); err == nil || !strings.Contains(err.Error(), "key_id must be") {
			t.Errorf("WriteKeyPair(%q) = %v, want a key_id error", bad, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("the directory holds %d files, want the key pair and half.pub", len(entries))
	}
}

// pemOf encodes one PEM block.
func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestLoadTrustedKeys(t *testing.T) {
	pubA, privA := newKey(t)
	pubB, _ := newKey(t)
	pemA, err := MarshalPublicKey(pubA)
	if err != nil {
		t.Fatal(err)
	}
	pemB, _ := MarshalPublicKey(pubB)
	privPEM, _ := MarshalPrivateKey(privA)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	x, _ := ecdh.X25519().GenerateKey(rand.Reader)
	xDER, _ := x509.MarshalPKIXPublicKey(x.PublicKey())

	type file struct{ name, data, link string }
	tests := []struct {
		name    string
		files   []file
		wantIDs []string
		wantErr string
	}{
		{"keys, other files skipped", []file{
			{name: "a.pub", data: string(pemA)},
			{name: "b.pub", data: "comment before the block\n" + string(pemB)},
			{name: "README.md", data: "keys of the release team"},
			{name: ".hidden.pub", data: "not a key"},
			{name: "sub.pub/"},
		}, []string{"a", "b"}, ""},
		{"Kubernetes volume: links into ..data", []file{
			{name: "..data/"},
			{name: "..data/k.pub", data: string(pemA)},
			{name: "k.pub", link: "..data/k.pub"},
		}, []string{"k"}, ""},
		{"key ID of every allowed character", []file{{name: "AZaz09_.-.pub", data: string(pemA)}}, []string{"AZaz09_.-"}, ""},
		{"key ID of 64", []file{{name: strings.Repeat("k", 64) + ".pub", data: string(pemA)}}, []string{strings.Repeat("k", 64)}, ""},
		{"key ID of 65", []file{{name: strings.Repeat("k", 65) + ".pub", data: string(pemA)}}, nil, "the file name must be <key_id>.pub: key_id must be 1 to 64"},
		{"key ID with a space", []file{{name: "a b.pub", data: string(pemA)}}, nil, "the file name must be <key_id>.pub"},
		{"empty", nil, nil, "no <key_id>.pub files"},
		{"only other files", []file{{name: "a.pem", data: string(pemA)}}, nil, "no <key_id>.pub files"},
		{"a private key file", []file{{name: "a.pub", data: string(pemA)}, {name: "a.key", data: string(privPEM)}}, nil, "a.key looks like a private key"},
		{"a private key named .pub", []file{{name: "a.pub", data: string(privPEM)}}, nil, "a private key, not a public key"},
		{"not PEM", []file{{name: "a.pub", data: "ssh-ed25519 AAAA"}}, nil, `no PEM "PUBLIC KEY" block`},
		{"empty file", []file{{name: "a.pub"}}, nil, `no PEM "PUBLIC KEY" block`},
		{"two keys in a file", []file{{name: "a.pub", data: string(pemA) + string(pemB)}}, nil, "more than one PEM block"},
		{"an ECDSA key", []file{{name: "a.pub", data: string(pemOf("PUBLIC KEY", ecDER))}}, nil, "an ECDSA public key, not Ed25519"},
		{"an X25519 key", []file{{name: "a.pub", data: string(pemOf("PUBLIC KEY", xDER))}}, nil, "an X25519 (key agreement) public key, not Ed25519"},
		{"a certificate", []file{{name: "a.pub", data: string(pemOf("CERTIFICATE", []byte{1}))}}, nil, `a PEM "CERTIFICATE" block`},
		{"broken DER", []file{{name: "a.pub", data: string(pemOf("PUBLIC KEY", []byte{1, 2, 3}))}}, nil, "not a SubjectPublicKeyInfo public key"},
		{"dangling link", []file{{name: "a.pub", link: "gone.pub"}}, nil, "no such file"},
		{"huge file", []file{{name: "a.pub", data: strings.Repeat("x", maxKeyFileSize+1)}}, nil, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				path := filepath.Join(dir, f.name)
				var err error
				switch {
				case strings.HasSuffix(f.name, "/"):
					err = os.Mkdir(path, 0o755)
				case f.link != "":
					err = os.Symlink(f.link, path)
				default:
					err = os.WriteFile(path, []byte(f.data), 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			keys, err := LoadTrustedKeys(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadTrustedKeys() = %v, want an error about %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := keys.IDs(); !slices.Equal(got, tt.wantIDs) || keys.Len() != len(tt.wantIDs) {
				t.Fatalf("IDs() = %v, want %v", got, tt.wantIDs)
			}
		})
	}
	if _, err := LoadTrustedKeys(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadTrustedKeys(missing) = %v, want fs.ErrNotExist", err)
	}
}

func TestParsePrivateKey(t *testing.T) {
	pub, priv := newKey(t)
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePrivateKey(privPEM)
	if err != nil || !got.Equal(priv) {
		t.Fatalf("ParsePrivateKey(MarshalPrivateKey(k)) = %v", err)
	}
	pubPEM, _ := MarshalPublicKey(pub)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	for _, tt := range []struct {
		name, data, want string
	}{
		{"public key", string(pubPEM), `a PEM "PUBLIC KEY" block, not an Ed25519 "PRIVATE KEY"`},
		{"encrypted", string(pemOf("ENCRYPTED PRIVATE KEY", []byte{1})), "encrypted: decrypt it first"},
		{"ECDSA", string(pemOf("PRIVATE KEY", ecDER)), "an ECDSA private key, not Ed25519"},
		{"broken DER", string(pemOf("PRIVATE KEY", []byte{1})), "not a PKCS#8 private key"},
		{"not PEM", "hello", `no PEM "PRIVATE KEY" block`},
	} {
		if _, err := ParsePrivateKey([]byte(tt.data)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: ParsePrivateKey() = %v, want an error about %q", tt.name, err, tt.want)
		}
	}
	if _, err := ReadPrivateKey(filepath.Join(t.TempDir(), "none.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadPrivateKey(missing) = %v", err)
	}
}

func TestNewTrustedKeys(t *testing.T) {
	pub, _ := newKey(t)
	if _, err := NewTrustedKeys(map[string]ed25519.PublicKey{"a b": pub}); err == nil {
		t.Error("accepted a bad key ID")
	}
	if _, err := NewTrustedKeys(map[string]ed25519.PublicKey{"a": pub[:31]}); err == nil {
		t.Error("accepted a short key")
	}
	keys, err := NewTrustedKeys(map[string]ed25519.PublicKey{"a": pub})
	if err != nil {
		t.Fatal(err)
	}
	pub[0] ^= 1 // the set holds its own copy
	if k, ok := keys.Key("a"); !ok || k.Equal(pub) {
		t.Error("the set shares the caller's key bytes")
	}
	var none *TrustedKeys
	if none.Len() != 0 || none.IDs() != nil {
		t.Error("a nil set is not empty")
	}
}
