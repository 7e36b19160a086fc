package activities_test

import (
	"context"
	"crypto/ed25519"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// testPackage is a package served by a test server, signed by "release-1".
type testPackage struct {
	url, md5, sha256 string
	size             int64
	sig              string
	trusted, other   *pkgsig.TrustedKeys // trusted holds release-1; other holds another key of that ID
}

func newTestPackage(t *testing.T, body []byte) testPackage {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fw.bin" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	m, s := md5.Sum(body), sha256.Sum256(body)
	p := testPackage{url: srv.URL + "/fw.bin", md5: hex.EncodeToString(m[:]), sha256: hex.EncodeToString(s[:]), size: int64(len(body))}
	keys := func() (*pkgsig.TrustedKeys, ed25519.PrivateKey) {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k, err := pkgsig.NewTrustedKeys(map[string]ed25519.PublicKey{"release-1": pub})
		if err != nil {
			t.Fatal(err)
		}
		return k, priv
	}
	var priv ed25519.PrivateKey
	p.trusted, priv = keys()
	p.other, _ = keys()
	sig, err := pkgsig.Sign(priv, pkgsig.Package{Type: "firmware", Version: "1.1", Size: p.size, SHA256: p.sha256})
	if err != nil {
		t.Fatal(err)
	}
	p.sig = sig
	return p
}

// check is the signed package's pre-flight check.
func (p testPackage) check() ota.PackageCheck {
	return ota.PackageCheck{URL: p.url, MD5: p.md5, Size: p.size, Type: "firmware", Version: "1.1",
		SHA256: p.sha256, Sig: p.sig, KeyID: "release-1"}
}

// errType is the type of a non-retryable application error, "" for nil, and fails the test
// for any other error.
func errType(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.NonRetryable() {
		t.Fatalf("error %v is not a non-retryable application error", err)
	}
	return appErr.Type()
}

func TestCheckPackage(t *testing.T) {
	p := newTestPackage(t, []byte("OTAflow test package, version 1.1\n"))
	unsigned := func(c ota.PackageCheck) ota.PackageCheck { c.Sig, c.KeyID = "", ""; return c }
	tests := []struct {
		name     string
		policy   pkgsig.Policy
		check    func(ota.PackageCheck) ota.PackageCheck
		wantType string
		wantText string
	}{
		{name: "signed, verified", policy: pkgsig.Policy{Keys: p.trusted}},
		{name: "signed, the worker without keys checks the download only"},
		{name: "unsigned, no policy", policy: pkgsig.Policy{Keys: p.trusted}, check: unsigned},
		{name: "unsigned without sha256, no policy", check: func(c ota.PackageCheck) ota.PackageCheck {
			c = unsigned(c)
			c.SHA256 = ""
			return c
		}},
		{name: "unsigned under the require-signatures policy", policy: pkgsig.Policy{Keys: p.trusted, RequireSignature: true},
			check: unsigned, wantType: ota.ErrTypeMissingSignature, wantText: "missing signature: "},
		{name: "unknown key", policy: pkgsig.Policy{Keys: p.trusted},
			check:    func(c ota.PackageCheck) ota.PackageCheck { c.KeyID = "release-2"; return c },
			wantType: ota.ErrTypeUnknownKey, wantText: `unknown key_id: "release-2" is not a trusted key (trusted: release-1)`},
		{name: "signed by another key of the same ID", policy: pkgsig.Policy{Keys: p.other},
			wantType: ota.ErrTypeBadSignature, wantText: `bad signature: key "release-1" did not sign`},
		{name: "signature of another version", policy: pkgsig.Policy{Keys: p.trusted},
			check:    func(c ota.PackageCheck) ota.PackageCheck { c.Version = "1.2"; return c },
			wantType: ota.ErrTypeBadSignature, wantText: "bad signature: "},
		{name: "tampered: the download does not have the sha256 announced", policy: pkgsig.Policy{Keys: p.other},
			check: func(c ota.PackageCheck) ota.PackageCheck {
				return unsigned(ota.PackageCheck{URL: c.URL, MD5: c.MD5, Size: c.Size, Type: c.Type, Version: c.Version,
					SHA256: "0000000000000000000000000000000000000000000000000000000000000000"})
			},
			wantType: ota.ErrTypeSHA256Mismatch, wantText: "sha256 mismatch: the package's sha256 is " + p.sha256},
		{name: "md5 mismatch", check: func(c ota.PackageCheck) ota.PackageCheck { c.MD5 = "9e107d9d372bb6826bd81d3542a419d6"; return c },
			wantType: ota.ErrTypePackageMismatch, wantText: "but the upgrade says"},
		{name: "not found", check: func(c ota.PackageCheck) ota.PackageCheck { c.URL += ".missing"; return c },
			wantType: ota.ErrTypePackageMismatch, wantText: "404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &activities.Activities{Packages: tt.policy}
			c := p.check()
			if tt.check != nil {
				c = tt.check(c)
			}
			err := a.CheckPackage(context.Background(), c)
			if got := errType(t, err); got != tt.wantType {
				t.Fatalf("CheckPackage: error %v (type %q), want type %q", err, got, tt.wantType)
			}
			if err != nil && !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not say %q", err, tt.wantText)
			}
		})
	}
}

// fakeStore is the part of the store SendCommand uses, in memory; the rest is not used.
type fakeStore struct {
	activities.Store
	mu       sync.Mutex
	devices  map[string]store.Device
	recorded []store.Upgrade
}

func (f *fakeStore) GetDevice(_ context.Context, id string) (store.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[id]
	if !ok {
		return store.Device{}, fmt.Errorf("device %s: %w", id, store.ErrNotFound)
	}
	return d, nil
}

func (f *fakeStore) RecordUpgrade(_ context.Context, u store.Upgrade, _ time.Time, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recorded = append(f.recorded, u)
	return nil
}

func (f *fakeStore) GetUpgrade(_ context.Context, runID string) (store.Upgrade, error) {
	return store.Upgrade{}, fmt.Errorf("upgrade %s: %w", runID, store.ErrNotFound)
}

// published records what the activities publish, by topic.
type published struct {
	mu       sync.Mutex
	topics   []string
	payloads [][]byte
}

func (p *published) Publish(_ context.Context, topic string, payload []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.topics = append(p.topics, topic)
	p.payloads = append(p.payloads, payload)
	return nil
}

func TestSendCommandChecks(t *testing.T) {
	p := newTestPackage(t, []byte("another OTAflow test package\n"))
	pump := store.Device{ID: "pump-1", Labels: map[string]string{"model": "pump-v2"}, Reported: protocol.Status{"firmware_ver": "1.0"}}
	command := func() protocol.UpgradeCommand {
		now := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
		return protocol.UpgradeCommand{ID: "run-1", Type: "firmware", Version: "1.1", URL: p.url, MD5: p.md5, Size: p.size,
			SHA256: p.sha256, Sig: p.sig, KeyID: "release-1", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	}
	tests := []struct {
		name     string
		policy   pkgsig.Policy
		reported string // the device's firmware_ver, default 1.0
		compat   *ota.Compatibility
		cmd      func(*protocol.UpgradeCommand)
		wantType string
		wantText string
		wantSkip bool
	}{
		{name: "signed, fits", policy: pkgsig.Policy{Keys: p.trusted},
			compat: &ota.Compatibility{Labels: map[string]string{"model": "pump-v2"}, Versions: ">=1.0,<2.0"}},
		{name: "unsigned, no policy", cmd: func(c *protocol.UpgradeCommand) { c.Sig, c.KeyID = "", "" }},
		{name: "unsigned under the policy", policy: pkgsig.Policy{Keys: p.trusted, RequireSignature: true},
			cmd: func(c *protocol.UpgradeCommand) { c.Sig, c.KeyID = "", "" }, wantType: ota.ErrTypeMissingSignature},
		{name: "unknown key", policy: pkgsig.Policy{Keys: p.trusted},
			cmd: func(c *protocol.UpgradeCommand) { c.KeyID = "release-9" }, wantType: ota.ErrTypeUnknownKey},
		{name: "bad signature", policy: pkgsig.Policy{Keys: p.other}, wantType: ota.ErrTypeBadSignature},
		{name: "bad signature, worker without keys: left to the device", policy: pkgsig.Policy{}},
		{name: "label does not fit", compat: &ota.Compatibility{Labels: map[string]string{"model": "pump-v3"}},
			wantType: ota.ErrTypeIncompatible, wantText: `device pump-1 does not fit the package: label model is "pump-v2", the package needs "pump-v3"`},
		{name: "version out of range", reported: "2.5", compat: &ota.Compatibility{Versions: ">=1.0,<2.0"},
			wantType: ota.ErrTypeIncompatible, wantText: "version 2.5 is outside >=1.0,<2.0"},
		{name: "already on the target: skipped, whatever the range", reported: "1.1", compat: &ota.Compatibility{Versions: "<1.1"},
			wantSkip: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := pump
			dev.Reported = protocol.Status{"firmware_ver": "1.0"}
			if tt.reported != "" {
				dev.Reported["firmware_ver"] = tt.reported
			}
			st := &fakeStore{devices: map[string]store.Device{dev.ID: dev}}
			pub := &published{}
			a := &activities.Activities{Store: st, Publisher: pub, Packages: tt.policy}
			cmd := command()
			if tt.cmd != nil {
				tt.cmd(&cmd)
			}
			in := ota.SendCommandInput{Upgrade: ota.UpgradeRecord{RunID: "run", DeviceID: dev.ID, Type: "firmware", Version: "1.1"},
				Command: cmd, VersionKey: "firmware_ver", CheckSkip: true, Compat: tt.compat}
			res, err := a.SendCommand(context.Background(), in)
			if got := errType(t, err); got != tt.wantType {
				t.Fatalf("SendCommand: error %v (type %q), want type %q", err, got, tt.wantType)
			}
			if err != nil && !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not say %q", err, tt.wantText)
			}
			sent := err == nil && !tt.wantSkip
			if res.Skipped != tt.wantSkip {
				t.Errorf("skipped = %v, want %v", res.Skipped, tt.wantSkip)
			}
			if n := len(pub.topics); (n == 1) != sent || n > 1 {
				t.Fatalf("published %d messages; want a command: %v", n, sent)
			}
			if (len(st.recorded) > 0) != (err == nil) {
				t.Errorf("recorded %d states with error %v: a refused command records nothing", len(st.recorded), err)
			}
			if !sent {
				return
			}
			got, err := protocol.ParseCommand(pub.payloads[0])
			if err != nil || pub.topics[0] != protocol.CommandTopic(dev.ID) || got.SHA256 != cmd.SHA256 || got.Sig != cmd.Sig || got.KeyID != cmd.KeyID {
				t.Errorf("published %s %+v (%v); want the command with its sha256, sig and key_id", pub.topics[0], got, err)
			}
		})
	}
}

func TestSendCancel(t *testing.T) {
	pub := &published{}
	a := &activities.Activities{Publisher: pub}
	if err := a.SendCancel(context.Background(), ota.CancelCommandInput{DeviceID: "pump-1", CommandID: "run-1-2"}); err != nil {
		t.Fatal(err)
	}
	if len(pub.topics) != 1 || pub.topics[0] != protocol.CancelTopic("pump-1") {
		t.Fatalf("published on %v, want %s", pub.topics, protocol.CancelTopic("pump-1"))
	}
	msg, err := protocol.ParseCancel(pub.payloads[0])
	if err != nil || msg.ID != "run-1-2" {
		t.Errorf("cancel message %s: %+v, %v", pub.payloads[0], msg, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(pub.payloads[0], &raw); err != nil || len(raw) != 1 {
		t.Errorf("cancel message %s: want exactly {\"id\": ...}", pub.payloads[0])
	}
	for _, in := range []ota.CancelCommandInput{{DeviceID: "pump-1"}, {DeviceID: "bad/id", CommandID: "c"}} {
		if err := a.SendCancel(context.Background(), in); errType(t, err) != ota.ErrTypeInvalidCommand {
			t.Errorf("SendCancel(%+v) = %v, want an invalid command", in, err)
		}
	}
	if len(pub.topics) != 1 {
		t.Errorf("an invalid cancel was published")
	}
}
