package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/ota"
)

// goodRollout is a valid `rollout start` command line.
var goodRollout = []string{"rollout", "start", "--name", "fw-11", "--type", "firmware", "--version", "1.1",
	"--url", "https://files.example.com/fw/1.1.bin", "--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "1024",
	"--prefix", "sensor-"}

// goodSchedule is a valid `rollout schedule` command line but for when.
var goodSchedule = append([]string{"rollout", "schedule"}, goodRollout[2:]...)

// goodPlan is a valid `rollout plan` command line.
var goodPlan = append([]string{"rollout", "plan"}, goodRollout[2:]...)

// edit returns args with flag set to value (added when missing), or removed when value is "-".
func edit(args []string, flag, value string) []string {
	args = slices.Clone(args)
	if i := slices.Index(args, flag); i >= 0 {
		if value == "-" {
			return slices.Delete(args, i, i+2)
		}
		args[i+1] = value
		return args
	}
	return append(args, flag, value)
}

// plus returns args with more arguments at the end.
func plus(args []string, more ...string) []string { return append(slices.Clone(args), more...) }

func TestRolloutBadInputIsAUsageError(t *testing.T) {
	dir := t.TempDir()
	badFile := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(badFile, []byte("# canary\ndev-1\n\ndev 2  # a space\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty.txt")
	if err := os.WriteFile(emptyFile, []byte("# nothing yet\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		// Waves.
		{"wave of 0%", edit(goodRollout, "--waves", "0%"), []string{"--waves", "percentage must be in (0, 100]"}},
		{"wave not a number", edit(goodRollout, "--waves", "1%,some"), []string{"--waves", `wave "some"`}},
		{"empty waves", edit(goodRollout, "--waves", ""), []string{"--waves"}},
		{"decreasing waves", edit(goodRollout, "--waves", "50%,10%"), []string{"invalid rollout", "percentages are cumulative"}},
		{"wave threshold above 100", edit(goodRollout, "--waves", "10%,100%:101"), []string{"--waves", "success threshold must be 0-100"}},
		{"wave success 0", edit(goodRollout, "--wave-success", "0"), []string{"--wave-success must be a percentage"}},
		{"wave success 101", edit(goodRollout, "--wave-success", "101"), []string{"--wave-success must be a percentage"}},
		{"bake with one wave", edit(goodRollout, "--bake", "10m"), []string{"--bake waits between waves"}},
		{"bake 0", edit(edit(goodRollout, "--waves", "10%,100%"), "--bake", "0s"), []string{"--bake must be more than 0"}},
		{"approve with one wave", plus(goodRollout, "--approve-waves"), []string{"--approve-waves", "at least two"}},
		// Ramp.
		{"ramp of two parts", edit(goodRollout, "--ramp", "10,2"), []string{"--ramp", "not START,FACTOR,STEP"}},
		{"ramp start 0", edit(goodRollout, "--ramp", "0,2,1m"), []string{"--ramp", "start rate"}},
		{"ramp factor below 1", edit(goodRollout, "--ramp", "10,0.5,1m"), []string{"--ramp", "factor"}},
		{"ramp step 0", edit(goodRollout, "--ramp", "10,2,0s"), []string{"--ramp", "step"}},
		{"ramp step without unit", edit(goodRollout, "--ramp", "10,2,60"), []string{"--ramp", "step"}},
		// Window.
		{"window hour 25", edit(goodRollout, "--window", "25:00-05:00"), []string{"invalid rollout", `window time "25:00" must be HH:MM`}},
		{"window without end", edit(goodRollout, "--window", "01:00"), []string{"--window", "not HH:MM-HH:MM"}},
		{"empty window", edit(goodRollout, "--window", "01:00-01:00"), []string{"window start and end must differ"}},
		{"unknown time zone", edit(edit(goodRollout, "--window", "01:00-05:00"), "--tz", "Mars/Olympus"), []string{"window time zone", "Mars/Olympus"}},
		{"tz without window", edit(goodRollout, "--tz", "Europe/Berlin"), []string{"--tz is the time zone of --window"}},
		// Targets.
		{"no targets", edit(goodRollout, "--prefix", "-"), []string{"no targets: give --devices, --devices-file, --prefix and/or --where"}},
		{"up-to-date is no target", plus(edit(goodRollout, "--prefix", "-"), "--include-up-to-date"), []string{"no targets"}},
		{"two device lists", plus(goodRollout, "--devices", "a", "--devices-file", badFile), []string{"--devices and --devices-file both give the device list"}},
		{"bad device in list", edit(goodRollout, "--devices", "dev-1,dev 2"), []string{"--devices", `item 2: "dev 2"`, "1 to 64 characters"}},
		{"empty device list", edit(goodRollout, "--devices", " , ,"), []string{"--devices", "no device IDs"}},
		{"bad device in file", edit(goodRollout, "--devices-file", badFile), []string{"--devices-file", `line 4: "dev 2"`}},
		{"empty device file", edit(goodRollout, "--devices-file", emptyFile), []string{"--devices-file", "no device IDs"}},
		{"missing device file", edit(goodRollout, "--devices-file", filepath.Join(dir, "none.txt")), []string{"--devices-file", "no such file"}},
		{"device list without database", edit(goodRollout, "--devices", "dev-1"), []string{"stored in PostgreSQL", "DATABASE_URL"}},
		{"empty prefix", edit(goodRollout, "--prefix", ""), []string{"--prefix must not be empty"}},
		{"where without =", edit(goodRollout, "--where", "site"), []string{"--where", `filter "site" is not KEY=VALUE`}},
		{"where key twice", plus(goodRollout, "--where", "site=a", "--where", "site=b"), []string{"--where", `filter "site" given twice`}},
		// Limits and failure handling.
		{"max in flight 0", edit(goodRollout, "--max-in-flight", "0"), []string{"--max-in-flight must be 1 to 1000"}},
		{"max in flight 1001", edit(goodRollout, "--max-in-flight", "1001"), []string{"max in flight must be 1 to 1000"}},
		{"negative rate", edit(goodRollout, "--max-per-minute", "-1"), []string{"--max-per-minute must be 0"}},
		{"failure threshold 150", edit(goodRollout, "--failure-threshold", "150"), []string{"--failure-threshold must be a percentage"}},
		{"failure threshold with %", edit(goodRollout, "--failure-threshold", "10%"), []string{`invalid value "10%" for flag -failure-threshold`}},
		{"failure min 0", edit(goodRollout, "--failure-min", "0"), []string{"--failure-min must be at least 1"}},
		{"unknown failure action", edit(goodRollout, "--on-failure", "stop"), []string{`--on-failure must be pause or abort, not "stop"`}},
		// The request itself, and the flags shared with upgrade.
		{"bad name", edit(goodRollout, "--name", "fw 1.1"), []string{"--name", "1 to 64 characters"}},
		{"missing name", edit(goodRollout, "--name", "-"), []string{"missing required flag(s) --name"}},
		{"missing package", []string{"rollout", "start", "--name", "x", "--prefix", "p"}, []string{"missing required flag(s) --type, --version, --url, --md5, --size"}},
		{"uppercase md5", edit(goodRollout, "--md5", "9E107D9D372BB6826BD81D3542A419D6"), []string{"--md5", "lowercase"}},
		{"zero start timeout", edit(goodRollout, "--start-timeout", "0s"), []string{"--start-timeout must be more than 0"}},
		{"bad retry code", edit(goodRollout, "--retry-codes", "7"), []string{"--retry-codes", "7 is not a device error code"}},
		{"too many attempts", edit(goodRollout, "--max-attempts", "101"), []string{"max attempts must be 1 to 100"}},
		{"ftp URL", edit(goodRollout, "--url", "ftp://files.example.com/fw.bin"), []string{"--url", "not an http(s) URL"}},
		{"positional argument", plus(goodRollout, "now"), []string{`unexpected argument "now"`}},
		// schedule.
		{"at not a time", edit(goodSchedule, "--at", "tomorrow"), []string{"--at", "not an RFC 3339 time"}},
		{"at in the past", edit(goodSchedule, "--at", "2020-01-01T00:00:00Z"), []string{"--at", "not in the future"}},
		{"at after 2100", edit(goodSchedule, "--at", "2101-01-01T00:00:00Z"), []string{"--at", "after 2100"}},
		{"at and cron", plus(goodSchedule, "--at", future, "--cron", "0 1 * * *"), []string{"give --at (once) or --cron (repeatedly), not both"}},
		{"neither at nor cron", goodSchedule, []string{"say when: --at TIME (once) or --cron EXPR (repeatedly)"}},
		{"cron unknown zone", plus(edit(goodSchedule, "--cron", "0 1 * * *"), "--tz", "Nowhere/Town"), []string{"--tz: unknown time zone"}},
		{"at with tz but no window", plus(edit(goodSchedule, "--at", future), "--tz", "Europe/Berlin"), []string{"--tz is the time zone of --window"}},
		{"schedule bad request", plus(edit(goodSchedule, "--at", future), "--waves", "0%"), []string{"--waves"}},
		{"schedule missing name", edit(edit(goodSchedule, "--at", future), "--name", "-"), []string{"missing required flag(s) --name"}},
		{"unknown schedule command", []string{"rollout", "schedule", "lst"}, []string{`unknown command "lst"`}},
		{"schedule delete without name", []string{"rollout", "schedule", "delete"}, []string{"give the rollout name"}},
		{"schedule delete bad name", []string{"rollout", "schedule", "delete", "a/b"}, []string{"rollout name is 1 to 64"}},
		{"schedule list argument", []string{"rollout", "schedule", "list", "all"}, []string{`unexpected argument "all"`}},
		// The commands that take a name.
		{"status without name", []string{"rollout", "status"}, []string{"give the rollout name: starter rollout status NAME"}},
		{"status bad name", []string{"rollout", "status", "fw 11"}, []string{"rollout name is 1 to 64"}},
		{"status two names", []string{"rollout", "status", "a", "b"}, []string{`unexpected argument "b"`}},
		{"status unknown flag after name", []string{"rollout", "status", "a", "--follow"}, []string{"-follow"}},
		{"pause reason without text", []string{"rollout", "pause", "a", "--reason"}, []string{"flag needs an argument", "-reason"}},
		{"approve negative wave", []string{"rollout", "approve", "a", "--wave", "-1"}, []string{"--wave must be a wave number"}},
		{"approve wave not a number", []string{"rollout", "approve", "a", "--wave", "two"}, []string{`invalid value "two" for flag -wave`}},
		{"cancel unknown flag", []string{"rollout", "cancel", "a", "--force"}, []string{"-force"}},
		{"resume without name", []string{"rollout", "resume"}, []string{"give the rollout name"}},
		{"list unknown state", []string{"rollout", "list", "--state", "done"}, []string{`--state must be one of preflight, running`, `not "done"`}},
		{"list argument", []string{"rollout", "list", "all"}, []string{`unexpected argument "all"`}},
		{"unknown rollout command", []string{"rollout", "strat"}, []string{`unknown command "strat"`}},
		// Plan: the flags of start, checked the same way, and a registry to read.
		{"plan without database", goodPlan, []string{"DATABASE_URL"}},
		{"plan bad waves", edit(goodPlan, "--waves", "0%"), []string{"--waves", "percentage must be in (0, 100]"}},
		{"plan negative upgrade time", plus(goodPlan, "--upgrade-time", "-1m"), []string{"--upgrade-time must not be negative"}},
		{"plan without targets", edit(goodPlan, "--prefix", "-"), []string{"no targets"}},
		{"close without name", []string{"rollout", "close"}, []string{"give the rollout name"}},
		{"close unknown flag", []string{"rollout", "close", "a", "--now"}, []string{"-now"}},
		// Quarantine.
		{"quarantine failures without of", []string{"devices", "quarantine", "policy", "--failures", "2"}, []string{"give both --failures N and --of M"}},
		{"quarantine off and a policy", []string{"devices", "quarantine", "policy", "--off", "--failures", "2", "--of", "3"}, []string{"--off turns quarantine off"}},
		{"quarantine more failures than upgrades", []string{"devices", "quarantine", "policy", "--failures", "4", "--of", "3"}, []string{"1 <= failures <= of <= 100"}},
		{"quarantine window too long", []string{"devices", "quarantine", "policy", "--failures", "2", "--of", "101"}, []string{"1 <= failures <= of <= 100"}},
		{"quarantine policy without database", []string{"devices", "quarantine", "policy"}, []string{"DATABASE_URL"}},
		{"quarantine release without device", []string{"devices", "quarantine", "release"}, []string{"missing required flag(s) --device"}},
		{"quarantine release bad device", []string{"devices", "quarantine", "release", "--device", "a b"}, []string{"--device"}},
		{"quarantine list argument", []string{"devices", "quarantine", "list", "all"}, []string{`unexpected argument "all"`}},
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

func TestRolloutHelpNeedsNoServer(t *testing.T) {
	for _, args := range [][]string{
		{"rollout"}, {"rollout", "--help"}, {"rollout", "start", "--help"}, {"rollout", "schedule"},
		{"rollout", "schedule", "--help"}, {"rollout", "schedule", "list", "-h"}, {"rollout", "status", "fw-1", "--help"},
		{"help", "rollout"}, {"rollout", "plan", "--help"}, {"rollout", "close", "fw-1", "--help"}, {"devices", "quarantine"},
		{"devices", "quarantine", "policy", "-h"},
	} {
		r := runCLI(t, context.Background(), offline(args...)...)
		r.check(t, 0)
		if !strings.Contains(r.stdout, "USAGE") {
			t.Errorf("starter %v printed no usage:\n%s", args, r.stdout)
		}
	}
}

// parseRolloutFlags runs rolloutRequest on the flags of `rollout start`, with a database URL
// set, and returns what it made of them.
func parseRolloutFlags(t *testing.T, args ...string) (rolloutSpec, error) {
	t.Helper()
	var spec rolloutSpec
	var perr error
	app := &cli.App{
		Name: "t", Writer: io.Discard, ErrWriter: io.Discard, ExitErrHandler: func(*cli.Context, error) {},
		DisableSliceFlagSeparator: true,
		Flags:                     []cli.Flag{&cli.StringFlag{Name: flagDatabaseURL}},
		Commands: []*cli.Command{{Name: "start", Flags: rolloutRequestFlags(), Action: func(cCtx *cli.Context) error {
			spec, perr = rolloutRequest(cCtx, false)
			return nil
		}}},
	}
	if err := app.Run(append([]string{"t", "--" + flagDatabaseURL, "postgres://db.example.com/otaflow", "start"}, args...)); err != nil {
		t.Fatal(err)
	}
	return spec, perr
}

func TestRolloutRequestFromFlags(t *testing.T) {
	listFile := filepath.Join(t.TempDir(), "targets.txt")
	if err := os.WriteFile(listFile, []byte("# canary devices\nsensor-2\nsensor-1  # the lab one\n\nsensor-2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := goodRollout[2:]
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, s rolloutSpec)
	}{
		{"defaults", base, func(t *testing.T, s rolloutSpec) {
			r := s.req
			if r.Name != "fw-11" || r.Upgrade.Type != "firmware" || r.Upgrade.Version != "1.1" || r.Upgrade.Size != 1024 ||
				r.Targets.Prefix != "sensor-" || r.Targets.List != "" || s.ids != nil {
				t.Errorf("request = %+v, ids %v", r, s.ids)
			}
			if !slices.Equal(r.Waves, []ota.Wave{{Percent: 100}}) || r.MaxInFlight != ota.DefaultMaxInFlight ||
				r.FailureAction != ota.ActionPause || r.FailureMinCount != ota.DefaultFailureMinCount ||
				r.Ramp != nil || r.Window != nil || r.SkipPreflight {
				t.Errorf("defaults = %+v", r)
			}
			if r.Upgrade.MaxAttempts != ota.DefaultMaxAttempts || r.Upgrade.StartTimeout.Std() != ota.DefaultStartTimeout ||
				r.Upgrade.RetryTimeouts == nil || !*r.Upgrade.RetryTimeouts {
				t.Errorf("upgrade defaults = %+v", r.Upgrade)
			}
		}},
		{"waves with thresholds, bake and approvals", plus(base, "--waves", "1%,10%,50%:95,100%", "--wave-success", "90",
			"--bake", "10m", "--approve-waves"), func(t *testing.T, s rolloutSpec) {
			want := []ota.Wave{
				{Percent: 1, SuccessThreshold: 90, Bake: ota.Duration(10 * time.Minute)},
				{Percent: 10, SuccessThreshold: 90, Bake: ota.Duration(10 * time.Minute), Approve: true},
				{Percent: 50, SuccessThreshold: 95, Bake: ota.Duration(10 * time.Minute), Approve: true},
				{Percent: 100, SuccessThreshold: 90, Approve: true},
			}
			if !slices.Equal(s.req.Waves, want) {
				t.Errorf("waves = %+v\nwant    %+v", s.req.Waves, want)
			}
		}},
		{"wave success without waves", plus(base, "--wave-success", "80"), func(t *testing.T, s rolloutSpec) {
			if !slices.Equal(s.req.Waves, []ota.Wave{{Percent: 100, SuccessThreshold: 80}}) {
				t.Errorf("waves = %+v", s.req.Waves)
			}
		}},
		{"limits, ramp, window, failures", plus(base, "--max-in-flight", "50", "--max-per-minute", "120", "--ramp", "10, 2, 1m",
			"--window", "22:00-05:00", "--tz", "Europe/Berlin", "--failure-threshold", "10", "--failure-min", "3",
			"--on-failure", "abort", "--skip-preflight"), func(t *testing.T, s rolloutSpec) {
			r := s.req
			if r.MaxInFlight != 50 || r.MaxPerMinute != 120 || r.FailurePercent != 10 || r.FailureMinCount != 3 ||
				r.FailureAction != ota.ActionAbort || !r.SkipPreflight {
				t.Errorf("request = %+v", r)
			}
			if r.Ramp == nil || *r.Ramp != (ota.Ramp{StartPerMinute: 10, Factor: 2, Step: ota.Duration(time.Minute)}) {
				t.Errorf("ramp = %+v", r.Ramp)
			}
			if r.Window == nil || *r.Window != (ota.Window{Start: "22:00", End: "05:00", TimeZone: "Europe/Berlin"}) {
				t.Errorf("window = %+v", r.Window)
			}
		}},
		{"devices list and filters", plus(edit(base, "--prefix", "-"), "--devices", "sensor-3,sensor-1, sensor-3",
			"--where", "site=lab", "--where", "app_ver=2.1", "--include-up-to-date"), func(t *testing.T, s rolloutSpec) {
			if !slices.Equal(s.ids, []string{"sensor-3", "sensor-1"}) || s.req.Targets.List != "fw-11" || !s.req.Targets.IncludeUpToDate ||
				len(s.req.Targets.Where) != 2 || s.req.Targets.Where["site"] != "lab" || s.req.Targets.Where["app_ver"] != "2.1" {
				t.Errorf("targets = %+v, ids %v", s.req.Targets, s.ids)
			}
		}},
		{"devices file", plus(edit(base, "--prefix", "-"), "--devices-file", listFile), func(t *testing.T, s rolloutSpec) {
			if !slices.Equal(s.ids, []string{"sensor-2", "sensor-1"}) || s.req.Targets.List != "fw-11" {
				t.Errorf("targets = %+v, ids %v", s.req.Targets, s.ids)
			}
		}},
		{"continuous", plus(base, "--continuous"), func(t *testing.T, s rolloutSpec) {
			if !s.req.Continuous {
				t.Errorf("request = %+v, want continuous", s.req)
			}
		}},
		{"per-device flags", plus(base, "--max-attempts", "5", "--retry-codes", "none", "--retry-timeouts=false",
			"--start-timeout", "2m", "--version-key", "fw"), func(t *testing.T, s rolloutSpec) {
			u := s.req.Upgrade
			if u.MaxAttempts != 5 || u.RetryCodes == nil || len(u.RetryCodes) != 0 || u.RetryTimeouts == nil || *u.RetryTimeouts ||
				u.StartTimeout.Std() != 2*time.Minute || u.VersionKey != "fw" {
				t.Errorf("upgrade = %+v", u)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := parseRolloutFlags(t, tt.args...)
			if err != nil {
				t.Fatalf("rolloutRequest: %v", err)
			}
			if err := spec.req.WithDefaults().Validate(); err != nil {
				t.Fatalf("the request does not validate: %v", err)
			}
			tt.check(t, spec)
		})
	}
}

func TestRolloutNameCheckAgreesWithValidate(t *testing.T) {
	valid := ota.RolloutRequest{
		Upgrade: ota.UpgradeRequest{Type: "firmware", Version: "1.1", URL: "https://files.example.com/fw.bin",
			MD5: "9e107d9d372bb6826bd81d3542a419d6", Size: 1},
		Targets: ota.Targets{Prefix: "sensor-"},
	}
	for _, name := range []string{"fw-11", "a", "A.b_c-9", strings.Repeat("n", 64), strings.Repeat("n", 65), "",
		"fw 11", "fw/11", "fw'11", "fw\n", "ünïcode", "fw*"} {
		req := valid
		req.Name = name
		want := req.WithDefaults().Validate() == nil
		if got := checkRolloutName(name) == nil; got != want {
			t.Errorf("checkRolloutName(%q) accepts %v, RolloutRequest.Validate %v", name, got, want)
		}
	}
}

func TestParseAtAndOnceAt(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"2026-11-27T01:00:00Z", time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC), ""},
		{"2026-11-27T02:00:00+01:00", time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC), ""},
		{"2026-11-26T12:00:00.2Z", time.Date(2026, 11, 26, 12, 0, 1, 0, time.UTC), ""},
		{"2026-11-26T12:00:00Z", time.Time{}, "not in the future"},
		{"2026-11-27 01:00", time.Time{}, "not an RFC 3339 time"},
	}
	for _, tt := range tests {
		got, err := parseAt(tt.in, now)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseAt(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) || got.Location() != time.UTC {
			t.Errorf("parseAt(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	at := time.Date(2026, 11, 27, 1, 2, 3, 0, time.UTC)
	spec := onceAt(at)
	one := func(v int) []client.ScheduleRange { return []client.ScheduleRange{{Start: v}} }
	c := spec.Calendars
	if len(c) != 1 || !slices.Equal(c[0].Year, one(2026)) || !slices.Equal(c[0].Month, one(11)) || !slices.Equal(c[0].DayOfMonth, one(27)) ||
		!slices.Equal(c[0].Hour, one(1)) || !slices.Equal(c[0].Minute, one(2)) || !slices.Equal(c[0].Second, one(3)) ||
		!spec.StartAt.Equal(at) || !spec.EndAt.Equal(at) || spec.CronExpressions != nil || spec.TimeZoneName != "" {
		t.Errorf("onceAt(%v) = %+v", at, spec)
	}
}

func TestParseDeviceList(t *testing.T) {
	got, err := parseDeviceList(strings.NewReader("# header\r\nb\r\n a # with a comment\n\nb\nc#\n"), "line")
	if err != nil || !slices.Equal(got, []string{"b", "a", "c"}) {
		t.Errorf("parseDeviceList = %v, %v; want [b a c]", got, err)
	}
	if _, err := parseDeviceList(strings.NewReader("a\nb/c\n"), "line"); err == nil || !strings.Contains(err.Error(), `line 2: "b/c"`) {
		t.Errorf("a bad ID gives %v", err)
	}
}

func TestProgressBar(t *testing.T) {
	tests := []struct {
		target int
		c      ota.Counts
		want   string
	}{
		{10, ota.Counts{}, "[" + strings.Repeat(".", 30) + "]"},
		{10, ota.Counts{Started: 10, Succeeded: 10}, "[" + strings.Repeat("#", 30) + "]"},
		{10, ota.Counts{Started: 5, Succeeded: 2, Failed: 1}, "[" + strings.Repeat("#", 9) + strings.Repeat("~", 6) + strings.Repeat(".", 15) + "]"},
		{3, ota.Counts{Started: 1}, "[" + strings.Repeat("~", 10) + strings.Repeat(".", 20) + "]"},
		{0, ota.Counts{}, "[" + strings.Repeat(" ", 30) + "]"},
		{2, ota.Counts{Started: 3, Succeeded: 3}, "[" + strings.Repeat("#", 30) + "]"}, // more than the target: full
	}
	for _, tt := range tests {
		if got := progressBar(tt.target, tt.c); got != tt.want {
			t.Errorf("progressBar(%d, %+v) = %s, want %s", tt.target, tt.c, got, tt.want)
		}
	}
}

// sampleReport is a rollout in its second wave.
func sampleReport() rolloutStatusReport {
	started := time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)
	return rolloutStatusReport{
		WorkflowID: ota.RolloutWorkflowID("fw-11"), RunID: "run-1", WorkflowStatus: "Running",
		RolloutProgress: ota.RolloutProgress{
			Name: "fw-11", Type: "firmware", Version: "1.1", State: ota.RolloutRunning, Total: 6, CurrentWave: 2,
			Waves: []ota.WaveProgress{
				{Number: 1, Target: 2, Counts: ota.Counts{Started: 2, Succeeded: 2}},
				{Number: 2, Target: 4, Counts: ota.Counts{Started: 3, Succeeded: 1, Failed: 1}},
			},
			Counts:        ota.Counts{Started: 5, Succeeded: 3, Failed: 1},
			RatePerMinute: 12, Runs: 1, StartedAt: started, UpdatedAt: started.Add(time.Minute),
		},
	}
}

func TestRenderRollout(t *testing.T) {
	rep := sampleReport()
	rep.StoreCounts = map[ota.State]int{ota.StateSucceeded: 3, ota.StateFailed: 1, ota.StateDownloading: 1}
	rep.StoreDifferences = recordDifferences(rep.Counts, rep.StoreCounts)
	out := renderRollout(rep)
	for _, want := range []string{
		"Rollout fw-11: firmware 1.1  (workflow rollout-fw-11, Running)",
		"State     running",
		"Wave      2 of 2",
		"wave 1  [" + strings.Repeat("#", 30) + "]  2/2  succeeded 2",
		"wave 2  [" + strings.Repeat("#", 15) + strings.Repeat("~", 7) + strings.Repeat(".", 8) + "]  2/4  succeeded 1  failed 1  running 1",
		"Totals    6 targets, 5 started: succeeded 3  skipped 0  failed 1  timed out 0  reverted 0  canceled 0  conflict 0  running 1",
		"Rate      12.0 a minute",
		"Records   downloading 1  succeeded 3  failed 1  (PostgreSQL; agree with the workflow)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the status lacks %q:\n%s", want, out)
		}
	}
	rep.StoreCounts = map[ota.State]int{ota.StateSucceeded: 2}
	rep.StoreDifferences = recordDifferences(rep.Counts, rep.StoreCounts)
	if out := renderRollout(rep); !strings.Contains(out, "differ: succeeded 3 in the workflow, 2 recorded, failed 1 in the workflow, 0 recorded, running 1 in the workflow, 0 recorded") {
		t.Errorf("the status does not show the records differ:\n%s", out)
	}
	rep.StoreCounts = nil
	rep.StoreError = "connection refused"
	if out := renderRollout(rep); !strings.Contains(out, "Records   unavailable: connection refused") {
		t.Errorf("the status does not say the records are unavailable:\n%s", out)
	}
}

// TestRenderRollout_Fleet: the status shows the devices left out, a continuous rollout's late
// devices and what running means under a soak.
func TestRenderRollout_Fleet(t *testing.T) {
	rep := sampleReport()
	rep.State = ota.RolloutWatching
	rep.LeftOut = ota.LeftOut{UpToDate: 4, Incompatible: 2, Quarantined: 1}
	rep.Counts.Incompatible, rep.Counts.Quarantined = 3, 1
	rep.Late = &ota.Counts{Started: 3, Succeeded: 1, Reverted: 1}
	rep.Soak = ota.Duration(10 * time.Minute)
	out := renderRollout(rep)
	for _, want := range []string{
		"State     watching",
		"Late      3 started after the waves: succeeded 1  reverted 1  running 1",
		"Soak      10m0s: a running upgrade may have installed and be soaking",
		"Left out  7: 4 up to date, 2 incompatible, 1 quarantined (at pre-flight); now 3 incompatible, 1 quarantined",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the status lacks %q:\n%s", want, out)
		}
	}
	rep = sampleReport()
	if out := renderRollout(rep); strings.Contains(out, "Left out") || strings.Contains(out, "Late") || strings.Contains(out, "Soak") {
		t.Errorf("a rollout without left-out devices, late devices or soak shows them:\n%s", out)
	}
}

func TestStatusJSONCarriesProgressAndWorkflowID(t *testing.T) {
	b, err := json.Marshal(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	counts, _ := m["counts"].(map[string]any)
	if m["workflow_id"] != "rollout-fw-11" || m["name"] != "fw-11" || m["state"] != "running" || counts["succeeded"] != 3.0 || counts["failed"] != 1.0 {
		t.Errorf("status JSON = %s", b)
	}
	var back rolloutStatusReport
	if err := json.Unmarshal(b, &back); err != nil || back.Counts.Succeeded != 3 || back.WorkflowID != "rollout-fw-11" {
		t.Errorf("status JSON does not read back: %+v, %v", back, err)
	}
}

func TestDrawer(t *testing.T) {
	var out strings.Builder
	d := &drawer{w: &out}
	rep := sampleReport()
	d.draw(rep)
	moved := rep
	moved.RatePerMinute, moved.UpdatedAt = 13, rep.UpdatedAt.Add(time.Second) // changes by itself under a ramp
	d.draw(moved)
	if n := strings.Count(out.String(), "Rollout fw-11"); n != 1 {
		t.Errorf("without a change, %d blocks printed:\n%s", n, out.String())
	}
	changed := rep
	changed.Counts.Succeeded++
	d.draw(changed)
	if n := strings.Count(out.String(), "Rollout fw-11"); n != 2 || strings.Contains(out.String(), "\x1b[") {
		t.Errorf("after a change, %d blocks printed (want 2, no escapes):\n%s", n, out.String())
	}

	out.Reset()
	d = &drawer{w: &out, tty: true}
	d.draw(rep)
	lines := strings.Count(out.String(), "\n")
	d.draw(rep)
	if !strings.Contains(out.String(), fmt.Sprintf("\x1b[%dA\x1b[J", lines)) {
		t.Errorf("a terminal redraw does not move up %d lines:\n%q", lines, out.String())
	}

	out.Reset()
	d = &drawer{w: &out, json: true}
	d.draw(rep)
	d.draw(moved)
	d.draw(changed)
	jsonLines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(jsonLines) != 2 {
		t.Fatalf("--watch --json printed %d lines, want 2:\n%s", len(jsonLines), out.String())
	}
	for _, l := range jsonLines {
		var r rolloutStatusReport
		if err := json.Unmarshal([]byte(l), &r); err != nil || r.WorkflowID != "rollout-fw-11" {
			t.Errorf("line %q: %v", l, err)
		}
	}
}

func TestRolloutQuery(t *testing.T) {
	base := fmt.Sprintf("WorkflowType = '%s' AND ExecutionStatus != 'ContinuedAsNew'", ota.RolloutWorkflowName)
	if got := rolloutQuery("", ""); got != base {
		t.Errorf("rolloutQuery() = %q, want %q", got, base)
	}
	want := base + fmt.Sprintf(" AND %s = 'fw-11' AND %s = 'paused'", ota.SearchRollout.GetName(), ota.SearchState.GetName())
	if got := rolloutQuery("fw-11", ota.RolloutPaused); got != want {
		t.Errorf("rolloutQuery(fw-11, paused) = %q, want %q", got, want)
	}
}

// checkTextAgreesWithJSON fails the test unless every field of a status report's JSON that
// the text shows reads the same in the text (renderRollout).
func checkTextAgreesWithJSON(t *testing.T, text string, js []byte) {
	t.Helper()
	var rep rolloutStatusReport
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, js)
	}
	p := rep.RolloutProgress
	lineOf := func(prefix string) string {
		t.Helper()
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), prefix) {
				return l
			}
		}
		t.Errorf("the text has no line %q; the JSON says %s\ntext:\n%s", prefix, js, text)
		return ""
	}
	has := func(line string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(line, w) {
				t.Errorf("the text says %q where the JSON says %q\nJSON: %s", strings.TrimSpace(line), w, js)
			}
		}
	}
	counts := func(c ota.Counts) []string {
		var out []string
		for _, kv := range []struct {
			name string
			n    int
		}{{"succeeded", c.Succeeded}, {"skipped", c.Skipped}, {"failed", c.Failed}, {"timed out", c.TimedOut},
			{"canceled", c.Canceled}, {"conflict", c.Conflict}, {"running", c.Running()}} {
			if kv.n > 0 {
				out = append(out, fmt.Sprintf("%s %d", kv.name, kv.n))
			}
		}
		return out
	}
	has(lineOf("Rollout "), fmt.Sprintf("Rollout %s: %s %s  (workflow %s", p.Name, p.Type, p.Version, rep.WorkflowID))
	has(lineOf("State "), "State     "+string(p.State))
	if p.Reason != "" {
		has(lineOf("Reason "), "Reason    "+p.Reason)
	}
	if len(p.Waves) > 0 {
		has(lineOf("Wave "), fmt.Sprintf("Wave      %d of %d", p.CurrentWave, len(p.Waves)))
		for _, w := range p.Waves {
			has(lineOf(fmt.Sprintf("wave %d ", w.Number)), fmt.Sprintf("]  %d/%d", w.Counts.Finished(), w.Target))
			has(lineOf(fmt.Sprintf("wave %d ", w.Number)), counts(w.Counts)...)
		}
	}
	has(lineOf("Totals "), append([]string{fmt.Sprintf("%d targets, %d started: ", p.Total, p.Counts.Started)}, counts(p.Counts)...)...)
	if !p.State.Final() {
		rate := "unbounded"
		if p.RatePerMinute > 0 {
			rate = fmt.Sprintf("%.1f a minute", p.RatePerMinute)
		}
		has(lineOf("Rate "), rate)
	}
	if !p.StartedAt.IsZero() {
		has(lineOf("Started "), formatTime(p.StartedAt))
	}
	if p.FinishedAt != nil {
		has(lineOf("Finished "), formatTime(*p.FinishedAt))
	}
	if rep.StoreCounts != nil {
		line := lineOf("Records ")
		for s, n := range rep.StoreCounts {
			if n > 0 {
				has(line, fmt.Sprintf("%s %d", s, n))
			}
		}
		if len(rep.StoreDifferences) == 0 {
			has(line, "agree with the workflow")
		}
		has(line, rep.StoreDifferences...)
	}
	if rep.StoreError != "" {
		has(lineOf("Records "), rep.StoreError)
	}
}

// TestStatusTextAgreesWithJSON: `rollout status` and `rollout status --json` say the same of
// a rollout in every phase, the current wave of a finished one included (the JSON once said
// wave 4 where the text said "Wave 3 of 3").
func TestStatusTextAgreesWithJSON(t *testing.T) {
	started := time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)
	finished := started.Add(time.Hour)
	opens := started.Add(20 * time.Hour)
	running := sampleReport()
	completed := sampleReport()
	completed.WorkflowStatus = "Completed"
	completed.State, completed.CurrentWave, completed.FinishedAt, completed.RatePerMinute = ota.RolloutCompleted, 3, &finished, 0
	completed.Waves = []ota.WaveProgress{
		{Number: 1, Target: 1, Counts: ota.Counts{Started: 1, Succeeded: 1}},
		{Number: 2, Target: 2, Counts: ota.Counts{Started: 2, Succeeded: 1, Skipped: 1}},
		{Number: 3, Target: 3, Counts: ota.Counts{Started: 3, Succeeded: 2, TimedOut: 1}},
	}
	completed.Counts = ota.Counts{Started: 6, Succeeded: 4, Skipped: 1, TimedOut: 1}
	completed.StoreCounts = map[ota.State]int{ota.StateSucceeded: 4, ota.StateSkipped: 1, ota.StateTimedOut: 1}
	differ := completed
	differ.StoreCounts = map[ota.State]int{ota.StateSucceeded: 52, ota.StateSkipped: 1, ota.StateTimedOut: 1}
	differ.StoreDifferences = recordDifferences(differ.Counts, differ.StoreCounts)
	preflight := sampleReport()
	preflight.State, preflight.Total, preflight.CurrentWave, preflight.Waves, preflight.Counts = ota.RolloutPreflight, 0, 0, nil, ota.Counts{}
	window := sampleReport()
	window.State, window.NextWindowAt, window.RatePerMinute = ota.RolloutWaitingWindow, &opens, 0
	window.Reason = "outside the maintenance window 01:00-05:00 UTC; it opens 2026-11-26 21:00 UTC"
	failed := sampleReport()
	failed.State, failed.FinishedAt, failed.Reason = ota.RolloutFailed, &finished, "pre-flight check failed, no device was touched: package is 10 bytes"
	failed.StoreError = "connection refused"
	for name, rep := range map[string]rolloutStatusReport{"running": running, "completed": completed, "records differ": differ,
		"preflight": preflight, "waiting for the window": window, "failed": failed} {
		t.Run(name, func(t *testing.T) {
			js, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			checkTextAgreesWithJSON(t, renderRollout(rep), js)
		})
	}
}

// TestEarlierRecordsReadPlainly: a reason or desc that an earlier version recorded with the
// SDK's wrapping of an activity's error reads in plain words.
func TestEarlierRecordsReadPlainly(t *testing.T) {
	// As workflows/testdata/v2/rollout-preflight-failed.json recorded it.
	const mismatch = "package http://127.0.0.1:37889/firmware-1.1.bin is 65536 bytes with md5 92f6eb8d4d4bba759c46ecce14a663c4, " +
		"but the rollout says 65536 bytes with md5 00000000000000000000000000000000"
	recorded := "pre-flight check failed, no device was touched: activity error (type: CheckPackage, scheduledEventID: 7, " +
		"startedEventID: 8, identity: 14774@vm@): " + mismatch + " (type: PackageMismatch, retryable: false): package mismatch"
	p := plainProgress(ota.RolloutProgress{Name: "fw", State: ota.RolloutFailed, Reason: recorded})
	err := rolloutOutcome(p)
	if want := "rollout fw ended failed: pre-flight check failed, no device was touched: " + mismatch; err == nil || err.Error() != want {
		t.Errorf("rolloutOutcome = %v\nwant %s", err, want)
	}
	st := plainStatus(ota.UpgradeStatus{DeviceID: "d1", State: ota.StateFailed,
		Desc: "could not send the command: activity error (type: SendCommand, scheduledEventID: 0, startedEventID: 0, identity: w@h@): " +
			"publish command to d1: broker unreachable"})
	if got, want := outcome(st), "failed: could not send the command: publish command to d1: broker unreachable"; got != want {
		t.Errorf("outcome = %q\nwant %q", got, want)
	}
}
