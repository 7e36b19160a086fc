package pkgsig

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
)

// Digest is a package's size and hashes, computed from its bytes.
type Digest struct {
	Size int64
	// MD5 and SHA256 are lowercase hex, as commands carry them.
	MD5    string
	SHA256 string
}

// Hasher computes the Digest of the bytes written to it, in one pass: wrap a download in an
// io.TeeReader or io.Copy into it.
type Hasher struct {
	md5, sha256 hash.Hash
	n           int64
}

// NewHasher returns a Hasher of nothing yet.
func NewHasher() *Hasher { return &Hasher{md5: md5.New(), sha256: sha256.New()} }

// Write hashes p; it never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	h.md5.Write(p)
	h.sha256.Write(p)
	h.n += int64(len(p))
	return len(p), nil
}

// Digest returns the digest of what was written so far.
func (h *Hasher) Digest() Digest {
	return Digest{Size: h.n, MD5: hex.EncodeToString(h.md5.Sum(nil)), SHA256: hex.EncodeToString(h.sha256.Sum(nil))}
}

// HashReader reads r to its end and returns the digest of what it read. On a read error it
// returns the error and the digest of what was read before it.
func HashReader(r io.Reader) (Digest, error) {
	h := NewHasher()
	_, err := io.Copy(h, r)
	return h.Digest(), err
}
