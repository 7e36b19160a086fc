package pkgsig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/otaflow/otaflow/internal/protocol"
)

// maxSidecarSize bounds what is read of a sidecar file.
const maxSidecarSize = 64 << 10

// Sidecar describes a signed package, in a JSON file that travels with it (starter package
// sign --sidecar): everything an upgrade needs to name and verify the package but its URL.
type Sidecar struct {
	Type    string `json:"type"`
	Version string `json:"version"`
	Size    int64  `json:"size"`
	MD5     string `json:"md5"`
	SHA256  string `json:"sha256"`
	Sig     string `json:"sig"`
	KeyID   string `json:"key_id"`
}

// Package is the signed part of the sidecar.
func (s Sidecar) Package() Package {
	return Package{Type: s.Type, Version: s.Version, Size: s.Size, SHA256: s.SHA256}
}

// Validate checks every field is present and well-formed (it does not verify the signature:
// that is TrustedKeys.Verify's job).
func (s Sidecar) Validate() error {
	if err := s.Package().Validate(); err != nil {
		return err
	}
	if s.Sig == "" || s.KeyID == "" {
		return errors.New("sig and key_id are required")
	}
	_, sigErr := protocol.DecodeSignature(s.Sig)
	for _, err := range []error{protocol.ValidateMD5(s.MD5), sigErr, protocol.ValidateKeyID(s.KeyID)} {
		if err != nil {
			return errors.New(protocol.Reason(err))
		}
	}
	return nil
}

// ReadSidecar reads and validates a sidecar file.
func ReadSidecar(path string) (Sidecar, error) {
	f, err := os.Open(path)
	if err != nil {
		return Sidecar{}, fmt.Errorf("sidecar: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSidecarSize+1))
	if err != nil {
		return Sidecar{}, fmt.Errorf("sidecar %s: %w", path, err)
	}
	if len(data) > maxSidecarSize {
		return Sidecar{}, fmt.Errorf("sidecar %s is larger than %d bytes", path, maxSidecarSize)
	}
	var s Sidecar
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&s); err != nil {
		return Sidecar{}, fmt.Errorf("sidecar %s is not a JSON object of the package's fields: %w", path, err)
	}
	if dec.More() {
		return Sidecar{}, fmt.Errorf("sidecar %s: trailing data after the JSON object", path)
	}
	if err := s.Validate(); err != nil {
		return Sidecar{}, fmt.Errorf("sidecar %s: %w", path, err)
	}
	return s, nil
}

// WriteSidecar writes a sidecar file as indented JSON, atomically: a reader sees the old
// file or the new one, never a part.
func WriteSidecar(path string, s Sidecar) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	data = append(data, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write sidecar %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing to remove
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write sidecar %s: %w", path, err)
	}
	return nil
}
