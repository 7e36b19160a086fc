package main

import (
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/ota"
)

func TestProgressLine(t *testing.T) {
	tests := []struct {
		name string
		p    ota.RolloutProgress
		want string
	}{
		{"pre-flight", ota.RolloutProgress{State: ota.RolloutPreflight}, "preflight        checking the package and fixing the targets"},
		{"wave 2 of 3", ota.RolloutProgress{State: ota.RolloutRunning, CurrentWave: 2, Total: 10,
			Waves: make([]ota.WaveProgress, 3), Counts: ota.Counts{Started: 6, Succeeded: 4}},
			"running          wave 2/3 [############..................] 4/10 done: 4 ok, 0 failed, 2 running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := progressLine(tt.p); strings.TrimSpace(got) != tt.want {
				t.Errorf("progressLine = %q, want %q", strings.TrimSpace(got), tt.want)
			}
		})
	}
}
