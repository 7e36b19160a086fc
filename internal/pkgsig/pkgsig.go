// Package pkgsig signs and verifies OTAflow packages as PROTOCOL.md 1.1 defines: an Ed25519
// signature (RFC 8032) by the package's publisher over five lines that name the package's
// type, version, size and sha256, checked against a set of trusted public keys.
//
// The publisher keeps the private key and signs (starter package sign); OTAflow and devices
// hold only public keys, one <key_id>.pub file per key in a directory, in the PEM
// SubjectPublicKeyInfo form that `openssl genpkey -algorithm ed25519` followed by
// `openssl pkey -pubout` writes, so that keys made by other tools work.
//
// A failed check is a *CheckError wrapping one of ErrMissingSignature, ErrUnknownKey,
// ErrBadSignature or ErrSHA256Mismatch: callers test which with errors.Is, and its text,
// which starts with the check's name, is what a device reports in desc.
package pkgsig

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"

	"github.com/otaflow/otaflow/internal/protocol"
)

// MessageHeader is the first line of the signed message; it names the message's format, so
// that a signature over it can never be taken for a signature over anything else.
const MessageHeader = "otaflow-package-v1"

// The checks a package can fail. A *CheckError wraps one of them.
var (
	// ErrMissingSignature: the package is not signed where a signature is required.
	ErrMissingSignature = errors.New("missing signature")
	// ErrUnknownKey: key_id names no trusted key.
	ErrUnknownKey = errors.New("unknown key_id")
	// ErrBadSignature: the signature is malformed or does not verify under its key.
	ErrBadSignature = errors.New("bad signature")
	// ErrSHA256Mismatch: the package's bytes do not have the sha256 announced (and signed).
	ErrSHA256Mismatch = errors.New("sha256 mismatch")
)

// CheckError is a failed package check: which check (Check, one of the sentinel errors) and
// what was found (Detail).
type CheckError struct {
	Check  error
	Detail string
}

// Error names the check first, e.g. `unknown key_id: "release-2027" is not a trusted key`.
func (e *CheckError) Error() string { return e.Check.Error() + ": " + e.Detail }

// Unwrap returns the check, for errors.Is.
func (e *CheckError) Unwrap() error { return e.Check }

func checkErr(check error, format string, args ...any) error {
	return &CheckError{Check: check, Detail: fmt.Sprintf(format, args...)}
}

// Package is what a signature covers: the fields of the signed message.
type Package struct {
	Type    string
	Version string
	Size    int64
	// SHA256 is the package's SHA-256, 64 lowercase hex digits.
	SHA256 string
}

// PackageOf is the package an upgrade command names.
func PackageOf(c protocol.UpgradeCommand) Package {
	return Package{Type: c.Type, Version: c.Version, Size: c.Size, SHA256: c.SHA256}
}

// Validate checks the fields are what PROTOCOL.md allows in a command.
func (p Package) Validate() error {
	for _, err := range []error{protocol.ValidateType(p.Type), protocol.ValidateVersion(p.Version), protocol.ValidateSHA256(p.SHA256)} {
		if err != nil {
			return errors.New(protocol.Reason(err))
		}
	}
	if p.Size <= 0 {
		return fmt.Errorf("size must be more than 0, not %d", p.Size)
	}
	return nil
}

// Message is the exact text signed: five lines, each ended by "\n".
//
//	otaflow-package-v1
//	{type}
//	{version}
//	{size}
//	{sha256}
//
// The size is in decimal without leading zeros. It is unambiguous even for a version that
// holds a line break: the type has none, and the size and sha256 are the last two lines.
func (p Package) Message() []byte {
	return []byte(MessageHeader + "\n" + p.Type + "\n" + p.Version + "\n" + strconv.FormatInt(p.Size, 10) + "\n" + p.SHA256 + "\n")
}

// Sign signs the package with the publisher's private key and returns the signature in
// standard base64 with padding, as a command's sig carries it.
func Sign(key ed25519.PrivateKey, p Package) (string, error) {
	if len(key) != ed25519.PrivateKeySize {
		return "", fmt.Errorf("sign: not an Ed25519 private key (%d bytes)", len(key))
	}
	if err := p.Validate(); err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return base64.StdEncoding.EncodeToString(ed25519.Sign(key, p.Message())), nil
}

// CheckSHA256 compares the sha256 a package was announced with to the one computed from the
// bytes received; a difference is ErrSHA256Mismatch.
func CheckSHA256(announced, computed string) error {
	if announced != computed {
		return checkErr(ErrSHA256Mismatch, "the package's sha256 is %s, not the %s announced", computed, announced)
	}
	return nil
}

// Environment variables of the package policy, which the worker, the starter and devstack
// read alike.
const (
	// EnvTrustedKeys names the trusted keys directory.
	EnvTrustedKeys = "OTAFLOW_TRUSTED_KEYS"
	// EnvRequireSignatures, when true, refuses unsigned packages.
	EnvRequireSignatures = "OTAFLOW_REQUIRE_SIGNATURES"
)

// LoadPolicy makes the policy of a trusted keys directory ("" for none) and the
// require-signatures setting. It refuses a policy that would refuse every package.
func LoadPolicy(dir string, requireSignature bool) (Policy, error) {
	pol := Policy{RequireSignature: requireSignature}
	if dir != "" {
		keys, err := LoadTrustedKeys(dir)
		if err != nil {
			return Policy{}, err
		}
		pol.Keys = keys
	}
	if err := pol.Validate(); err != nil {
		return Policy{}, fmt.Errorf("%w: give the trusted keys directory too", err)
	}
	return pol, nil
}

// Policy is what a package must show before a command for it is sent, or before a device
// installs it.
type Policy struct {
	// Keys are the trusted public keys; nil holds none, so that every signature is from an
	// unknown key.
	Keys *TrustedKeys
	// RequireSignature refuses unsigned packages.
	RequireSignature bool
}

// Validate refuses a policy that would refuse every package: signatures required but no key
// to verify them with.
func (pol Policy) Validate() error {
	if pol.RequireSignature && pol.Keys.Len() == 0 {
		return errors.New("signatures are required but no trusted keys are configured")
	}
	return nil
}

// Check applies the policy to a package and the signature (sig, keyID) it comes with: a
// signature, when present, must verify under a trusted key; without one, the package passes
// unless the policy requires a signature. The package's sha256 is what was announced (and
// signed); that the bytes have it is CheckSHA256's job.
func (pol Policy) Check(p Package, sig, keyID string) error {
	if sig == "" && keyID == "" {
		if pol.RequireSignature {
			return checkErr(ErrMissingSignature, "the package is not signed, and a signature is required")
		}
		return nil
	}
	return pol.Keys.Verify(p, sig, keyID)
}
