package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

// exitCode is what cli.Exit passed to cli.OsExiter.
type exitCode int

// runApp runs the command with args, its output going to stdout and stderr, and returns its
// exit code (0 when it did not exit) and its error.
func runApp(ctx context.Context, stdout, stderr *testenv.Buffer, args ...string) (code int, err error) {
	app := newApp()
	app.Writer, app.ErrWriter = stdout, stderr
	oldExiter, oldErrWriter := cli.OsExiter, cli.ErrWriter
	cli.OsExiter = func(c int) { panic(exitCode(c)) }
	cli.ErrWriter = stderr
	defer func() {
		cli.OsExiter, cli.ErrWriter = oldExiter, oldErrWriter
		if r := recover(); r != nil {
			c, ok := r.(exitCode)
			if !ok {
				panic(r)
			}
			code = int(c)
		}
	}()
	return 0, app.RunContext(ctx, append([]string{"devicesim"}, args...))
}

func TestBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"rate not a number", []string{"--fail-download", "abc", "--no-register"}, "invalid value"},
		{"rate above 1", []string{"--fail-download", "1.5", "--no-register"}, "between 0 and 1"},
		{"unknown flag", []string{"--no-such-flag"}, "not defined"},
		{"status without version", []string{"--status", "firmware_ver", "--no-register"}, "KEY=VERSION"},
		{"empty status", []string{"--status", " , ", "--no-register"}, "status is empty"},
		{"no devices", []string{"--devices", "0", "--no-register"}, "at least 1"},
		{"ids and count", []string{"--device-ids", "a,b", "--devices", "3", "--no-register"}, "not both"},
		{"invalid device ID", []string{"--device-ids", "a/b", "--no-register"}, "device ID"},
		{"fault device not simulated", []string{"--corrupt-devices", "sim-00099", "--no-register"}, "not in the fleet"},
		{"bad broker URL", []string{"--broker", "http://localhost", "--no-register"}, "scheme"},
		{"no database", []string{"--state-dir", "x"}, "--database-url"},
		{"no secrets kept", []string{"--no-register", "--state-dir", "", "--devices", "1"}, "no secret"},
		{"unknown protocol", []string{"--protocol", "2", "--no-register"}, `protocol "2": want 1 or 1.1`},
		{"trusted keys missing", []string{"--trusted-keys", "/nonexistent/keys", "--no-register"}, "trusted keys: open /nonexistent/keys"},
		{"signatures required without keys", []string{"--require-signatures", "--no-register"}, "no trusted keys"},
		{"protocol 1 requiring signatures", []string{"--protocol", "1", "--require-signatures", "--no-register"}, "protocol 1 devices verify no signatures"},
		{"tamper rate above 1", []string{"--tamper", "2", "--no-register"}, "fault tamper: rate 2"},
		{"negative download time", []string{"--download-time", "-1s", "--no-register"}, "download time -1s is negative"},
		{"download time beyond its timeout", []string{"--download-time", "11m", "--no-register"}, "not shorter than the download timeout"},
	}
	t.Setenv("DATABASE_URL", "")
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stderr := &testenv.Buffer{}
			code, err := runApp(t.Context(), &testenv.Buffer{}, stderr, tt.args...)
			if err == nil && code == 0 {
				t.Fatal("bad flags accepted")
			}
			msg := stderr.String()
			if err != nil {
				msg += err.Error()
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("output %q (exit %d) does not mention %q", msg, code, tt.want)
			}
		})
	}
}

// configOf reads the flags as run does and returns the fleet's configuration.
func configOf(t *testing.T, args ...string) (fleetConfig, error) {
	t.Helper()
	app := newApp()
	app.Writer, app.ErrWriter = &testenv.Buffer{}, &testenv.Buffer{}
	var cfg fleetConfig
	var cfgErr error
	app.Action = func(cCtx *cli.Context) error {
		cfg, cfgErr = config(cCtx, slog.New(slog.DiscardHandler))
		return nil
	}
	if err := app.RunContext(t.Context(), append([]string{"devicesim"}, args...)); err != nil {
		t.Fatal(err)
	}
	return cfg, cfgErr
}

func TestProtocolFlags(t *testing.T) {
	dir := t.TempDir()
	if _, err := pkgsig.WriteKeyPair(filepath.Join(dir, "private"), "release"); err != nil {
		t.Fatal(err)
	}
	trusted := filepath.Join(dir, "trusted")
	if err := os.Mkdir(trusted, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "private", "release.pub"), filepath.Join(trusted, "release.pub")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OTAFLOW_TRUSTED_KEYS", "")

	cfg, err := configOf(t)
	if err != nil || cfg.Protocol != simulator.ProtocolV1_1 || cfg.TrustedKeys != nil || cfg.RequireSignatures {
		t.Errorf("defaults: %+v, %v; want protocol 1.1 without keys", cfg.Config, err)
	}
	cfg, err = configOf(t, "--trusted-keys", trusted, "--require-signatures", "--tamper-devices", "sim-00001")
	if err != nil || !slices.Equal(cfg.TrustedKeys.IDs(), []string{"release"}) || !cfg.RequireSignatures ||
		!slices.Equal(cfg.Faults.Tamper.Devices, []string{"sim-00001"}) {
		t.Errorf("--trusted-keys --require-signatures --tamper-devices: %+v, %v", cfg.Config, err)
	}
	t.Setenv("OTAFLOW_TRUSTED_KEYS", trusted)
	if cfg, err = configOf(t); err != nil || cfg.TrustedKeys.Len() != 1 {
		t.Errorf("OTAFLOW_TRUSTED_KEYS: %+v, %v", cfg.Config, err)
	}
	// The worker's OTAFLOW_TRUSTED_KEYS in the environment does not stop version 1 devices.
	if cfg, err = configOf(t, "--protocol", "1"); err != nil || cfg.Protocol != simulator.ProtocolV1 || cfg.TrustedKeys != nil {
		t.Errorf("--protocol 1 with OTAFLOW_TRUSTED_KEYS: %+v, %v", cfg.Config, err)
	}
	if _, err = configOf(t, "--trusted-keys", filepath.Join(dir, "private")); err == nil || !strings.Contains(err.Error(), "looks like a private key") {
		t.Errorf("a directory with a private key: %v", err)
	}
}

func TestParseStatus(t *testing.T) {
	st, err := parseStatus(" firmware_ver=1.0 , app_ver=3.2,")
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st["firmware_ver"] != "1.0" || st["app_ver"] != "3.2" {
		t.Errorf("status = %v", st)
	}
	if _, err := parseStatus("a=1,a=2"); err == nil {
		t.Error("duplicate key accepted")
	}
}

// TestRun registers devices in the real registry, runs them against a broker that checks
// it, prints summaries and stops on cancellation; a second run reuses the kept secrets
// without the database.
func TestRun(t *testing.T) {
	dbURL := testenv.DatabaseURL(t)
	st, err := store.Open(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Credentials: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.WithoutCancel(t.Context())); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	stateDir := t.TempDir()

	run := func(extra ...string) {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		stdout := &testenv.Buffer{}
		done := make(chan error, 1)
		go func() {
			args := append([]string{"--devices", "2", "--prefix", "cli", "--broker", b.URL(),
				"--state-dir", stateDir, "--summary-interval", "20ms", "--status", "firmware_ver=1.0,app_ver=3.2"}, extra...)
			code, err := runApp(ctx, stdout, &testenv.Buffer{}, args...)
			if err == nil && code != 0 {
				err = fmt.Errorf("exit code %d", code)
			}
			done <- err
		}()
		ended := false
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			select {
			case err := <-done:
				ended = true
				t.Errorf("simulator ended early: %v; output %q", err, stdout.String())
				return
			default:
			}
			out := stdout.String()
			assert.Contains(c, out, "devicesim: devices=2 connected=2 ", "output so far")
		}, 30*time.Second, 10*time.Millisecond, "the devices to connect")
		if ended {
			t.FailNow()
		}
		cancel() // Ctrl-C
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run ended with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("cancellation did not stop the simulator")
		}
		if !strings.Contains(stdout.String(), "devicesim: stopped: devices=2") {
			t.Errorf("no final summary in %q", stdout.String())
		}
	}
	run("--database-url", dbURL)
	for _, id := range []string{"cli-00001", "cli-00002"} {
		d, err := st.GetDevice(t.Context(), id)
		if err != nil {
			t.Fatalf("device not registered: %v", err)
		}
		if d.Disabled {
			t.Errorf("%s disabled", id)
		}
	}
	run("--no-register") // a restart, from the kept secrets alone
}
