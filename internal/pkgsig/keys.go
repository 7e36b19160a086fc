package pkgsig

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/otaflow/otaflow/internal/protocol"
)

// File name extensions of key files: <key_id>.key holds a private key, <key_id>.pub its
// public key.
const (
	PrivateKeyExt = ".key"
	PublicKeyExt  = ".pub"
)

// PEM block types: PKCS#8 for private keys, SubjectPublicKeyInfo for public keys.
const (
	pemPrivateKey = "PRIVATE KEY"
	pemPublicKey  = "PUBLIC KEY"
)

// maxKeyFileSize bounds what is read of a key file: a PEM Ed25519 key is about 120 bytes.
const maxKeyFileSize = 16 << 10

// MarshalPrivateKey encodes a private key as PEM PKCS#8 ("PRIVATE KEY"), as openssl genpkey
// writes it.
func MarshalPrivateKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// MarshalPublicKey encodes a public key as PEM SubjectPublicKeyInfo ("PUBLIC KEY"), as
// openssl pkey -pubout writes it.
func MarshalPublicKey(key ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

// onePEMBlock decodes the only PEM block of data.
func onePEMBlock(data []byte, want string) (*pem.Block, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM %q block", want)
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, errors.New("more than one PEM block: one key per file")
	}
	return block, nil
}

// ParsePrivateKey decodes an Ed25519 private key in PEM PKCS#8 form.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	block, err := onePEMBlock(data, pemPrivateKey)
	if err != nil {
		return nil, err
	}
	switch block.Type {
	case pemPrivateKey:
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("the private key is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)")
	default:
		return nil, fmt.Errorf("a PEM %q block, not an Ed25519 %q (PKCS#8) block as openssl genpkey -algorithm ed25519 writes", block.Type, pemPrivateKey)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS#8 private key: %w", err)
	}
	ed, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s private key, not Ed25519", keyKind(key))
	}
	return ed, nil
}

// ParsePublicKey decodes an Ed25519 public key in PEM SubjectPublicKeyInfo form.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	block, err := onePEMBlock(data, pemPublicKey)
	if err != nil {
		return nil, err
	}
	if block.Type != pemPublicKey {
		if strings.Contains(block.Type, "PRIVATE KEY") {
			return nil, errors.New("a private key, not a public key: give the public key only (openssl pkey -in KEY -pubout)")
		}
		return nil, fmt.Errorf("a PEM %q block, not a %q (SubjectPublicKeyInfo) block as openssl pkey -pubout writes", block.Type, pemPublicKey)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a SubjectPublicKeyInfo public key: %w", err)
	}
	ed, ok := key.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s public key, not Ed25519", keyKind(key))
	}
	return ed, nil
}

// keyKind names a key's algorithm for messages.
func keyKind(key any) string {
	switch key.(type) {
	case *rsa.PrivateKey, *rsa.PublicKey:
		return "an RSA"
	case *ecdsa.PrivateKey, *ecdsa.PublicKey:
		return "an ECDSA"
	case *ecdh.PrivateKey, *ecdh.PublicKey:
		return "an X25519 (key agreement)"
	default:
		return "another kind of"
	}
}

// readKeyFile reads a small key file.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a key file", path, maxKeyFileSize)
	}
	return data, nil
}

// ReadPrivateKey reads an Ed25519 private key from a PEM PKCS#8 file.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	key, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	return key, nil
}

// ReadPublicKey reads an Ed25519 public key from a PEM SubjectPublicKeyInfo file.
func ReadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	key, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	return key, nil
}

// KeyFiles are the files of a key pair.
type KeyFiles struct {
	// Private is <dir>/<key_id>.key, mode 0600: it stays with the publisher.
	Private string
	// Public is <dir>/<key_id>.pub: it goes into the trusted keys directories of OTAflow and
	// the devices.
	Public string
}

// WriteKeyPair makes a new Ed25519 key pair and writes it to dir (created, mode 0700, when
// missing) as <key_id>.key (PEM PKCS#8, mode 0600) and <key_id>.pub (PEM
// SubjectPublicKeyInfo). It never overwrites: when either file exists it writes nothing and
// returns an error wrapping fs.ErrExist; when it fails half-way it removes what it wrote.
func WriteKeyPair(dir, keyID string) (KeyFiles, error) {
	if err := protocol.ValidateKeyID(keyID); err != nil {
		return KeyFiles{}, errors.New(protocol.Reason(err))
	}
	files := KeyFiles{
		Private: filepath.Join(dir, keyID+PrivateKeyExt),
		Public:  filepath.Join(dir, keyID+PublicKeyExt),
	}
	for _, path := range []string{files.Private, files.Public} {
		if _, err := os.Lstat(path); err == nil {
			return KeyFiles{}, keyExistsError{path}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return KeyFiles{}, err
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return KeyFiles{}, fmt.Errorf("generate key: %w", err)
	}
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		return KeyFiles{}, err
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		return KeyFiles{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return KeyFiles{}, fmt.Errorf("key directory: %w", err)
	}
	if err := writeNew(files.Private, privPEM, 0o600); err != nil {
		return KeyFiles{}, err
	}
	if err := writeNew(files.Public, pubPEM, 0o644); err != nil {
		_ = os.Remove(files.Private)
		return KeyFiles{}, err
	}
	return files, nil
}

// keyExistsError refuses to overwrite a key file; it is an fs.ErrExist.
type keyExistsError struct{ path string }

func (e keyExistsError) Error() string {
	return e.path + " already exists; refusing to overwrite a key (choose another key ID or directory)"
}

func (e keyExistsError) Unwrap() error { return fs.ErrExist }

// writeNew creates path (which must not exist) with mode perm and writes data to it,
// synced; on failure it removes the file.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return keyExistsError{path}
		}
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// TrustedKeys is a set of trusted public keys by key ID. The nil *TrustedKeys holds none.
type TrustedKeys struct {
	keys map[string]ed25519.PublicKey
}

// NewTrustedKeys makes a set of the keys given, by key ID.
func NewTrustedKeys(keys map[string]ed25519.PublicKey) (*TrustedKeys, error) {
	t := &TrustedKeys{keys: make(map[string]ed25519.PublicKey, len(keys))}
	for id, key := range keys {
		if err := protocol.ValidateKeyID(id); err != nil {
			return nil, errors.New(protocol.Reason(err))
		}
		if len(key) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key %s: not an Ed25519 public key (%d bytes)", id, len(key))
		}
		t.keys[id] = slices.Clone(key)
	}
	return t, nil
}

// LoadTrustedKeys reads the trusted keys directory: one <key_id>.pub file per key, PEM
// SubjectPublicKeyInfo (symbolic links are followed; names starting with "." and
// subdirectories are skipped, as a Kubernetes volume's bookkeeping is). It refuses a
// directory without keys, a malformed key file, and a directory that holds a private key
// (<key_id>.key): OTAflow never holds private keys.
func LoadTrustedKeys(dir string) (*TrustedKeys, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("trusted keys: %w", err)
	}
	t := &TrustedKeys{keys: map[string]ed25519.PublicKey{}}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		switch filepath.Ext(name) {
		case PrivateKeyExt:
			return nil, fmt.Errorf("trusted keys: %s looks like a private key; the trusted keys directory holds public keys only (keep private keys with the publisher)", path)
		case PublicKeyExt:
		default:
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		if fi.IsDir() {
			continue
		}
		id := strings.TrimSuffix(name, PublicKeyExt)
		if err := protocol.ValidateKeyID(id); err != nil {
			return nil, fmt.Errorf("trusted keys: %s: the file name must be <key_id>.pub: %s", path, protocol.Reason(err))
		}
		key, err := ReadPublicKey(path)
		if err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		t.keys[id] = key
	}
	if len(t.keys) == 0 {
		return nil, fmt.Errorf("trusted keys: no <key_id>.pub files in %s", dir)
	}
	return t, nil
}

// Len is the number of keys.
func (t *TrustedKeys) Len() int {
	if t == nil {
		return 0
	}
	return len(t.keys)
}

// IDs lists the key IDs in order.
func (t *TrustedKeys) IDs() []string {
	if t == nil {
		return nil
	}
	ids := make([]string, 0, len(t.keys))
	for id := range t.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Key returns the key of a key ID.
func (t *TrustedKeys) Key(keyID string) (ed25519.PublicKey, bool) {
	if t == nil {
		return nil, false
	}
	key, ok := t.keys[keyID]
	return key, ok
}

// Verify checks that sig is keyID's signature of the package. It fails with ErrMissingSignature
// for an empty sig, ErrUnknownKey for a key ID not in the set, and ErrBadSignature for a
// malformed signature, a package whose fields cannot have been signed, or a signature that
// does not verify.
func (t *TrustedKeys) Verify(p Package, sig, keyID string) error {
	if sig == "" {
		return checkErr(ErrMissingSignature, "the package is not signed")
	}
	key, ok := t.Key(keyID)
	if !ok {
		return t.unknown(keyID)
	}
	raw, err := protocol.DecodeSignature(sig)
	if err != nil {
		return checkErr(ErrBadSignature, "sig is not %d bytes of standard base64", ed25519.SignatureSize)
	}
	if err := p.Validate(); err != nil {
		return checkErr(ErrBadSignature, "cannot verify: %v", err)
	}
	if !ed25519.Verify(key, p.Message(), raw) {
		return checkErr(ErrBadSignature, "key %q did not sign type %q, version %q, size %d, sha256 %s",
			keyID, protocol.Truncate(p.Type, 32), protocol.Truncate(p.Version, 64), p.Size, p.SHA256)
	}
	return nil
}

// unknown is the error for a key ID not in the set; it names a few trusted ones.
func (t *TrustedKeys) unknown(keyID string) error {
	if keyID == "" {
		return checkErr(ErrUnknownKey, "the signature names no key_id")
	}
	ids := t.IDs()
	switch {
	case len(ids) == 0:
		return checkErr(ErrUnknownKey, "%q: no trusted keys are configured", protocol.Truncate(keyID, 64))
	case len(ids) > 3:
		ids = append(ids[:3], fmt.Sprintf("and %d more", len(ids)-3))
	}
	return checkErr(ErrUnknownKey, "%q is not a trusted key (trusted: %s)", protocol.Truncate(keyID, 64), strings.Join(ids, ", "))
}
