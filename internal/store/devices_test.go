package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/otaflow/otaflow/internal/store"
)

// TestThen: a registry change with a Then is committed when Then succeeds, rolled back with
// Then's error otherwise, and Then does not run when the change itself fails.
func TestThen(t *testing.T) {
	ctx := context.Background()
	errBroker := errors.New("broker down")
	type state struct {
		registered bool
		hash       string
		disabled   bool
	}
	tests := []struct {
		name   string
		change func(st *store.Store, then store.Then) error
		want   state // after a successful change; a failed one leaves {true, "h0", false}
	}{
		{"AddDeviceThen", func(st *store.Store, then store.Then) error {
			return st.AddDeviceThen(ctx, "new", "h1", nil, then)
		}, state{true, "h1", false}},
		{"AddDevicesThen", func(st *store.Store, then store.Then) error {
			return st.AddDevicesThen(ctx, []store.NewDevice{{ID: "new", SecretHash: "h1"}, {ID: "new-2", SecretHash: "h2"}}, then)
		}, state{true, "h1", false}},
		{"ReplaceSecretHashThen", func(st *store.Store, then store.Then) error {
			return st.ReplaceSecretHashThen(ctx, "new", "h1", then)
		}, state{true, "h1", false}},
		{"SetDisabledThen", func(st *store.Store, then store.Then) error {
			return st.SetDisabledThen(ctx, "new", true, then)
		}, state{true, "h0", true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t)
			adds := tt.name == "AddDeviceThen" || tt.name == "AddDevicesThen"
			before := state{}
			if !adds {
				if err := st.AddDevice(ctx, "new", "h0", nil); err != nil {
					t.Fatal(err)
				}
				before = state{true, "h0", false}
			}
			read := func() state {
				hash, disabled, err := st.DeviceCredentials(ctx, "new")
				if errors.Is(err, store.ErrNotFound) {
					return state{}
				}
				if err != nil {
					t.Fatal(err)
				}
				return state{true, hash, disabled}
			}

			// Then fails: nothing changed, Then's error returned.
			if err := tt.change(st.Store, func(context.Context) error { return errBroker }); !errors.Is(err, errBroker) {
				t.Fatalf("Then failed: %v, want its error", err)
			}
			if got := read(); got != before {
				t.Fatalf("after a failed Then: %+v, want %+v", got, before)
			}
			if adds {
				if found, _ := st.RegisteredDevices(ctx, []string{"new", "new-2"}); len(found) != 0 {
					t.Fatalf("after a failed Then, registered: %v", found)
				}
			}

			// Then succeeds: committed, and Then saw the change uncommitted.
			ran := false
			if err := tt.change(st.Store, func(context.Context) error {
				ran = true
				if got := read(); got != before {
					t.Errorf("the change is visible before Then returned: %+v", got)
				}
				return nil
			}); err != nil || !ran {
				t.Fatalf("change: %v, Then ran %v", err, ran)
			}
			if got := read(); got != tt.want {
				t.Fatalf("after the change: %+v, want %+v", got, tt.want)
			}
		})
	}

	// A change that fails (an unknown device) does not run Then.
	st := openStore(t)
	for name, change := range map[string]func(store.Then) error{
		"ReplaceSecretHashThen": func(then store.Then) error { return st.ReplaceSecretHashThen(ctx, "ghost", "h", then) },
		"SetDisabledThen":       func(then store.Then) error { return st.SetDisabledThen(ctx, "ghost", true, then) },
	} {
		ran := false
		if err := change(func(context.Context) error { ran = true; return nil }); !errors.Is(err, store.ErrNotFound) || ran {
			t.Errorf("%s of an unknown device: %v, Then ran %v; want ErrNotFound and no Then", name, err, ran)
		}
	}
}
