package simulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/otaflow/otaflow/internal/protocol"
)

// VersionsFile is the name of the file, in Config.StateDir, that keeps the versions each
// simulated device installed, so that a restarted fleet reports them rather than its initial
// status again (a real device keeps what it installed across a restart).
const VersionsFile = "devicesim-versions.json"

// versionsSaveInterval is how long installs gather before the versions file is written again:
// a fleet installing many packages a second writes it once a second, and Stop writes the
// last ones. A process killed outright loses at most this much of the record.
const versionsSaveInterval = time.Second

// keptVersions is the content of VersionsFile: by device, the versions it installed, by
// status key. Only installed versions are kept; the rest of a device's status is the fleet's
// initial one, so that a fleet started with another initial status reports it.
type keptVersions struct {
	Devices map[string]protocol.Status `json:"devices"`
}

// versionStore keeps the versions file of a fleet. The zero dir keeps nothing.
type versionStore struct {
	dir string

	mu    sync.Mutex
	kept  keptVersions
	dirty bool
	wake  chan struct{}
}

// loadVersions reads the versions file in dir, if any.
func loadVersions(dir string) (*versionStore, error) {
	v := &versionStore{dir: dir, kept: keptVersions{Devices: map[string]protocol.Status{}}, wake: make(chan struct{}, 1)}
	if dir == "" {
		return v, nil
	}
	b, err := os.ReadFile(v.path())
	if errors.Is(err, fs.ErrNotExist) {
		return v, nil
	}
	if err != nil {
		return nil, fmt.Errorf("simulator: read installed versions: %w", err)
	}
	if err := json.Unmarshal(b, &v.kept); err != nil {
		return nil, fmt.Errorf("simulator: %s is not a versions file (delete it to start the fleet afresh): %w", v.path(), err)
	}
	if v.kept.Devices == nil {
		v.kept.Devices = map[string]protocol.Status{}
	}
	for id, st := range v.kept.Devices {
		if err := st.Validate(); err != nil {
			return nil, fmt.Errorf("simulator: %s: device %s: %w (delete the file to start the fleet afresh)", v.path(), id, err)
		}
	}
	return v, nil
}

func (v *versionStore) path() string { return filepath.Join(v.dir, VersionsFile) }

// status is a device's status at boot: the initial one, with the versions it installed.
func (v *versionStore) status(id string, initial protocol.Status) protocol.Status {
	st := maps.Clone(initial)
	v.mu.Lock()
	maps.Copy(st, v.kept.Devices[id])
	v.mu.Unlock()
	return st
}

// installed records that a device installed version under key; run writes it behind.
func (v *versionStore) installed(id, key, version string) {
	if v.dir == "" {
		return
	}
	v.mu.Lock()
	if v.kept.Devices[id] == nil {
		v.kept.Devices[id] = protocol.Status{}
	}
	v.kept.Devices[id][key] = version
	v.dirty = true
	v.mu.Unlock()
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

// run writes the versions file behind the installs, at most once every
// versionsSaveInterval, until stop is closed; then it writes what is left.
func (v *versionStore) run(stop <-chan struct{}, warn func(msg string, args ...any)) {
	save := func() {
		if err := v.save(); err != nil {
			warn("could not keep the installed versions", "file", v.path(), "error", err)
		}
	}
	for {
		select {
		case <-stop:
			save()
			return
		case <-v.wake:
		}
		t := time.NewTimer(versionsSaveInterval)
		select {
		case <-stop:
			t.Stop()
			save()
			return
		case <-t.C:
		}
		save()
	}
}

// save writes the versions file if it changed.
func (v *versionStore) save() error {
	v.mu.Lock()
	if !v.dirty || v.dir == "" {
		v.mu.Unlock()
		return nil
	}
	b, err := json.MarshalIndent(v.kept, "", "  ")
	v.dirty = false
	v.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode installed versions: %w", err)
	}
	if err := writeFileAtomic(v.dir, VersionsFile, b, 0o644); err != nil {
		v.mu.Lock()
		v.dirty = true
		v.mu.Unlock()
		return err
	}
	return nil
}

// writeFileAtomic replaces dir/name with data (created with perm, synced, renamed into place),
// creating dir (0700) if needed: a reader sees the old file or the new one, never a part.
func writeFileAtomic(dir, name string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, name+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
