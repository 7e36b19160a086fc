package ota

// Time zones are resolved from the zone data built into OTAflow, never from the files of the
// machine it runs on. Workflow code needs that: two workers with different system zone files
// must decide a maintenance window the same way, and a workflow must not read files.
//
// zoneinfo.zip is Go's copy of the IANA time zone database ($(go env GOROOT)/lib/time/zoneinfo.zip,
// the data time/tzdata embeds); to move to newer rules, copy a newer one over it. A change
// of rules changes how open rollouts decide their windows from then on.

import (
	"archive/zip"
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

//go:embed zoneinfo.zip
var zoneinfo []byte

// ErrUnknownZone is returned for a name the zone data does not have.
var ErrUnknownZone = errors.New("unknown time zone")

var (
	zonesOnce sync.Once
	zoneFiles map[string]*zip.File
	zonesErr  error

	zonesMu     sync.Mutex
	zonesByName = map[string]*time.Location{}
)

// LoadZone returns the location of an IANA zone name such as "Europe/Berlin"; "UTC" and ""
// are UTC. The same name gives the same rules in every process of the same build.
func LoadZone(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	zonesMu.Lock()
	defer zonesMu.Unlock()
	if loc, ok := zonesByName[name]; ok {
		return loc, nil
	}
	zonesOnce.Do(func() {
		r, err := zip.NewReader(bytes.NewReader(zoneinfo), int64(len(zoneinfo)))
		if err != nil {
			zonesErr = fmt.Errorf("read the built-in zone data: %w", err)
			return
		}
		zoneFiles = make(map[string]*zip.File, len(r.File))
		for _, f := range r.File {
			zoneFiles[f.Name] = f
		}
	})
	if zonesErr != nil {
		return nil, zonesErr
	}
	f, ok := zoneFiles[name]
	if !ok {
		return nil, fmt.Errorf("%q: %w", name, ErrUnknownZone)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("zone %q: %w", name, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("zone %q: %w", name, err)
	}
	loc, err := time.LoadLocationFromTZData(name, data)
	if err != nil {
		return nil, fmt.Errorf("zone %q: %w", name, err)
	}
	zonesByName[name] = loc
	return loc, nil
}
