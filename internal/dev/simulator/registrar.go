package simulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/store"
)

// Registrar makes sure devices are registered and returns their secrets.
type Registrar interface {
	// Secrets returns the secret of every device in ids.
	Secrets(ctx context.Context, ids []string) (map[string]string, error)
}

// DeviceStore is what StoreRegistrar needs of the device registry; *store.Store satisfies it.
type DeviceStore interface {
	DeviceCredentials(ctx context.Context, id string) (secretHash string, disabled bool, err error)
	SetSecretHash(ctx context.Context, id, secretHash string) error
}

// SecretsFile is the name of the file, in StoreRegistrar.StateDir, that keeps the secrets.
const SecretsFile = "devicesim-secrets.json"

// StoreRegistrar keeps simulated devices' secrets in a file in StateDir, so a restarted
// simulator reuses them, and registers in Store the devices whose registered hash is missing
// or does not match the kept secret (a new secret, hashed with credential.Hash, set with
// SetSecretHash). New secrets are written to the file before the store, so none is lost.
// One simulator at a time may use a state directory.
type StoreRegistrar struct {
	// Store is the device registry; it may be nil when NoRegister is set.
	Store DeviceStore
	// StateDir holds SecretsFile; "" keeps secrets only in memory (a restarted simulator
	// registers its devices again).
	StateDir string
	// NoRegister only reads secrets from the file and never touches the store: every device
	// must already have a secret there.
	NoRegister bool
	// Logger receives progress logs; nil means slog.Default().
	Logger *slog.Logger
	// Accounts, when set, is the production broker's account administration: a device given
	// a new secret gets its broker account with it (after the registry), as `starter devices
	// add` does. Nil: the broker reads the registry (the embedded broker).
	Accounts Accounts
}

// Accounts sets a device's broker account; *brokeraccounts.Admin satisfies it.
type Accounts interface {
	SetDeviceSecret(ctx context.Context, id, secret string) (created bool, err error)
}

// keptSecret is a device's entry in SecretsFile.
type keptSecret struct {
	Secret string `json:"secret"`
	// Hash is the hash registered for Secret, so a restart recognises it without argon2.
	Hash string `json:"hash"`
}

// freshSecret is a kept secret to save, and to register when register is set.
type freshSecret struct {
	keptSecret
	register bool
}

type secretsFile struct {
	Devices map[string]keptSecret `json:"devices"`
}

// Secrets returns the devices' secrets, registering the missing or mismatched ones unless
// NoRegister is set.
func (r *StoreRegistrar) Secrets(ctx context.Context, ids []string) (map[string]string, error) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	kept, err := r.load()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(ids))
	if r.NoRegister {
		var missing []string
		for _, id := range ids {
			if k, ok := kept.Devices[id]; ok && k.Secret != "" {
				out[id] = k.Secret
			} else {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("registering is off and %s holds no secret for %d devices: %s",
				r.path(), len(missing), abbreviate(missing, 5))
		}
		return out, nil
	}
	if r.Store == nil {
		return nil, errors.New("registrar: no device store to register devices in")
	}

	// Check each device's registered hash against the kept one; make new secrets for the rest.
	var mu sync.Mutex
	fresh := map[string]freshSecret{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(4, 2*runtime.GOMAXPROCS(0)))
	for _, id := range ids {
		k, have := kept.Devices[id]
		g.Go(func() error {
			keep := func(f freshSecret) {
				mu.Lock()
				fresh[id] = f
				mu.Unlock()
			}
			have = have && k.Secret != ""
			hash, disabled, err := r.Store.DeviceCredentials(gctx, id)
			switch {
			case errors.Is(err, store.ErrNotFound):
				if have && k.Hash != "" { // kept by a run that stopped before registering it
					keep(freshSecret{keptSecret: k, register: true})
					return nil
				}
			case err != nil:
				return fmt.Errorf("registrar: %w", err)
			default:
				if disabled {
					log.Warn("device is disabled; the broker will refuse it", "device", id)
				}
				if have && hash == k.Hash {
					return nil
				}
				// Registered elsewhere with the same secret (hashed again)?
				if have {
					if ok, _ := credential.Verify(hash, k.Secret); ok {
						keep(freshSecret{keptSecret: keptSecret{Secret: k.Secret, Hash: hash}})
						return nil
					}
				}
			}
			secret, err := credential.NewSecret()
			if err != nil {
				return err
			}
			h, err := credential.Hash(secret)
			if err != nil {
				return err
			}
			keep(freshSecret{keptSecret: keptSecret{Secret: secret, Hash: h}, register: true})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	if len(fresh) > 0 {
		for id, k := range fresh {
			kept.Devices[id] = k.keptSecret
		}
		if err := r.save(kept); err != nil {
			return nil, err
		}
		n := 0
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		for id, k := range fresh {
			if !k.register {
				continue
			}
			n++
			g.Go(func() error {
				if err := r.Store.SetSecretHash(gctx, id, k.Hash); err != nil {
					return fmt.Errorf("registrar: %w", err)
				}
				if r.Accounts != nil {
					if _, err := r.Accounts.SetDeviceSecret(gctx, id, k.Secret); err != nil {
						return fmt.Errorf("registrar: broker account of %s: %w", id, err)
					}
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		if n > 0 {
			log.Info("registered devices", "count", n, "secrets", r.path())
		}
	}
	for _, id := range ids {
		out[id] = kept.Devices[id].Secret
	}
	return out, nil
}

func (r *StoreRegistrar) path() string {
	if r.StateDir == "" {
		return "(memory)"
	}
	return filepath.Join(r.StateDir, SecretsFile)
}

func (r *StoreRegistrar) load() (secretsFile, error) {
	f := secretsFile{Devices: map[string]keptSecret{}}
	if r.StateDir == "" {
		return f, nil
	}
	b, err := os.ReadFile(r.path())
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("registrar: read secrets: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("registrar: %s is not a secrets file: %w", r.path(), err)
	}
	if f.Devices == nil {
		f.Devices = map[string]keptSecret{}
	}
	return f, nil
}

// save replaces the secrets file atomically.
func (r *StoreRegistrar) save(f secretsFile) error {
	if r.StateDir == "" {
		return nil
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("registrar: encode secrets: %w", err)
	}
	if err := writeFileAtomic(r.StateDir, SecretsFile, b, 0o600); err != nil {
		return fmt.Errorf("registrar: %w", err)
	}
	return nil
}
