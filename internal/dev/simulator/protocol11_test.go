package simulator

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
)

// publisher is a package publisher's key pair for tests.
type publisher struct {
	keyID string
	pub   ed25519.PublicKey
	priv  ed25519.PrivateKey
}

func newPublisher(t *testing.T, keyID string) publisher {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return publisher{keyID: keyID, pub: pub, priv: priv}
}

// sign adds sha256 and the publisher's signature to a command, as the cloud sends them.
func (p publisher) sign(t *testing.T, c protocol.UpgradeCommand, sha256 string) protocol.UpgradeCommand {
	t.Helper()
	c.SHA256 = sha256
	sig, err := pkgsig.Sign(p.priv, pkgsig.PackageOf(c))
	if err != nil {
		t.Fatal(err)
	}
	c.Sig, c.KeyID = sig, p.keyID
	return c
}

// trust is the set of the publishers' public keys.
func trust(t *testing.T, pubs ...publisher) *pkgsig.TrustedKeys {
	t.Helper()
	m := map[string]ed25519.PublicKey{}
	for _, p := range pubs {
		m[p.keyID] = p.pub
	}
	keys, err := pkgsig.NewTrustedKeys(m)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// cancel publishes a cancel message as the worker does.
func (e *env) cancel(device, commandID string) {
	e.t.Helper()
	payload, err := json.Marshal(protocol.CancelMessage{ID: commandID})
	if err != nil {
		e.t.Fatal(err)
	}
	e.publish(protocol.CancelTopic(device), payload)
}

// TestPackageChecks: PROTOCOL.md 1.1's sha256 and signature checks, by devices with and
// without trusted keys, and by version 1 devices, which make none of them.
func TestPackageChecks(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	sha := e.files.get("/fw/1.1.bin").sha256
	release, rogue := newPublisher(t, "release"), newPublisher(t, "rogue")
	trusted := trust(t, release)
	otherSHA := strings.Repeat("0", 64)

	strict := func(c *Config) { c.TrustedKeys, c.RequireSignatures = trusted, true }
	lenient := func(c *Config) { c.TrustedKeys = trusted }
	noKeys := func(*Config) {}
	v1 := func(c *Config) { c.Protocol = ProtocolV1 }
	tamper := func(id string) Faults { return Faults{Tamper: Fault{Devices: []string{id}}} }

	signed := func(c protocol.UpgradeCommand) protocol.UpgradeCommand { return release.sign(t, c, sha) }
	tests := []struct {
		name   string
		config func(*Config)
		faults func(id string) Faults
		cmd    func(protocol.UpgradeCommand) protocol.UpgradeCommand
		// refused is the check the device names in its -2 report; "" when it installs.
		refused error
		// downloads reports whether the device downloads before it refuses.
		downloads bool
	}{
		{"signed package installs", strict, nil, signed, nil, true},
		{"unknown key", strict, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { return rogue.sign(t, c, sha) },
			pkgsig.ErrUnknownKey, false},
		{"signed by another key", strict, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand {
			c = rogue.sign(t, c, sha)
			c.KeyID = release.keyID
			return c
		}, pkgsig.ErrBadSignature, false},
		{"signature of another version", strict, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand {
			c.Version = "1.2"
			c = release.sign(t, c, sha)
			c.Version = "1.1"
			return c
		}, pkgsig.ErrBadSignature, false},
		{"missing signature, required", strict, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { c.SHA256 = sha; return c },
			pkgsig.ErrMissingSignature, false},
		{"unsigned, not required", lenient, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { c.SHA256 = sha; return c }, nil, true},
		{"signed sha256 differs from the package", strict, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { return release.sign(t, c, otherSHA) },
			pkgsig.ErrSHA256Mismatch, true},
		{"tampered download of a signed package", strict, tamper, signed, pkgsig.ErrSHA256Mismatch, true},
		{"tampered download, sha256 without keys", noKeys, tamper, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { c.SHA256 = sha; return c },
			pkgsig.ErrSHA256Mismatch, true},
		// md5 alone is fooled: what PROTOCOL.md 1.1's sha256 is for.
		{"tampered download, md5 only", noKeys, tamper, nil, nil, true},
		{"without keys, sha256 differs", noKeys, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { c.SHA256 = otherSHA; return c },
			pkgsig.ErrSHA256Mismatch, true},
		{"without keys, a signature is not verified", noKeys, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { return rogue.sign(t, c, sha) }, nil, true},
		{"version 1 device ignores sha256 and sig", v1, nil, func(c protocol.UpgradeCommand) protocol.UpgradeCommand { return rogue.sign(t, c, otherSHA) }, nil, true},
		{"version 1 device installs a tampered download", v1, tamper, signed, nil, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := e.with(t)
			id := fmt.Sprintf("dev-%d", i)
			f := e.startFleetWith([]string{id}, func(c *Config) {
				tt.config(c)
				if tt.faults != nil {
					c.Faults = tt.faults(id)
				}
			})
			cmd := e.command(id+"-cmd", "/fw/1.1.bin")
			if tt.cmd != nil {
				cmd = tt.cmd(cmd)
			}
			e.send(id, cmd)

			if tt.refused == nil {
				e.watcher.waitFor(t, id, "new version", hasStatus("firmware_ver", "1.1"))
				st := waitState(t, f, id, "idle", func(s DeviceState) bool { return s.Working == "" })
				if st.Installs != 1 || st.Upgrades != 1 || st.Failures != 0 {
					t.Errorf("state = %+v, want one install", st)
				}
				return
			}
			evs := e.watcher.waitFor(t, id, "refusal", hasCode(protocol.CodeMD5Mismatch))
			p := progressOf(evs, cmd.ID)
			last := p[len(p)-1]
			if !strings.HasPrefix(last.Desc, tt.refused.Error()+": ") {
				t.Errorf("desc = %q, want it to name the check %q", last.Desc, tt.refused)
			}
			if downloaded := len(p) > 1; downloaded != tt.downloads {
				t.Errorf("downloaded = %v, want %v: reports %v", downloaded, tt.downloads, p)
			}
			st := waitState(t, f, id, "idle", func(s DeviceState) bool { return s.Working == "" })
			if st.Installs != 0 || st.Status["firmware_ver"] != "1.0" || st.LastCode != protocol.CodeMD5Mismatch || st.LastDesc != last.Desc {
				t.Errorf("state = %+v, want no install and the refusal", st)
			}
		})
	}
}

// slowInstall makes an install take long enough for a test to send a cancel during it.
func slowInstall(c *Config) { c.Timing.InstallDelay = 2 * time.Second }

// downloading waits until the device reported download progress for a command.
func (e *env) downloading(t *testing.T, device, cmdID string) {
	t.Helper()
	e.watcher.waitFor(t, device, "download progress", func(evs []event) bool { return len(progressOf(evs, cmdID)) > 0 })
}

func TestCancel(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)

	t.Run("stops a download", func(t *testing.T) {
		t.Parallel()
		e := e.with(t)
		e.files.addStalled(t, "/fw/stalled-1.bin", pkgSize)
		f := e.startFleet([]string{"dev-a"}, Faults{})
		e.send("dev-a", e.command("a1", "/fw/stalled-1.bin"))
		e.downloading(t, "dev-a", "a1")
		e.cancel("dev-a", "a1")
		evs := e.watcher.waitFor(t, "dev-a", "cancel confirmed", hasCode(protocol.CodeOther))
		p := progressOf(evs, "a1")
		if last := p[len(p)-1]; last.Desc != protocol.DescCanceled {
			t.Errorf("last report = %+v, want -4 %q", last, protocol.DescCanceled)
		}
		for _, r := range p {
			if r.Progress == 100 {
				t.Errorf("the download completed: %v", p)
			}
		}
		st := waitState(t, f, "dev-a", "idle", func(s DeviceState) bool { return s.Working == "" })
		if st.Installs != 0 || st.Canceled != 1 || st.Failures != 0 || st.Status["firmware_ver"] != "1.0" {
			t.Errorf("state = %+v, want one canceled attempt and no install", st)
		}
		if s := f.Stats(); s.Canceled != 1 || s.Failed != 0 {
			t.Errorf("stats = %v", s)
		}
		// The device takes the next command.
		e.send("dev-a", e.command("a2", "/fw/1.1.bin"))
		e.watcher.waitFor(t, "dev-a", "new version", hasStatus("firmware_ver", "1.1"))
	})

	t.Run("stops a queued command before it starts", func(t *testing.T) {
		t.Parallel()
		e := e.with(t)
		e.files.addStalled(t, "/fw/stalled-2.bin", pkgSize)
		f := e.startFleet([]string{"dev-b"}, Faults{})
		e.send("dev-b", e.command("b1", "/fw/stalled-2.bin"))
		e.downloading(t, "dev-b", "b1")
		e.send("dev-b", e.command("b2", "/fw/1.1.bin"))
		waitState(t, f, "dev-b", "b2 queued", func(s DeviceState) bool { return len(s.Received) == 2 })
		e.cancel("dev-b", "b2")
		e.cancel("dev-b", "b1") // handled after b2's: when b1 stops, b2's cancel is known
		evs := e.watcher.waitFor(t, "dev-b", "both canceled", func(evs []event) bool {
			n := 0
			for _, id := range []string{"b1", "b2"} {
				if p := progressOf(evs, id); len(p) > 0 && p[len(p)-1].Progress == protocol.CodeOther {
					n++
				}
			}
			return n == 2
		})
		if p := progressOf(evs, "b2"); len(p) != 1 || p[0].Desc != protocol.DescCanceled {
			t.Errorf("b2 reports %v, want only its cancel confirmation", p)
		}
		st := waitState(t, f, "dev-b", "idle", func(s DeviceState) bool { return s.Working == "" && s.Canceled == 2 })
		if st.Attempts != 1 || st.Installs != 0 {
			t.Errorf("state = %+v, want b1 attempted and neither installed", st)
		}
	})

	t.Run("a cancel that overtakes its command", func(t *testing.T) {
		t.Parallel()
		e := e.with(t)
		f := e.startFleet([]string{"dev-c"}, Faults{})
		e.cancel("dev-c", "c1")
		e.send("dev-c", e.command("c1", "/fw/1.1.bin"))
		evs := e.watcher.waitFor(t, "dev-c", "cancel confirmed", hasCode(protocol.CodeOther))
		if p := progressOf(evs, "c1"); len(p) != 1 || p[0].Desc != protocol.DescCanceled {
			t.Errorf("reports %v, want only the cancel confirmation", p)
		}
		if st := waitState(t, f, "dev-c", "idle", func(s DeviceState) bool { return s.Canceled == 1 }); st.Attempts != 0 || st.Installs != 0 {
			t.Errorf("state = %+v", st)
		}
	})

	t.Run("too late once installing", func(t *testing.T) {
		t.Parallel()
		e := e.with(t)
		f := e.startFleetWith([]string{"dev-d"}, slowInstall)
		e.send("dev-d", e.command("d1", "/fw/1.1.bin"))
		waitState(t, f, "dev-d", "installing", func(s DeviceState) bool { return s.Installs == 1 })
		e.cancel("dev-d", "d1")
		evs := e.watcher.waitFor(t, "dev-d", "new version", hasStatus("firmware_ver", "1.1"))
		if hasCode(protocol.CodeOther)(evs) {
			t.Errorf("the device confirmed a cancel during its install: %v", progressOf(evs, "d1"))
		}
		if st := waitState(t, f, "dev-d", "idle", func(s DeviceState) bool { return s.Working == "" }); st.Canceled != 0 || st.Upgrades != 1 {
			t.Errorf("state = %+v", st)
		}
	})

	t.Run("a cancel for another command", func(t *testing.T) {
		t.Parallel()
		e := e.with(t)
		release := e.files.addStalled(t, "/fw/stalled-3.bin", pkgSize)
		f := e.startFleet([]string{"dev-e"}, Faults{})
		e.send("dev-e", e.command("e2", "/fw/stalled-3.bin"))
		e.downloading(t, "dev-e", "e2")
		e.cancel("dev-e", "e1")                                // an older attempt's
		e.publish(protocol.CancelTopic("dev-e"), []byte(`{}`)) // invalid: ignored
		e.cancel("dev-e", "e2-other")
		release()
		evs := e.watcher.waitFor(t, "dev-e", "new version", hasStatus("firmware_ver", "1.1"))
		if hasCode(protocol.CodeOther)(evs) {
			t.Errorf("canceled: %v", progressOf(evs, "e2"))
		}
		if st := waitState(t, f, "dev-e", "idle", func(s DeviceState) bool { return s.Working == "" }); st.Canceled != 0 || st.Installs != 1 {
			t.Errorf("state = %+v", st)
		}
	})

	t.Run("a version 1 device hears no cancel", func(t *testing.T) {
		t.Parallel()
		e := e.with(t)
		release := e.files.addStalled(t, "/fw/stalled-4.bin", pkgSize)
		f := e.startFleetWith([]string{"dev-f"}, func(c *Config) { c.Protocol = ProtocolV1 })
		e.send("dev-f", e.command("f1", "/fw/stalled-4.bin"))
		e.downloading(t, "dev-f", "f1")
		e.cancel("dev-f", "f1")
		release()
		evs := e.watcher.waitFor(t, "dev-f", "new version", hasStatus("firmware_ver", "1.1"))
		if hasCode(protocol.CodeOther)(evs) {
			t.Errorf("a version 1 device was canceled: %v", progressOf(evs, "f1"))
		}
		if st := waitState(t, f, "dev-f", "idle", func(s DeviceState) bool { return s.Working == "" }); st.Canceled != 0 || st.Upgrades != 1 {
			t.Errorf("state = %+v", st)
		}
	})
}

// TestVersion1Device: a version 1 device receives a command without the 1.1 fields exactly
// as before, and upgrades.
func TestVersion1Device(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	f := e.startFleetWith([]string{"old-1"}, func(c *Config) { c.Protocol = ProtocolV1 })
	cmd := e.command("v1-cmd", "/fw/1.1.bin")
	payload, err := json.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"sha256", "sig", "key_id"} {
		if strings.Contains(string(payload), `"`+field+`"`) {
			t.Fatalf("a command without %s carries the field: %s", field, payload)
		}
	}
	e.publish(protocol.CommandTopic("old-1"), payload)
	e.watcher.waitFor(t, "old-1", "new version", hasStatus("firmware_ver", "1.1"))
	if st := waitState(t, f, "old-1", "idle", func(s DeviceState) bool { return s.Working == "" }); st.Upgrades != 1 {
		t.Errorf("state = %+v", st)
	}
}
