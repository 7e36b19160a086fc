package simulator

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(t.Context(), testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func TestStoreRegistrar(t *testing.T) {
	ctx := t.Context()
	st := openStore(t)
	dir := filepath.Join(t.TempDir(), "state")
	ids := []string{"sim-00001", "sim-00002", "sim-00003"}
	logger := slog.New(slog.DiscardHandler)

	// First run: registers every device and keeps the secrets.
	first, err := (&StoreRegistrar{Store: st, StateDir: dir, Logger: logger}).Secrets(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	hashes := map[string]string{}
	for _, id := range ids {
		hash, disabled, err := st.DeviceCredentials(ctx, id)
		if err != nil || disabled {
			t.Fatalf("%s: registered = %v, disabled = %v", id, err, disabled)
		}
		if ok, err := credential.Verify(hash, first[id]); !ok || err != nil {
			t.Fatalf("%s: registered hash does not match the secret (%v)", id, err)
		}
		hashes[id] = hash
	}
	info, err := os.Stat(filepath.Join(dir, SecretsFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("secrets file mode = %v, want 0600", perm)
	}

	// A restarted simulator reuses the secrets and leaves the registry alone.
	again, err := (&StoreRegistrar{Store: st, StateDir: dir, Logger: logger}).Secrets(ctx, append(ids, "sim-00004"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		hash, _, _ := st.DeviceCredentials(ctx, id)
		if again[id] != first[id] || hash != hashes[id] {
			t.Errorf("%s: secret or hash changed on restart", id)
		}
	}
	if again["sim-00004"] == "" {
		t.Error("new device got no secret")
	}

	// The registry lost a device's hash (a new database): it is registered again. Another
	// hash of the kept secret is accepted as is.
	if err := st.SetSecretHash(ctx, "sim-00001", "$argon2id$v=19$m=8192,t=1,p=1$AAAA$AAAA"); err != nil {
		t.Fatal(err)
	}
	rehash, err := credential.Hash(first["sim-00002"])
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetSecretHash(ctx, "sim-00002", rehash); err != nil {
		t.Fatal(err)
	}
	third, err := (&StoreRegistrar{Store: st, StateDir: dir, Logger: logger}).Secrets(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	hash1, _, _ := st.DeviceCredentials(ctx, "sim-00001")
	if ok, _ := credential.Verify(hash1, third["sim-00001"]); !ok {
		t.Error("sim-00001 was not registered again with a working secret")
	}
	if third["sim-00002"] != first["sim-00002"] {
		t.Error("sim-00002 got a new secret although the registry holds a hash of the kept one")
	}
	if hash2, _, _ := st.DeviceCredentials(ctx, "sim-00002"); hash2 != rehash {
		t.Error("sim-00002's registered hash was replaced")
	}

	// A device kept in the file but missing from the registry (a run stopped between writing
	// the file and registering) is registered with its kept secret.
	other := openStore(t)
	fourth, err := (&StoreRegistrar{Store: other, StateDir: dir, Logger: logger}).Secrets(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		hash, _, err := other.DeviceCredentials(ctx, id)
		if err != nil {
			t.Fatalf("%s not registered in the new registry: %v", id, err)
		}
		if fourth[id] != third[id] {
			t.Errorf("%s: secret changed", id)
		}
		if ok, _ := credential.Verify(hash, fourth[id]); !ok {
			t.Errorf("%s: registered hash does not match the kept secret", id)
		}
	}

	// Registering off: secrets come from the file alone, and a device without one is an error.
	noReg, err := (&StoreRegistrar{StateDir: dir, NoRegister: true}).Secrets(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if noReg[id] != third[id] {
			t.Errorf("%s: NoRegister returned another secret", id)
		}
	}
	if _, err := (&StoreRegistrar{StateDir: dir, NoRegister: true}).Secrets(ctx, []string{"sim-00001", "other"}); err == nil ||
		!strings.Contains(err.Error(), "other") {
		t.Errorf("NoRegister with a device missing from the file: error = %v", err)
	}
}

func TestStoreRegistrarBadInput(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, SecretsFile), []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := (&StoreRegistrar{StateDir: dir, NoRegister: true}).Secrets(t.Context(), []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "not a secrets file") {
		t.Errorf("corrupt secrets file: error = %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, SecretsFile))
	if string(b) != "not json" {
		t.Error("the corrupt file was overwritten")
	}
	_, err = (&StoreRegistrar{StateDir: t.TempDir()}).Secrets(t.Context(), []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "no device store") {
		t.Errorf("no store: error = %v", err)
	}
}

// TestFleetWithStore runs devices registered by the registrar against a broker that checks
// the real registry: the path devstack and the demo take.
func TestFleetWithStore(t *testing.T) {
	st := openStore(t)
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Credentials: st, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.WithoutCancel(t.Context())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })

	dir := t.TempDir()
	run := func(register bool) Stats {
		f, err := New(Config{
			BrokerURL: b.URL(), Prefix: "reg", Count: 3, Initial: protocol.Status{"app_ver": "1.0"},
			Registrar: &StoreRegistrar{Store: st, StateDir: dir, NoRegister: !register, Logger: testLogger()},
			Timing:    fastTiming(), Logger: testLogger(),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer f.Stop()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		if err := f.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
		return f.Stats()
	}
	if s := run(true); s.Connected != 3 {
		t.Errorf("first run: %v", s)
	}
	if s := run(false); s.Connected != 3 { // restarted, reusing the kept secrets
		t.Errorf("second run: %v", s)
	}
	var kept secretsFile
	raw, err := os.ReadFile(filepath.Join(dir, SecretsFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &kept); err != nil || len(kept.Devices) != 3 {
		t.Errorf("secrets file holds %d devices (%v)", len(kept.Devices), err)
	}
}
