package simulator

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/protocol"
)

// TestFleetKeepsInstalledVersions: a fleet started again on the same state directory reports
// the versions its devices installed, not its initial status (after a devstack restart the
// fleet used to report 1.0 beside an upgrade that had succeeded to 1.1); without a state
// directory it starts from the initial status.
func TestFleetKeepsInstalledVersions(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	for _, tc := range []struct {
		name, prefix string
		dir          string
		after        string // the upgraded device's firmware_ver at the second boot
	}{
		{"state directory", "keep", t.TempDir(), "1.1"},
		{"in memory", "mem", "", "1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.with(t)
			up, other := tc.prefix+"-1", tc.prefix+"-2"
			ids := []string{up, other}
			f := e.startFleetWith(ids, func(c *Config) { c.StateDir = tc.dir })
			e.send(up, e.command(up+"-cmd", "/fw/1.1.bin"))
			e.watcher.waitFor(t, up, "status with the new version", hasStatus("firmware_ver", "1.1"))
			f.Stop()
			if tc.dir != "" {
				var kept keptVersions
				b, err := os.ReadFile(filepath.Join(tc.dir, VersionsFile))
				if err != nil || json.Unmarshal(b, &kept) != nil || kept.Devices[up]["firmware_ver"] != "1.1" || len(kept.Devices) != 1 {
					t.Fatalf("%s after Stop = %s (%v), want %s's firmware 1.1 only", VersionsFile, b, err, up)
				}
			}

			f = e.startFleetWith(ids, func(c *Config) { c.StateDir = tc.dir })
			// Boot, install, boot again: the third status report is the second boot's.
			evs := e.watcher.waitFor(t, up, "the second boot's status", func(evs []event) bool { return len(statusesOf(evs)) >= 3 })
			want := protocol.Status{"firmware_ver": tc.after, "app_ver": "2.0"}
			if got := statusesOf(evs)[2]; !maps.Equal(got, want) {
				t.Errorf("%s boots again with %v, want %v", up, got, want)
			}
			if st, _ := f.Device(up); st.Status["firmware_ver"] != tc.after {
				t.Errorf("%s's state after the restart: %v", up, st.Status)
			}
			evs = e.watcher.waitFor(t, other, "the second boot's status", func(evs []event) bool { return len(statusesOf(evs)) >= 2 })
			if got := statusesOf(evs)[1]; got["firmware_ver"] != "1.0" {
				t.Errorf("%s, never upgraded, boots again with %v", other, got)
			}
		})
	}
}

func TestVersionsFileBad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, VersionsFile), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{BrokerURL: "tcp://127.0.0.1:1", DeviceIDs: []string{"d1"}, Initial: protocol.Status{"firmware_ver": "1.0"},
		Credentials: map[string]string{"d1": "s"}, StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "is not a versions file") || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("New with a corrupt versions file: %v", err)
	}
}
