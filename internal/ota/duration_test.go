package ota

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDuration_UnmarshalJSON(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Duration
		wantErr  string
	}{
		{"string", `"10m0s"`, Duration(10 * time.Minute), ""},
		{"short string", `"90s"`, Duration(90 * time.Second), ""},
		{"string of hours", `"1h30m"`, Duration(90 * time.Minute), ""},
		{"zero string", `"0s"`, 0, ""},
		{"negative string", `"-5s"`, Duration(-5 * time.Second), ""},
		{"nanoseconds, as recorded before", `600000000000`, Duration(10 * time.Minute), ""},
		{"zero nanoseconds", `0`, 0, ""},
		{"negative nanoseconds", `-1000000000`, Duration(-time.Second), ""},
		{"null leaves it", `null`, Duration(7), ""},
		{"string without a unit", `"60"`, 0, "give a Go duration"},
		{"not a duration", `"soon"`, 0, "give a Go duration"},
		{"fraction of a nanosecond", `1.5`, 0, "whole number of nanoseconds"},
		{"beyond int64", `9223372036854775808`, 0, "whole number of nanoseconds"},
		{"boolean", `true`, 0, "whole number of nanoseconds"},
		{"object", `{}`, 0, "whole number of nanoseconds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Duration(7)
			err := json.Unmarshal([]byte(tc.in), &d)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Unmarshal(%s) = %v, %v; want an error saying %q", tc.in, d, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d != tc.want {
				t.Errorf("Unmarshal(%s) = %s, want %s", tc.in, d, tc.want)
			}
		})
	}
}

func TestDuration_MarshalJSON(t *testing.T) {
	for _, d := range []Duration{0, Duration(time.Nanosecond), Duration(90 * time.Second), Duration(10 * time.Minute),
		Duration(24 * time.Hour), Duration(-time.Second), Duration(1<<63 - 1)} {
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(b), `"`+d.Std().String()+`"`; got != want {
			t.Errorf("Marshal(%d) = %s, want %s", int64(d), got, want)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil || back != d {
			t.Errorf("Unmarshal(%s) = %d, %v; want %d", b, int64(back), err, int64(d))
		}
	}
}

// TestDuration_OldPayloads decodes payloads as workflow histories recorded them before
// Duration (numbers of nanoseconds; taken from workflows/testdata) into today's types, and
// checks that they encode back as duration strings, omitting the zero ones as before.
func TestDuration_OldPayloads(t *testing.T) {
	t.Run("RolloutInput", func(t *testing.T) {
		const old = `{"request":{"name":"rec-bake","upgrade":{"device_id":"","type":"firmware","version":"1.1",` +
			`"url":"http://127.0.0.1:46283/firmware-1.1.bin","md5":"c350b764ded6732d097a3455ca9fc7ff","size":65536,` +
			`"version_key":"firmware_ver","rollout":"rec-bake","start_timeout":4000000000,"silence_timeout":3000000000,` +
			`"install_timeout":3000000000,"deadline":120000000000,"max_attempts":3,"retry_codes":[-1,-2,-3,-4],` +
			`"retry_timeouts":true,"retry_backoff":200000000,"soak":2000000000},"targets":{"prefix":"rall-0003"},` +
			`"waves":[{"count":2,"bake":2000000000},{"percent":100,"approve":true}],"max_in_flight":2,` +
			`"ramp":{"start_per_minute":10,"factor":2,"step":60000000000},` +
			`"failure_min_count":5,"failure_action":"pause","page_size":500,"continue_after":3},` +
			`"carry":{"progress":{"name":"rec-bake","state":"running","total":10,"current_wave":1,"soak":2000000000,` +
			`"rate_per_minute":0,"runs":1,"started_at":"2026-11-28T10:02:42.205825588Z"},"wave_ends":[2,10]}}`
		var in RolloutInput
		if err := json.Unmarshal([]byte(old), &in); err != nil {
			t.Fatal(err)
		}
		up := in.Request.Upgrade
		for _, c := range []struct {
			name      string
			got, want Duration
		}{
			{"start timeout", up.StartTimeout, Duration(4 * time.Second)},
			{"silence timeout", up.SilenceTimeout, Duration(3 * time.Second)},
			{"install timeout", up.InstallTimeout, Duration(3 * time.Second)},
			{"deadline", up.Deadline, Duration(2 * time.Minute)},
			{"retry backoff", up.RetryBackoff, Duration(200 * time.Millisecond)},
			{"soak", up.Soak, Duration(2 * time.Second)},
			{"bake of wave 1", in.Request.Waves[0].Bake, Duration(2 * time.Second)},
			{"bake of wave 2", in.Request.Waves[1].Bake, 0},
			{"ramp step", in.Request.Ramp.Step, Duration(time.Minute)},
			{"carried soak", in.Carry.Progress.Soak, Duration(2 * time.Second)},
		} {
			if c.got != c.want {
				t.Errorf("%s = %s, want %s", c.name, c.got, c.want)
			}
		}
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"start_timeout":"4s"`, `"deadline":"2m0s"`, `"retry_backoff":"200ms"`,
			`"waves":[{"count":2,"bake":"2s"},{"percent":100,"approve":true}]`, `"step":"1m0s"`, `"soak":"2s"`} {
			if !strings.Contains(string(b), want) {
				t.Errorf("encoded again, %s lacks %s", b, want)
			}
		}
	})
	t.Run("AwaitWorkflowsInput", func(t *testing.T) {
		var in AwaitWorkflowsInput
		if err := json.Unmarshal([]byte(`{"executions":[{"workflow_id":"ota-a","run_id":"r"}],"gather":2000000000}`), &in); err != nil {
			t.Fatal(err)
		}
		if in.Gather != Duration(2*time.Second) {
			t.Errorf("gather = %s, want 2s", in.Gather)
		}
	})
	t.Run("FindLateInput", func(t *testing.T) {
		var in FindLateInput
		if err := json.Unmarshal([]byte(`{"rollout":"r","limit":500,"max_wait":300000000000}`), &in); err != nil {
			t.Fatal(err)
		}
		if in.MaxWait != Duration(5*time.Minute) {
			t.Errorf("max wait = %s, want 5m0s", in.MaxWait)
		}
	})
}

// TestUpgradeRequest_DefaultsAndValidateWithDurations: the defaults fill in zero durations
// and Validate names a negative one.
func TestUpgradeRequest_DefaultsAndValidateWithDurations(t *testing.T) {
	r := UpgradeRequest{StartTimeout: Duration(time.Minute)}.WithDefaults()
	if r.StartTimeout != Duration(time.Minute) || r.SilenceTimeout.Std() != DefaultSilenceTimeout ||
		r.InstallTimeout.Std() != DefaultInstallTimeout || r.Deadline.Std() != DefaultDeadline ||
		r.RetryBackoff.Std() != DefaultRetryBackoff || r.Soak != 0 {
		t.Errorf("defaults = %+v", r)
	}
	r = UpgradeRequest{DeviceID: "d", Type: "firmware", Version: "1.1", URL: "http://x/f.bin", MD5: strings.Repeat("0", 32), Size: 1,
		InstallTimeout: Duration(-time.Second)}.WithDefaults()
	if err := r.Validate(); err == nil || err.Error() != "install timeout must be positive, not -1s" {
		t.Errorf("Validate = %v, want the install timeout named with its duration", err)
	}
}
