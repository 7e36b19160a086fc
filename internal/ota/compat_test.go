package ota

import (
	"strings"
	"testing"
)

func TestCompatibilityFits(t *testing.T) {
	pump := map[string]string{"model": "pump-v2", "site": "berlin"}
	tests := []struct {
		name    string
		c       Compatibility
		labels  map[string]string
		current string
		want    bool
		why     string
	}{
		{"no constraint", Compatibility{}, nil, "", true, ""},
		{"label fits", Compatibility{Labels: map[string]string{"model": "pump-v2"}}, pump, "1.0", true, ""},
		{"label differs", Compatibility{Labels: map[string]string{"model": "pump-v3"}}, pump, "1.0", false, "label model"},
		{"label missing", Compatibility{Labels: map[string]string{"rev": "b"}}, pump, "1.0", false, "label rev"},
		{"in range", Compatibility{Versions: ">=1.0,<2.0"}, pump, "1.9.3", true, ""},
		{"lower bound", Compatibility{Versions: ">=1.0,<2.0"}, pump, "1.0", true, ""},
		{"upper bound excluded", Compatibility{Versions: ">=1.0,<2.0"}, pump, "2.0", false, "outside"},
		{"below", Compatibility{Versions: ">=1.0,<2.0"}, pump, "0.9", false, "outside"},
		{"no version reported", Compatibility{Versions: ">=1.0"}, pump, "", false, "reports no version"},
		{"not a version", Compatibility{Versions: ">=1.0"}, pump, "banana", false, "not a version number"},
		{"both", Compatibility{Labels: map[string]string{"model": "pump-v2"}, Versions: "~>1.2"}, pump, "1.2.7", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := tt.c.Fits(tt.labels, tt.current)
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Errorf("Fits = %v, %q; want %v, %q", got, why, tt.want, tt.why)
			}
		})
	}
}

func TestCompatibilityValidate(t *testing.T) {
	for _, bad := range []Compatibility{{Versions: ">=1.0,<<2"}, {Versions: "one"}, {Labels: map[string]string{"": "x"}}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if err := (Compatibility{Labels: map[string]string{"model": "a"}, Versions: ">= 1.0, < 2.0"}).Validate(); err != nil {
		t.Errorf("valid compatibility refused: %v", err)
	}
}
