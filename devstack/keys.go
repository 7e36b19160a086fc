package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/pkgsig"
)

// demoKeyID names the key with which devstack signs its demo package.
const demoKeyID = "devstack-demo"

// publisher is devstack's stand-in for a package publisher: a key pair made in the data
// directory on the first start and kept for later ones (publisher/devstack-demo.key, mode
// 0600), and the trusted keys directory of the worker and the simulated devices
// (trusted-keys/), which holds its public key and never a private one.
type publisher struct {
	key        ed25519.PrivateKey
	keyFile    string
	trustedDir string
	// trusted are the keys of trustedDir and of the --trusted-keys directory, if any.
	trusted *pkgsig.TrustedKeys
}

// loadPublisher makes or reads the demo key pair and the trusted keys: the demo key's, and
// those of extraDir ("" for none).
func loadPublisher(dataDir, extraDir string) (*publisher, error) {
	p := &publisher{
		keyFile:    filepath.Join(dataDir, "publisher", demoKeyID+pkgsig.PrivateKeyExt),
		trustedDir: filepath.Join(dataDir, "trusted-keys"),
	}
	if _, err := os.Stat(p.keyFile); errors.Is(err, fs.ErrNotExist) {
		if _, err := pkgsig.WriteKeyPair(filepath.Dir(p.keyFile), demoKeyID); err != nil {
			return nil, fmt.Errorf("demo signing key: %w", err)
		}
	}
	key, err := pkgsig.ReadPrivateKey(p.keyFile)
	if err != nil {
		return nil, fmt.Errorf("demo signing key: %w", err)
	}
	p.key = key
	pub, err := pkgsig.MarshalPublicKey(key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(p.trustedDir, 0o755); err != nil {
		return nil, fmt.Errorf("trusted keys directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(p.trustedDir, demoKeyID+pkgsig.PublicKeyExt), pub, 0o644); err != nil {
		return nil, fmt.Errorf("trusted keys directory: %w", err)
	}
	keys := map[string]ed25519.PublicKey{}
	for _, dir := range []string{p.trustedDir, extraDir} {
		if dir == "" {
			continue
		}
		t, err := pkgsig.LoadTrustedKeys(dir)
		if err != nil {
			return nil, err
		}
		for _, id := range t.IDs() {
			k, _ := t.Key(id)
			if prev, ok := keys[id]; ok && !prev.Equal(k) {
				return nil, fmt.Errorf("trusted keys: %s holds another key named %s than devstack's own; rename it", dir, id)
			}
			keys[id] = k
		}
	}
	if p.trusted, err = pkgsig.NewTrustedKeys(keys); err != nil {
		return nil, err
	}
	return p, nil
}

// sign signs a package of the file server as the demo publisher, as an upgrade of typ to
// version, and writes its sidecar (which `starter upgrade --sidecar` reads) to dir as
// <typ>-<version>.json.
func (p *publisher) sign(pkg system.Package, dir, typ, version string) (pkgsig.Sidecar, string, error) {
	sc := pkgsig.Sidecar{Type: typ, Version: version, Size: pkg.Size, MD5: pkg.MD5, SHA256: pkg.SHA256, KeyID: demoKeyID}
	sig, err := pkgsig.Sign(p.key, sc.Package())
	if err != nil {
		return sc, "", err
	}
	sc.Sig = sig
	path := filepath.Join(dir, typ+"-"+version+".json")
	if err := pkgsig.WriteSidecar(path, sc); err != nil {
		return sc, "", err
	}
	return sc, path, nil
}
