package main

import (
	"errors"
	"io"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/urfave/cli/v2"
	"go.temporal.io/sdk/converter"
)

// rolloutFlagsFuzzed are the flags of `rollout start` that FuzzRolloutFlags sets, in the order
// of its arguments, each with the words an error about it may name it by.
var rolloutFlagsFuzzed = []struct {
	name  string
	words []string
}{
	{"name", []string{"name"}},
	{"type", []string{"type"}},
	{"version", []string{"version"}},
	{"prefix", []string{"prefix", "targets"}},
	{"devices", []string{"devices", "targets"}},
	{"where", []string{"where", "filter", "targets"}},
	{"waves", []string{"waves", "wave"}},
	{"wave-success", []string{"wave-success"}},
	{"bake", []string{"bake"}},
	{"max-per-minute", []string{"max-per-minute", "max per minute"}},
	{"ramp", []string{"ramp"}},
	{"failure-threshold", []string{"failure-threshold", "failure threshold"}},
	{"window", []string{"window"}},
	{"tz", []string{"tz", "window"}},
	{"retry-codes", []string{"retry-codes"}},
	{"deadline", []string{"deadline"}},
}

// runRolloutFlags reads `rollout start` flags as the starter does and returns the checked
// request, or the error the starter would exit with.
func runRolloutFlags(args []string) (rolloutSpec, error) {
	var spec rolloutSpec
	app := &cli.App{
		Name: "t", Writer: io.Discard, ErrWriter: io.Discard, ExitErrHandler: func(*cli.Context, error) {},
		DisableSliceFlagSeparator: true, OnUsageError: onUsageError,
		Flags: []cli.Flag{&cli.StringFlag{Name: flagDatabaseURL}},
		Commands: []*cli.Command{{Name: "start", Flags: rolloutRequestFlags(), OnUsageError: onUsageError,
			Action: func(cCtx *cli.Context) (err error) {
				spec, err = rolloutRequest(cCtx, false)
				return err
			}}},
	}
	err := app.Run(append([]string{"t", "--" + flagDatabaseURL, "postgres://db.example.com/otaflow", "start"}, args...))
	return spec, err
}

// FuzzRolloutFlags feeds the user text of `rollout start` that becomes workflow input (labels
// and targets, waves and thresholds, durations, rates, ramp, window, retry codes, names) through
// the starter's flag parsing. Whatever it accepts must pass RolloutRequest.Validate, and reach
// the workflow unchanged through Temporal's data converter (the worker validates it again
// there); whatever it refuses must be a usage error (exit code 2, nothing dialled) that names
// one of the flags given. Flags whose fuzzed value is empty are left out.
func FuzzRolloutFlags(f *testing.F) {
	f.Add("fw-11", "firmware", "1.1", "sensor-", "", "site=lab", "1%,10%,50%:95,100%", "90", "10m", "600", "10,2,1m", "10", "01:00-05:00", "Europe/Berlin", "-1,-2", "24h")
	f.Add("fw-11", "app", "2.0-rc.1", "", "a,b, c", "", "5,50%", "", "", "", "", "", "", "", "none", "")
	f.Add("fw 11", "", "", "", "", "=x", "0%", "0", "0s", "-1", "1,0.5,1m", "101", "25:00-01:00", "Mars/Base", "-9", "-1h")
	f.Add("r", "t", "v", "p", "", "k=v", "10%:NaN", "NaN", "1ns", "NaN", "NaN,1,1m", "NaN", "1:00-1:00", "UTC", "x", "1")
	f.Add("r", "t", "v", "p", "", "k", "50%,10%", "Inf", "1h", "+Inf", "Inf,Inf,1m", "Inf", "01:00", "../../etc/passwd", "", "")
	f.Add("r", "t", "v", "p", "d/1", "k==v", "1e2%,1e400", "1e-400", "9223372036854775807ns", "1e308", "1e308,1e308,1ns", "1e-9", "00:00-23:59", "Local", "-4", "9999999h")
	f.Fuzz(func(t *testing.T, name, typ, version, prefix, devices, where, waves, waveSuccess, bake, maxPerMinute,
		ramp, failure, window, tz, retryCodes, deadline string) {
		values := []string{name, typ, version, prefix, devices, where, waves, waveSuccess, bake, maxPerMinute,
			ramp, failure, window, tz, retryCodes, deadline}
		args := []string{"--url", "https://files.example.com/fw.bin", "--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "1024"}
		var given []int
		for i, v := range values {
			if v == "" {
				continue
			}
			// --tz alone is refused; given, it comes with a window.
			if rolloutFlagsFuzzed[i].name == "tz" && window == "" {
				continue
			}
			given = append(given, i)
			args = append(args, "--"+rolloutFlagsFuzzed[i].name+"="+v)
		}
		spec, err := runRolloutFlags(args)
		if err != nil {
			var ec cli.ExitCoder
			if !errors.As(err, &ec) || ec.ExitCode() != exitUsage {
				t.Fatalf("flags %q: %v is not a usage error", args, err)
			}
			msg := strings.ToLower(err.Error())
			for _, i := range given {
				for _, w := range rolloutFlagsFuzzed[i].words {
					if strings.Contains(msg, w) {
						return
					}
				}
			}
			if strings.Contains(msg, "missing required flag") {
				return
			}
			t.Fatalf("flags %q: the error names none of the flags given: %v", args, err)
		}

		req := spec.req.WithDefaults()
		if err := req.Validate(); err != nil {
			t.Fatalf("flags %q: accepted a request that does not validate: %v", args, err)
		}
		if req.Targets.Where != nil {
			// Labels read back the same when written KEY=VALUE again.
			var kvs []string
			for k, v := range req.Targets.Where {
				kvs = append(kvs, k+"="+v)
			}
			again, err := parseKeyValues(kvs, "filter")
			if err != nil || !maps.Equal(again, req.Targets.Where) {
				t.Fatalf("--where %q read as %v, which reads back as %v (%v)", where, req.Targets.Where, again, err)
			}
		}
		// The request reaches the workflow as JSON through the default data converter.
		dc := converter.GetDefaultDataConverter()
		p, err := dc.ToPayload(req)
		if err != nil {
			t.Fatalf("flags %q: the accepted request cannot be sent to the workflow: %v", args, err)
		}
		var got ota.RolloutRequest
		if err := dc.FromPayload(p, &got); err != nil {
			t.Fatalf("flags %q: the workflow cannot read the request: %v", args, err)
		}
		if !reflect.DeepEqual(got, req) {
			t.Fatalf("flags %q: the workflow reads\n%+v\nnot\n%+v", args, got, req)
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("flags %q: the workflow refuses the request: %v", args, err)
		}
	})
}

// trustFlagsFuzzed are the package integrity, compatibility and soak flags that
// FuzzPackageTrustFlags sets, in the order of its arguments, with the words an error about
// each may name it by.
var trustFlagsFuzzed = []struct {
	name  string
	words []string
}{
	{flagSHA256, []string{"sha256"}},
	{flagSig, []string{"sig"}},
	{flagKeyID, []string{"key-id", "key_id"}},
	{flagCompatibleLabel, []string{"compatible-label", "compatible label"}},
	{flagCompatibleVersions, []string{"compatible-versions", "compatible versions"}},
	{flagSoak, []string{"soak"}},
}

// FuzzPackageTrustFlags feeds the integrity (sha256, signature, key ID), compatibility and soak
// flags through the flag parsing that `upgrade` and the rollout commands share, as
// FuzzRolloutFlags does: what is accepted validates and reaches the workflow unchanged, and
// its compatibility can be applied to a device; what is refused is a usage error naming a
// flag given.
func FuzzPackageTrustFlags(f *testing.F) {
	f.Add(strings.Repeat("ab", 32), strings.Repeat("A", 86)+"==", "release-1", "model=pump-v2", ">=1.0,<2.0", "1h")
	f.Add(strings.Repeat("AB", 32), "not base64", "bad/id", "model", ">=1.0,<<2.0", "-1m")
	f.Add("", "", "", "=x", "~> 1.2", "0s")
	f.Add("", "", "", "a=b=c", "!=1.0", "1e9h")
	f.Fuzz(func(t *testing.T, sha256, sig, keyID, label, versions, soak string) {
		args := []string{"--name", "r", "--prefix", "p-", "--type", "firmware", "--version", "1.1",
			"--url", "https://files.example.com/fw.bin", "--md5", "9e107d9d372bb6826bd81d3542a419d6", "--size", "1024"}
		var given []int
		for i, v := range []string{sha256, sig, keyID, label, versions, soak} {
			if v != "" {
				given = append(given, i)
				args = append(args, "--"+trustFlagsFuzzed[i].name+"="+v)
			}
		}
		spec, err := runRolloutFlags(args)
		if err != nil {
			var ec cli.ExitCoder
			if !errors.As(err, &ec) || ec.ExitCode() != exitUsage {
				t.Fatalf("flags %q: %v is not a usage error", args, err)
			}
			msg := strings.ToLower(err.Error())
			for _, i := range given {
				for _, w := range trustFlagsFuzzed[i].words {
					if strings.Contains(msg, w) {
						return
					}
				}
			}
			t.Fatalf("flags %q: the error names none of the flags given: %v", args, err)
		}
		req := spec.req.WithDefaults()
		if err := req.Validate(); err != nil {
			t.Fatalf("flags %q: accepted a request that does not validate: %v", args, err)
		}
		if c := req.Upgrade.Compat; c != nil {
			c.Fits(map[string]string{"model": "pump-v2"}, "1.5") // must not panic
		}
		dc := converter.GetDefaultDataConverter()
		p, err := dc.ToPayload(req)
		if err != nil {
			t.Fatalf("flags %q: the accepted request cannot be sent to the workflow: %v", args, err)
		}
		var got ota.RolloutRequest
		if err := dc.FromPayload(p, &got); err != nil || !reflect.DeepEqual(got, req) {
			t.Fatalf("flags %q: the workflow reads %+v (%v), not %+v", args, got, err, req)
		}
	})
}
