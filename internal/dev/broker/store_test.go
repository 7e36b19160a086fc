package broker

import (
	"os"
	"testing"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

// TestStoreCredentials authenticates devices against the real device registry.
func TestStoreCredentials(t *testing.T) {
	ctx := t.Context()
	st, err := store.Open(ctx, testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	secret, err := credential.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := credential.Hash(secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-1", "dev-disabled"} {
		if err := st.AddDevice(ctx, id, hash, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.SetDisabled(ctx, "dev-disabled", true); err != nil {
		t.Fatal(err)
	}
	b, _ := startBroker(t, st)

	tests := []struct {
		name string
		cfg  clientConfig
		ok   bool
	}{
		{"registered device", deviceConfig("dev-1", secret), true},
		{"wrong secret", deviceConfig("dev-1", secret+"x"), false},
		{"unknown device", deviceConfig("dev-unknown", secret), false},
		{"disabled device", deviceConfig("dev-disabled", secret), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := dial(t, b, tt.cfg)
			if tt.ok != (err == nil) {
				t.Fatalf("connect error = %v, want ok=%v", err, tt.ok)
			}
			if cl != nil {
				cl.Disconnect(50)
			}
		})
	}

	// Disabling a connected-before device refuses its next connection, cache or not.
	if err := st.SetDisabled(ctx, "dev-1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, b, deviceConfig("dev-1", secret)); err == nil {
		t.Error("disabled device reconnected")
	}
}
