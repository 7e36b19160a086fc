package ota

import (
	"errors"
	"testing"
	"time"
)

func TestLoadZone(t *testing.T) {
	tests := []struct {
		name       string
		at         time.Time
		wantOffset int // seconds east of UTC at at
		wantErr    error
	}{
		{name: "Europe/Berlin", at: time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC), wantOffset: 2 * 3600},
		{name: "Europe/Berlin", at: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), wantOffset: 3600},
		{name: "America/New_York", at: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), wantOffset: -5 * 3600},
		{name: "Asia/Kolkata", at: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), wantOffset: 5*3600 + 1800},
		{name: "UTC", at: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)},
		{name: "", at: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)},
		{name: "Mars/Base", wantErr: ErrUnknownZone},
		{name: "../../etc/passwd", wantErr: ErrUnknownZone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc, err := LoadZone(tt.name)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("LoadZone(%q) error %v, want %v", tt.name, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if _, got := tt.at.In(loc).Zone(); got != tt.wantOffset {
				t.Errorf("offset of %s at %s = %d, want %d", tt.name, tt.at, got, tt.wantOffset)
			}
		})
	}
}

func TestLoadZoneReturnsTheSameLocation(t *testing.T) {
	a, err := LoadZone("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := LoadZone("Europe/Berlin")
	if a != b {
		t.Error("two loads of one zone gave two locations")
	}
}
