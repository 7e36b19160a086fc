package dev_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestShippedProgramsLeaveTheHarnessOut: the programs OTAflow ships link no package of the
// development harness, and the bridge links no workflow or activity code.
func TestShippedProgramsLeaveTheHarnessOut(t *testing.T) {
	tests := []struct {
		program string
		refused []string // import path prefixes it must not link
	}{
		{"worker", []string{"github.com/otaflow/otaflow/internal/dev/", "github.com/otaflow/otaflow/internal/e2e"}},
		{"starter", []string{"github.com/otaflow/otaflow/internal/dev/", "github.com/otaflow/otaflow/internal/e2e"}},
		{"mqttbridge", []string{"github.com/otaflow/otaflow/internal/dev/", "github.com/otaflow/otaflow/internal/e2e",
			"github.com/otaflow/otaflow/workflows", "github.com/otaflow/otaflow/activities"}},
	}
	for _, tt := range tests {
		t.Run(tt.program, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", "github.com/otaflow/otaflow/"+tt.program).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", tt.program, err, out)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 10 {
				t.Fatalf("go list -deps %s listed %d packages: %q", tt.program, len(deps), out)
			}
			for _, dep := range deps {
				for _, r := range tt.refused {
					if strings.HasPrefix(dep, r) {
						t.Errorf("%s links %s", tt.program, dep)
					}
				}
			}
		})
	}
}
