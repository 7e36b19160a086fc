package simulator

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"strings"
)

// Fault selects the devices that have one fault, and the attempts it strikes.
type Fault struct {
	// Rate is the share of devices with the fault, 0..1. Devices are picked by a hash of
	// Faults.Seed, the fault's name and the device ID, so the same devices have the fault in
	// every run with the same seed.
	Rate float64
	// Devices have the fault whatever Rate picks.
	Devices []string
	// Attempts limits the fault to each device's first Attempts upgrade attempts (commands it
	// works on), so retries succeed; 0 means every attempt. The offline fault happens once
	// and ignores it.
	Attempts int
}

// Faults configures fault injection. The zero value injects none.
type Faults struct {
	// Seed varies which devices Rate picks.
	Seed int64
	// DownloadFail aborts the download partway and reports -1.
	DownloadFail Fault
	// Corrupt corrupts one downloaded byte, so the md5 check fails and the device reports -2.
	Corrupt Fault
	// InstallFail downloads and verifies, then reports -3 after the install delay.
	InstallFail Fault
	// Silent stops reporting partway through the download and abandons the attempt without
	// another word; the device handles the next command.
	Silent Fault
	// NoReport reports 100 and then goes quiet: it never installs nor reports a new version.
	NoReport Fault
	// OldVersion installs and reboots but comes back reporting the old version.
	OldVersion Fault
	// Slow throttles the download to Timing.SlowRate bytes per second.
	Slow Fault
	// Offline disconnects Timing.OfflineAfter after the first boot and stays offline for
	// Timing.OfflineFor; commands sent meanwhile wait in its persistent session.
	Offline Fault
	// DropOff loses the network halfway through the download for Timing.OfflineFor: the MQTT
	// connection closes and the download stalls; then the device reconnects (no boot, so no
	// status report) and the download goes on where it was.
	DropOff Fault
	// Tamper swaps the download for other bytes of the same size that an attacker made to
	// have the package's md5 (md5 collisions are practical): the size and md5 checks pass, and
	// only PROTOCOL.md 1.1's sha256 check catches it (-2 "sha256 mismatch"). A device of
	// protocol 1, or a command without sha256, installs the tampered package.
	Tamper Fault
}

// faultKind indexes the faults of a device in a bit set.
type faultKind uint8

const (
	faultDownloadFail faultKind = iota
	faultCorrupt
	faultInstallFail
	faultSilent
	faultNoReport
	faultOldVersion
	faultSlow
	faultOffline
	faultDropOff
	faultTamper
	numFaults
)

// faultNames are the faults' names in errors (devicesim's flags use them too).
var faultNames = [numFaults]string{"fail-download", "corrupt", "fail-install", "silent", "no-report",
	"old-version", "slow", "offline", "drop-off", "tamper"}

func (k faultKind) String() string { return faultNames[k] }

func (f *Faults) byKind() [numFaults]*Fault {
	return [numFaults]*Fault{&f.DownloadFail, &f.Corrupt, &f.InstallFail, &f.Silent, &f.NoReport,
		&f.OldVersion, &f.Slow, &f.Offline, &f.DropOff, &f.Tamper}
}

// validate checks rates and attempt limits, and that listed devices are in the fleet.
func (f *Faults) validate(fleet map[string]struct{}) error {
	for k, fault := range f.byKind() {
		name := faultKind(k).String()
		if fault.Rate < 0 || fault.Rate > 1 || fault.Rate != fault.Rate {
			return fmt.Errorf("fault %s: rate %v is not between 0 and 1", name, fault.Rate)
		}
		if fault.Attempts < 0 {
			return fmt.Errorf("fault %s: attempts %d is negative", name, fault.Attempts)
		}
		var unknown []string
		for _, id := range fault.Devices {
			if _, ok := fleet[id]; !ok {
				unknown = append(unknown, id)
			}
		}
		if len(unknown) > 0 {
			return fmt.Errorf("fault %s: devices not in the fleet: %s", name, strings.Join(unknown, ", "))
		}
	}
	return nil
}

// deviceFaults is the set of faults one device has, with their attempt limits.
type deviceFaults struct {
	has      uint16
	attempts [numFaults]uint16
}

// forDevice picks the faults device id has.
func (f *Faults) forDevice(id string) deviceFaults {
	var df deviceFaults
	for k, fault := range f.byKind() {
		if fault.pick(f.Seed, faultKind(k), id) {
			df.has |= 1 << k
			df.attempts[k] = uint16(min(fault.Attempts, 1<<16-1))
		}
	}
	return df
}

func (fault *Fault) pick(seed int64, kind faultKind, id string) bool {
	for _, d := range fault.Devices {
		if d == id {
			return true
		}
	}
	if fault.Rate <= 0 {
		return false
	}
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seed))
	h.Write(b[:])
	h.Write([]byte(kind.String()))
	h.Write([]byte{0})
	h.Write([]byte(id))
	// Mix the FNV output so that IDs differing only in their last characters spread evenly.
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return float64(x>>11)/float64(1<<53) < fault.Rate
}

// strikes reports whether fault k strikes the attempt-th attempt (1-based).
func (df deviceFaults) strikes(k faultKind, attempt int) bool {
	if df.has&(1<<k) == 0 {
		return false
	}
	limit := int(df.attempts[k])
	return limit == 0 || attempt <= limit
}

// any reports whether the device has fault k at all.
func (df deviceFaults) any(k faultKind) bool { return df.has&(1<<k) != 0 }
