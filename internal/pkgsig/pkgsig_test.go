package pkgsig

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An openssl 3.0 key and signature, made once with
//
//	openssl genpkey -algorithm ed25519 -out k.key
//	openssl pkey -in k.key -pubout -out release-2026.pub
//	printf 'otaflow-package-v1\nfirmware\n1.1\n1048576\n%s\n' $(printf 'OTAflow test package\n' | sha256sum | cut -d' ' -f1) > msg
//	openssl pkeyutl -sign -rawin -inkey k.key -in msg | base64 -w0
//
// (the private key was thrown away): a known answer that pins the signed message to
// PROTOCOL.md's five lines and the key format to openssl's, whether or not openssl is here.
const (
	opensslPub = `-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAEcsYDMGQJl8cuhQl2bfrsY+eZ1M+AY3JfagSFTQZqtk=
-----END PUBLIC KEY-----
`
	opensslSig = "toOdyYeKiM/DExSQuaO4F26TtNk+3BOZAIrkbw9rvNsGbecP7FmhPkTiqKgm9ep7Xp7Y1OAAoJsM795rvoUvBQ=="
)

// opensslPackage is the package opensslSig signs.
func opensslPackage() Package {
	sum := sha256.Sum256([]byte("OTAflow test package\n"))
	return Package{Type: "firmware", Version: "1.1", Size: 1048576, SHA256: hex.EncodeToString(sum[:])}
}

func TestMessage(t *testing.T) {
	p := opensslPackage()
	want := "otaflow-package-v1\nfirmware\n1.1\n1048576\n70bf4705ee6cc9315d6d4f9c56c5fe23b162f54536b68de70f84c87ef0a48cd0\n"
	if got := string(p.Message()); got != want {
		t.Errorf("Message() = %q, want %q", got, want)
	}
	// A version may hold any character, a line break too; the message stays unambiguous
	// because the size and sha256 are the last two lines.
	a := Package{Type: "app", Version: "1\n2", Size: 3, SHA256: p.SHA256}
	b := Package{Type: "app", Version: "1", Size: 23, SHA256: p.SHA256}
	if string(a.Message()) == string(b.Message()) {
		t.Errorf("two packages share the message %q", a.Message())
	}
}

func TestVerifyOpenSSLSignature(t *testing.T) {
	pub, err := ParsePublicKey([]byte(opensslPub))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := NewTrustedKeys(map[string]ed25519.PublicKey{"release-2026": pub})
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Verify(opensslPackage(), opensslSig, "release-2026"); err != nil {
		t.Fatalf("openssl's signature does not verify: %v", err)
	}
	p := opensslPackage()
	p.Size++
	if err := keys.Verify(p, opensslSig, "release-2026"); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("openssl's signature verifies another size: %v", err)
	}
	// The same bytes in URL-safe base64 are refused: PROTOCOL.md says standard base64.
	urlSafe := strings.NewReplacer("+", "-", "/", "_").Replace(opensslSig)
	if urlSafe == opensslSig {
		t.Fatal("the known signature has neither + nor /")
	}
	if err := keys.Verify(opensslPackage(), urlSafe, "release-2026"); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a URL-safe base64 signature: %v", err)
	}
}

// newKey makes a key pair for a test.
func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func testPackage() Package {
	return Package{Type: "firmware", Version: "2.0", Size: 4096, SHA256: strings.Repeat("ab", 32)}
}

func TestSignVerify(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	keys, err := NewTrustedKeys(map[string]ed25519.PublicKey{"release": pub, "other": otherPub})
	if err != nil {
		t.Fatal(err)
	}
	p := testPackage()
	sig, err := Sign(priv, p)
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := base64.StdEncoding.DecodeString(sig); err != nil || len(raw) != ed25519.SignatureSize {
		t.Fatalf("Sign() = %q, want 64 bytes of standard base64", sig)
	}
	otherSig, err := Sign(otherPriv, p)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(*Package)) Package {
		q := p
		f(&q)
		return q
	}
	raw, _ := base64.StdEncoding.DecodeString(sig)
	raw[10] ^= 1
	flipped := base64.StdEncoding.EncodeToString(raw)

	tests := []struct {
		name       string
		keys       *TrustedKeys
		p          Package
		sig, keyID string
		want       error // nil: verifies
		detail     string
	}{
		{"signed by the named key", keys, p, sig, "release", nil, ""},
		{"signed by the other trusted key", keys, p, otherSig, "other", nil, ""},
		{"no signature", keys, p, "", "release", ErrMissingSignature, "not signed"},
		{"unknown key", keys, p, sig, "release-2027", ErrUnknownKey, `"release-2027" is not a trusted key (trusted: other, release)`},
		{"no key_id", keys, p, sig, "", ErrUnknownKey, "names no key_id"},
		{"no trusted keys", nil, p, sig, "release", ErrUnknownKey, "no trusted keys are configured"},
		{"empty set", &TrustedKeys{}, p, sig, "release", ErrUnknownKey, "no trusted keys are configured"},
		{"another trusted key's signature", keys, p, otherSig, "release", ErrBadSignature, `key "release" did not sign`},
		{"other type", keys, edit(func(q *Package) { q.Type = "app" }), sig, "release", ErrBadSignature, `type "app"`},
		{"other version", keys, edit(func(q *Package) { q.Version = "2.0.1" }), sig, "release", ErrBadSignature, `version "2.0.1"`},
		{"other size", keys, edit(func(q *Package) { q.Size = 4097 }), sig, "release", ErrBadSignature, "size 4097"},
		{"other sha256", keys, edit(func(q *Package) { q.SHA256 = strings.Repeat("ab", 31) + "ac" }), sig, "release", ErrBadSignature, "sha256 abab"},
		{"one bit flipped", keys, p, flipped, "release", ErrBadSignature, "did not sign"},
		{"not base64", keys, p, strings.Repeat("!", 88), "release", ErrBadSignature, "not 64 bytes of standard base64"},
		{"truncated", keys, p, sig[:86], "release", ErrBadSignature, "not 64 bytes"},
		{"no sha256", keys, edit(func(q *Package) { q.SHA256 = "" }), sig, "release", ErrBadSignature, "cannot verify: sha256 must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.keys.Verify(tt.p, tt.sig, tt.keyID)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify() = %v, want nil", err)
				}
				return
			}
			var ce *CheckError
			if !errors.Is(err, tt.want) || !errors.As(err, &ce) {
				t.Fatalf("Verify() = %v, want a *CheckError wrapping %v", err, tt.want)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, tt.want.Error()+": ") || !strings.Contains(msg, tt.detail) {
				t.Errorf("Verify() = %q, want it to start with %q and mention %q", msg, tt.want.Error(), tt.detail)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	_, priv := newKey(t)
	for _, tt := range []struct {
		name string
		key  ed25519.PrivateKey
		p    Package
		want string
	}{
		{"short key", priv[:32], testPackage(), "not an Ed25519 private key"},
		{"no sha256", priv, Package{Type: "firmware", Version: "1", Size: 1}, "sha256"},
		{"bad type", priv, Package{Type: "Firmware", Version: "1", Size: 1, SHA256: strings.Repeat("0", 64)}, `"type"`},
		{"no version", priv, Package{Type: "firmware", Size: 1, SHA256: strings.Repeat("0", 64)}, `"version"`},
		{"size 0", priv, Package{Type: "firmware", Version: "1", SHA256: strings.Repeat("0", 64)}, "size must be more than 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if sig, err := Sign(tt.key, tt.p); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Sign() = %q, %v; want an error about %q", sig, err, tt.want)
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	pub, priv := newKey(t)
	keys, err := NewTrustedKeys(map[string]ed25519.PublicKey{"release": pub})
	if err != nil {
		t.Fatal(err)
	}
	p := testPackage()
	sig, err := Sign(priv, p)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		pol        Policy
		sig, keyID string
		want       error
	}{
		{"unsigned, not required", Policy{Keys: keys}, "", "", nil},
		{"unsigned, no keys, not required", Policy{}, "", "", nil},
		{"unsigned, required", Policy{Keys: keys, RequireSignature: true}, "", "", ErrMissingSignature},
		{"key_id without sig, required", Policy{Keys: keys, RequireSignature: true}, "", "release", ErrMissingSignature},
		{"key_id without sig, not required", Policy{Keys: keys}, "", "release", ErrMissingSignature},
		{"signed, required", Policy{Keys: keys, RequireSignature: true}, sig, "release", nil},
		{"signed, not required", Policy{Keys: keys}, sig, "release", nil},
		{"signed, unknown key, not required", Policy{Keys: keys}, sig, "nope", ErrUnknownKey},
		{"signed, no keys", Policy{}, sig, "release", ErrUnknownKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.pol.Check(p, tt.sig, tt.keyID); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Check() = %v, want %v", err, tt.want)
			}
		})
	}
	if err := (Policy{RequireSignature: true}).Validate(); err == nil {
		t.Error("a policy that requires signatures without trusted keys is valid")
	}
	if err := (Policy{Keys: keys, RequireSignature: true}).Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestCheckSHA256(t *testing.T) {
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	if err := CheckSHA256(a, a); err != nil {
		t.Errorf("CheckSHA256(a, a) = %v", err)
	}
	err := CheckSHA256(a, b)
	if !errors.Is(err, ErrSHA256Mismatch) || !strings.Contains(err.Error(), "sha256 is "+b+", not the "+a+" announced") {
		t.Errorf("CheckSHA256(a, b) = %v", err)
	}
}

func TestHasher(t *testing.T) {
	d, err := HashReader(strings.NewReader("abc"))
	if err != nil {
		t.Fatal(err)
	}
	// FIPS 180-2 and RFC 1321 test vectors.
	want := Digest{Size: 3, MD5: "900150983cd24fb0d6963f7d28e17f72",
		SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
	if d != want {
		t.Errorf("HashReader(abc) = %+v, want %+v", d, want)
	}
	h := NewHasher()
	for _, part := range []string{"a", "", "bc"} {
		if n, err := h.Write([]byte(part)); n != len(part) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := h.Digest(); got != want {
		t.Errorf("written in parts: %+v", got)
	}
	if d, err := HashReader(errReader{}); err == nil || d.Size != 0 {
		t.Errorf("HashReader(failing) = %+v, %v", d, err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// FuzzVerify: no signature, key ID or package makes Verify panic or accept a signature the
// trusted key did not make.
func FuzzVerify(f *testing.F) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	keys, err := NewTrustedKeys(map[string]ed25519.PublicKey{"k": pub})
	if err != nil {
		f.Fatal(err)
	}
	p := testPackage()
	good, err := Sign(priv, p)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "k", p.Type, p.Version, p.Size, p.SHA256)
	f.Add(opensslSig, "k", "", "", int64(0), "")
	f.Fuzz(func(t *testing.T, sig, keyID, typ, version string, size int64, sha string) {
		q := Package{Type: typ, Version: version, Size: size, SHA256: sha}
		err := keys.Verify(q, sig, keyID)
		if err == nil && (sig != good || q != p || keyID != "k") {
			t.Fatalf("accepted sig %q by %q for %+v", sig, keyID, q)
		}
		var ce *CheckError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("Verify() = %v, not a *CheckError", err)
		}
	})
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteKeyPair(dir, "release-1"); err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	if err := os.Rename(filepath.Join(dir, "release-1.pub"), filepath.Join(keys, "release-1.pub")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir      string
		require  bool
		wantKeys int
		wantErr  string
	}{
		{dir: "", require: false},
		{dir: keys, require: false, wantKeys: 1},
		{dir: keys, require: true, wantKeys: 1},
		{dir: "", require: true, wantErr: "signatures are required but no trusted keys are configured: give the trusted keys directory too"},
		{dir: dir, wantErr: "looks like a private key"},
		{dir: filepath.Join(keys, "missing"), wantErr: "no such file"},
	}
	for _, tt := range tests {
		pol, err := LoadPolicy(tt.dir, tt.require)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("LoadPolicy(%q, %v) = %v, want an error saying %q", tt.dir, tt.require, err, tt.wantErr)
			}
		case err != nil || pol.Keys.Len() != tt.wantKeys || pol.RequireSignature != tt.require:
			t.Errorf("LoadPolicy(%q, %v) = %d keys, require %v, err %v", tt.dir, tt.require, pol.Keys.Len(), pol.RequireSignature, err)
		}
	}
}
