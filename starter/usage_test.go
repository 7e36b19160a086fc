package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
)

// noServers points starter at addresses where nothing listens and at no database, so that a
// command that wrongly dialled before checking its input would fail with exit code 1, not 2.
var noServers = []string{"--temporal-address", "127.0.0.1:1", "--database-url", ""}

// offline returns args after the global flags of noServers.
func offline(args ...string) []string { return append(slices.Clone(noServers), args...) }

// goodUpgrade is a valid `upgrade` command line.
var goodUpgrade = []string{"upgrade", "--device", "dev-1", "--type", "firmware", "--version", "1.1",
	"--url", "https://files.example.com/fw/1.1.bin", "--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "1048576"}

// with returns goodUpgrade with a flag replaced, added (value != "") or removed (value == "-").
func with(flag, value string) []string {
	args := slices.Clone(goodUpgrade)
	if i := slices.Index(args, flag); i >= 0 {
		if value == "-" {
			return slices.Delete(args, i, i+2)
		}
		args[i+1] = value
		return args
	}
	return append(args, flag, value)
}

func TestBadInputIsAUsageError(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		{"uppercase md5", with("--md5", "9E107D9D372BB6826BD81D3542A419D6"), []string{"--md5", "lowercase"}},
		{"short md5", with("--md5", "9e107d9d"), []string{"--md5 must be 32 lowercase hex digits"}},
		{"size 0", with("--size", "0"), []string{"--size must be more than 0"}},
		{"negative size", with("--size", "-5"), []string{"--size must be more than 0"}},
		{"size not a number", with("--size", "1MB"), []string{`invalid value "1MB" for flag -size`}},
		{"device ID with a slash", with("--device", "dev/1"), []string{"--device", "1 to 64 characters"}},
		{"device ID with a wildcard", with("--device", "dev+"), []string{"--device", "1 to 64 characters"}},
		{"device ID too long", with("--device", strings.Repeat("d", 65)), []string{"--device", "1 to 64 characters"}},
		{"empty device ID", with("--device", ""), []string{"--device", "1 to 64 characters"}},
		{"bad duration", with("--start-timeout", "10 minutes"), []string{`invalid value "10 minutes" for flag -start-timeout`}},
		{"duration without unit", with("--deadline", "24"), []string{"flag -deadline"}},
		{"zero duration", with("--silence-timeout", "0s"), []string{"--silence-timeout must be more than 0"}},
		{"negative duration", with("--install-timeout", "-1m"), []string{"--install-timeout must be more than 0"}},
		{"zero max attempts", with("--max-attempts", "0"), []string{"--max-attempts must be 1 to 100"}},
		{"too many attempts", with("--max-attempts", "101"), []string{"max attempts must be 1 to 100"}},
		{"retry code out of range", with("--retry-codes", "-1,-9"), []string{"--retry-codes", "-9 is not a device error code"}},
		{"retry code not a number", with("--retry-codes", "x"), []string{"--retry-codes", `"x" is not a number`}},
		{"empty version key", with("--version-key", ""), []string{"--version-key must not be empty"}},
		{"empty type", with("--type", ""), []string{`"type" must be 1 to 32 characters`}},
		{"ftp URL", with("--url", "ftp://files.example.com/fw.bin"), []string{"--url", "not an http(s) URL"}},
		{"relative URL", with("--url", "fw.bin"), []string{"--url", "not an http(s) URL"}},
		{"unknown flag", with("--colour", "red"), []string{"flag provided but not defined: -colour", "starter upgrade --help"}},
		{"missing md5 and size", goodUpgrade[:len(goodUpgrade)-4], []string{"missing required flag(s) --md5, --size"}},
		{"missing device", with("--device", "-"), []string{"missing required flag(s) --device"}},
		{"positional argument", append(slices.Clone(goodUpgrade), "now"), []string{`unexpected argument "now"`}},
		{"unknown command", []string{"upgrad"}, []string{`unknown command "upgrad"`}},
		{"unknown devices command", []string{"devices", "remove"}, []string{`unknown command "remove"`}},
		{"unknown global flag", []string{"--verbose", "status", "--device", "d"}, []string{"flag provided but not defined: -verbose"}},
		{"status without device", []string{"status"}, []string{"missing required flag(s) --device"}},
		{"status bad device", []string{"status", "--device", "a b"}, []string{"--device", "1 to 64 characters"}},
		{"cancel bad device", []string{"cancel", "--device", "#"}, []string{"--device"}},
		{"cancel unknown flag", []string{"cancel", "--device", "d", "--force"}, []string{"-force"}},
		{"devices add without device", []string{"devices", "add"}, []string{"missing required flag(s) --device"}},
		{"devices add bad device", []string{"devices", "add", "--device", "dev 1"}, []string{"--device"}},
		{"devices add bad label", []string{"devices", "add", "--device", "d", "--label", "site"}, []string{"--label", "not KEY=VALUE"}},
		{"devices add label twice", []string{"devices", "add", "--device", "d", "--label", "a=1", "--label", "a=2"}, []string{"given twice"}},
		{"devices add empty label key", []string{"devices", "add", "--device", "d", "--label", "=x"}, []string{"the key must be"}},
		{"devices list negative limit", []string{"devices", "list", "--limit", "-1"}, []string{"--limit must be 0"}},
		{"devices list bad limit", []string{"devices", "list", "--limit", "ten"}, []string{"-limit"}},
		{"devices list without database", []string{"devices", "list"}, []string{"DATABASE_URL"}},
		{"rotate without database", []string{"devices", "rotate-secret", "--device", "d"}, []string{"DATABASE_URL"}},
		{"disable bad device", []string{"devices", "disable", "--device", "d/e"}, []string{"--device"}},
		{"enable without device", []string{"devices", "enable"}, []string{"missing required flag(s) --device"}},
		{"inspect without url", []string{"package", "inspect"}, []string{"missing required flag(s) --url"}},
		{"inspect unsupported scheme", []string{"package", "inspect", "--url", "s3://bucket/fw.bin"}, []string{`scheme "s3" is not supported`}},
		{"setup without database", []string{"setup"}, []string{"setup applies the PostgreSQL migrations", "DATABASE_URL"}},
		{"setup short retention", []string{"--database-url", "postgres://otaflow@127.0.0.1:1/otaflow", "setup", "--retention", "1h"},
			[]string{"--retention must be at least 24h"}},
		{"setup argument", []string{"setup", "now"}, []string{`unexpected argument "now"`}},
		{"inspect remote file URL", []string{"package", "inspect", "--url", "file://otherhost/fw.bin"}, []string{"local file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, context.Background(), offline(tt.args...)...)
			r.check(t, exitUsage, tt.want...)
			if r.stdout != "" {
				t.Errorf("a refused command wrote to stdout:\n%s", r.stdout)
			}
		})
	}
}

func TestHelpNeedsNoServer(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {}, {"upgrade", "--help"}, {"devices"}, {"help", "status"}, {"package", "inspect", "-h"}} {
		r := runCLI(t, context.Background(), offline(args...)...)
		r.check(t, 0)
		if !strings.Contains(r.stdout, "USAGE") {
			t.Errorf("starter %v printed no usage:\n%s", args, r.stdout)
		}
	}
}

func TestGlobalFlagsFromEnvironment(t *testing.T) {
	t.Setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")
	t.Setenv("DATABASE_URL", "")
	r := runCLI(t, context.Background(), "devices", "list")
	r.check(t, exitUsage, "DATABASE_URL")
	// With the address from the environment, cancel fails to dial there, clearly.
	r = runCLI(t, context.Background(), "cancel", "--device", "dev-1")
	r.check(t, exitFailure, "cannot reach Temporal at 127.0.0.1:1")
}

func TestParseCodes(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{"-1,-2,-3,-4", []int{-1, -2, -3, -4}, false},
		{" -2 , -3", []int{-2, -3}, false},
		{"none", []int{}, false},
		{"", []int{}, false},
		{"-1,,-2", nil, true},
		{"0", nil, true},
		{"-5", nil, true},
		{"1", nil, true},
	}
	for _, tt := range tests {
		got, err := parseCodes(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseCodes(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && (got == nil || !slices.Equal(got, tt.want)) {
			t.Errorf("parseCodes(%q) = %#v, want %#v", tt.in, got, tt.want)
		}
	}
	if formatCodes(ota.DefaultRetryCodes) != "-1,-2,-3,-4" {
		t.Errorf("formatCodes(defaults) = %q", formatCodes(ota.DefaultRetryCodes))
	}
}

func TestProgressLine(t *testing.T) {
	soakEnd := time.Date(2026, 11, 28, 12, 30, 0, 0, time.UTC)
	tests := []struct {
		st   ota.UpgradeStatus
		want string
	}{
		{ota.UpgradeStatus{DeviceID: "dev-1", State: "downloading", Progress: 42, Attempt: 1, MaxAttempts: 3},
			"dev-1  downloading  42%  attempt 1/3"},
		{ota.UpgradeStatus{DeviceID: "dev-1", State: "pending", Progress: 10, Attempt: 1, MaxAttempts: 3, ErrorCode: -2, Desc: "bad md5"},
			"dev-1  pending  10%  attempt 1/3  after code -2 (md5 check failed) bad md5"},
		{ota.UpgradeStatus{DeviceID: "dev-1", State: "succeeded", Progress: 100, Attempt: 1, MaxAttempts: 3, SoakUntil: &soakEnd},
			"dev-1  succeeded  100%  attempt 1/3  soaking until " + formatTime(soakEnd)},
	}
	for _, tt := range tests {
		if got := progressLine(tt.st); got != tt.want {
			t.Errorf("progressLine = %q, want %q", got, tt.want)
		}
	}
	failed := ota.UpgradeStatus{DeviceID: "dev-1", State: "failed", Attempt: 3, MaxAttempts: 3, ErrorCode: -1, Desc: "http 404"}
	if got, want := finalLine(failed), "dev-1  failed  0%  attempt 3/3  failed: code -1 (download failed) http 404"; got != want {
		t.Errorf("finalLine = %q, want %q", got, want)
	}
}

func TestParseLabels(t *testing.T) {
	got, err := parseLabels([]string{"site=lab", "ring=canary,beta", "empty="})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"site": "lab", "ring": "canary,beta", "empty": ""}
	if len(got) != len(want) {
		t.Fatalf("parseLabels = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("label %s = %q, want %q", k, got[k], v)
		}
	}
}
