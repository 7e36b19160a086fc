// Command devicesim runs a fleet of simulated OTAflow devices (see internal/dev/simulator): each
// connects to the MQTT broker with its own credentials, reports its status, and carries out
// upgrade commands by really downloading the package, with faults injected on chosen devices.
//
//	go run ./devicesim --devices 100 --prefix sim --status firmware_ver=1.0,app_ver=3.2 \
//	    --broker tcp://localhost:1883 --database-url $DATABASE_URL --fail-download 0.1
//
// Devices missing from the registry (or whose secret the simulator does not know) are
// registered with new secrets, kept in --state-dir so that a restarted simulator reuses them;
// with --no-register the secrets come from that directory alone and no database is needed.
// The versions the devices install are kept there too, and reported again after a restart
// (--keep-versions=false starts every device from --status).
// Each fault takes a rate (0..1, the same devices every run for a --fault-seed), a device list
// (--FAULT-devices) and a limit on the attempts it strikes (--FAULT-attempts 1: retries
// succeed). Devices implement PROTOCOL.md 1.1 (--protocol 1 makes them version 1 devices, which
// ignore sha256, signatures and cancels); with --trusted-keys they verify package signatures
// (--require-signatures: and refuse unsigned packages). Ctrl-C stops it cleanly.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "devicesim:", err)
		os.Exit(1)
	}
}

// fault names a fault flag and the field of simulator.Faults it sets; a fault that happens
// once has no -attempts flag.
type fault struct {
	flag, usage string
	once        bool
	field       func(*simulator.Faults) *simulator.Fault
}

var faults = []fault{
	{"fail-download", "abort the download partway and report -1", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.DownloadFail }},
	{"corrupt", "corrupt the download so the md5 check fails (-2)", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.Corrupt }},
	{"fail-install", "download, then fail the install (-3)", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.InstallFail }},
	{"silent", "stop reporting halfway through the download", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.Silent }},
	{"no-report", "report 100, then never install nor report the new version", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.NoReport }},
	{"old-version", "install and reboot, but come back on the old version", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.OldVersion }},
	{"slow", "download at --slow-rate bytes per second", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.Slow }},
	{"offline", "go offline --offline-after the first boot, for --offline-for", true,
		func(f *simulator.Faults) *simulator.Fault { return &f.Offline }},
	{"drop-off", "lose the network at 40% of the download for --offline-for, then reconnect and finish", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.DropOff }},
	{"tamper", "download tampered bytes whose md5 matches: only the sha256 check catches them (-2)", false,
		func(f *simulator.Faults) *simulator.Fault { return &f.Tamper }},
}

// newApp returns the command line application.
func newApp() *cli.App {
	t := simulator.DefaultTiming()
	flags := []cli.Flag{
		&cli.IntFlag{Name: "devices", Aliases: []string{"n"}, Value: 10, EnvVars: []string{"DEVICESIM_DEVICES"},
			Usage: "number of devices, named PREFIX-00001 ..."},
		&cli.StringFlag{Name: "prefix", Value: "sim", EnvVars: []string{"DEVICESIM_PREFIX"}, Usage: "device ID prefix"},
		&cli.StringSliceFlag{Name: "device-ids", Usage: "simulate exactly these devices (comma-separated) instead of --devices/--prefix"},
		&cli.StringFlag{Name: "status", Value: "firmware_ver=1.0", EnvVars: []string{"DEVICESIM_STATUS"},
			Usage: "initial status reported by every device: KEY=VERSION[,KEY=VERSION...]"},
		&cli.StringFlag{Name: "broker", Aliases: []string{"mqtt-url"}, Value: "tcp://localhost:1883", EnvVars: []string{"MQTT_URL"},
			Usage: "MQTT broker URL (user and password in it are ignored: devices use their own)"},
		&cli.StringFlag{Name: "database-url", EnvVars: []string{"DATABASE_URL"},
			Usage: "PostgreSQL URL of the device registry, to register the devices (not needed with --no-register)"},
		&cli.BoolFlag{Name: "no-register", Usage: "do not register devices; take every secret from --state-dir"},
		&cli.StringFlag{Name: "state-dir", EnvVars: []string{"DEVICESIM_STATE_DIR"},
			Usage: "directory that keeps the devices' secrets and installed versions (default: the user cache directory's otaflow/devicesim)"},
		&cli.BoolFlag{Name: "keep-versions", Value: true,
			Usage: "keep the versions the devices install in --state-dir and report them after a restart (false: start from --status)"},
		&cli.Int64Flag{Name: "fault-seed", Value: 1, Usage: "seed that picks which devices a fault rate hits"},
		&cli.StringFlag{Name: "protocol", Value: simulator.ProtocolV1_1,
			Usage: "PROTOCOL.md version the devices implement: 1.1, or 1 (no sha256, signatures nor cancel)"},
		&cli.StringFlag{Name: "trusted-keys", EnvVars: []string{"OTAFLOW_TRUSTED_KEYS"},
			Usage: "`DIR` of <key_id>.pub public keys with which the devices verify package signatures"},
		&cli.BoolFlag{Name: "require-signatures", Usage: "devices refuse unsigned packages (needs --trusted-keys)"},

		&cli.DurationFlag{Name: "report-interval", Value: t.ReportInterval, Usage: "least time between two progress reports"},
		&cli.DurationFlag{Name: "install-delay", Value: t.InstallDelay, Usage: "time an install takes"},
		&cli.DurationFlag{Name: "reboot-delay", Value: t.RebootDelay, Usage: "time a reboot keeps the device offline"},
		&cli.DurationFlag{Name: "download-time", Usage: "every download takes this long, reporting progress every --report-interval (0: as fast as the network)"},
		&cli.Int64Flag{Name: "slow-rate", Value: t.SlowRate, Usage: "download speed of a --slow device, bytes per second"},
		&cli.DurationFlag{Name: "offline-after", Value: t.OfflineAfter, Usage: "when an --offline device disconnects, after its first boot"},
		&cli.DurationFlag{Name: "offline-for", Value: t.OfflineFor, Usage: "how long an --offline device stays offline, and a --drop-off device without network"},
		&cli.DurationFlag{Name: "connect-timeout", Value: t.ConnectTimeout, Usage: "bound on one connection attempt"},
		&cli.DurationFlag{Name: "summary-interval", Value: 10 * time.Second, Usage: "how often to print a summary line (0: never)"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log every device's steps"},
	}
	for _, f := range faults {
		flags = append(flags,
			&cli.Float64Flag{Name: f.flag, Category: "Faults", Usage: "share of devices (0..1) that " + f.usage},
			&cli.StringSliceFlag{Name: f.flag + "-devices", Category: "Faults", Usage: "devices that " + f.usage})
		if !f.once {
			flags = append(flags, &cli.IntFlag{Name: f.flag + "-attempts", Category: "Faults",
				Usage: "strike only each device's first N attempts (0: all)"})
		}
	}
	return &cli.App{
		Name:   "devicesim",
		Usage:  "simulate OTAflow devices that download, verify, install and report upgrades",
		Flags:  flags,
		Action: run,
	}
}

func run(cCtx *cli.Context) error {
	ctx := cCtx.Context
	level := slog.LevelInfo
	if cCtx.Bool("verbose") {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(cCtx.App.ErrWriter, &slog.HandlerOptions{Level: level}))

	cfg, err := config(cCtx, logger)
	if err != nil {
		return cli.Exit("devicesim: "+err.Error(), 2)
	}
	reg := &simulator.StoreRegistrar{StateDir: cfg.stateDir, NoRegister: cCtx.Bool("no-register"), Logger: logger}
	if !reg.NoRegister {
		url := cCtx.String("database-url")
		if url == "" {
			return cli.Exit("devicesim: give --database-url (or DATABASE_URL) to register the devices, or --no-register", 2)
		}
		st, err := store.Open(ctx, url)
		if err != nil {
			return err
		}
		defer st.Close()
		reg.Store = st
	}
	cfg.Registrar = reg

	fleet, err := simulator.New(cfg.Config)
	if err != nil {
		return cli.Exit("devicesim: "+err.Error(), 2)
	}
	if err := fleet.Start(ctx); err != nil {
		return err
	}
	defer fleet.Stop()

	out := cCtx.App.Writer
	interval := cCtx.Duration("summary-interval")
	var tick <-chan time.Time
	if interval > 0 {
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		tick = ticker.C
	}
	for {
		select {
		case <-ctx.Done():
			fleet.Stop()
			fmt.Fprintln(out, "devicesim: stopped:", fleet.Stats())
			return nil
		case <-tick:
			fmt.Fprintln(out, "devicesim:", fleet.Stats())
		}
	}
}

// fleetConfig is the simulator's configuration with the state directory.
type fleetConfig struct {
	simulator.Config
	stateDir string
}

// config turns the flags into the fleet's configuration.
func config(cCtx *cli.Context, logger *slog.Logger) (fleetConfig, error) {
	status, err := parseStatus(cCtx.String("status"))
	if err != nil {
		return fleetConfig{}, err
	}
	cfg := fleetConfig{Config: simulator.Config{
		Protocol:          cCtx.String("protocol"),
		RequireSignatures: cCtx.Bool("require-signatures"),
		BrokerURL:         cCtx.String("broker"),
		Initial:           status,
		Faults:            simulator.Faults{Seed: cCtx.Int64("fault-seed")},
		Timing: simulator.Timing{
			ReportInterval: cCtx.Duration("report-interval"),
			InstallDelay:   cCtx.Duration("install-delay"),
			RebootDelay:    cCtx.Duration("reboot-delay"),
			SlowRate:       cCtx.Int64("slow-rate"),
			DownloadTime:   cCtx.Duration("download-time"),
			OfflineAfter:   cCtx.Duration("offline-after"),
			OfflineFor:     cCtx.Duration("offline-for"),
			ConnectTimeout: cCtx.Duration("connect-timeout"),
		},
		Logger: logger,
	}}
	if ids := splitList(cCtx.StringSlice("device-ids")); len(ids) > 0 {
		if cCtx.IsSet("devices") || cCtx.IsSet("prefix") {
			return fleetConfig{}, fmt.Errorf("give --device-ids or --devices/--prefix, not both")
		}
		cfg.DeviceIDs = ids
	} else {
		cfg.Prefix, cfg.Count = cCtx.String("prefix"), cCtx.Int("devices")
		if cfg.Count <= 0 {
			return fleetConfig{}, fmt.Errorf("--devices must be at least 1, not %d", cfg.Count)
		}
	}
	for _, f := range faults {
		*f.field(&cfg.Faults) = simulator.Fault{
			Rate:     cCtx.Float64(f.flag),
			Devices:  splitList(cCtx.StringSlice(f.flag + "-devices")),
			Attempts: attempts(cCtx, f),
		}
	}
	if dir := cCtx.String("trusted-keys"); dir != "" {
		if cfg.Protocol == simulator.ProtocolV1 {
			// OTAFLOW_TRUSTED_KEYS may be set for the worker in the same environment.
			logger.Info("protocol 1 devices verify no signatures; ignoring the trusted keys", "dir", dir)
		} else {
			keys, err := pkgsig.LoadTrustedKeys(dir)
			if err != nil {
				return fleetConfig{}, err
			}
			cfg.TrustedKeys = keys
		}
	}
	cfg.stateDir = cCtx.String("state-dir")
	if cfg.stateDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return fleetConfig{}, fmt.Errorf("no --state-dir and no user cache directory: %w", err)
		}
		cfg.stateDir = filepath.Join(dir, "otaflow", "devicesim")
	}
	if cCtx.Bool("keep-versions") {
		cfg.StateDir = cfg.stateDir
	}
	return cfg, nil
}

func attempts(cCtx *cli.Context, f fault) int {
	if f.once {
		return 0
	}
	return cCtx.Int(f.flag + "-attempts")
}

// parseStatus parses KEY=VERSION[,KEY=VERSION...].
func parseStatus(s string) (protocol.Status, error) {
	st := protocol.Status{}
	for _, pair := range splitList([]string{s}) {
		k, v, ok := strings.Cut(pair, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--status %q: want KEY=VERSION[,KEY=VERSION...], e.g. firmware_ver=1.0", s)
		}
		if _, dup := st[k]; dup {
			return nil, fmt.Errorf("--status %q: %s given twice", s, k)
		}
		st[k] = v
	}
	if len(st) == 0 {
		return nil, fmt.Errorf("--status is empty: give at least one KEY=VERSION, e.g. firmware_ver=1.0")
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("--status: %w", err)
	}
	return st, nil
}

// splitList splits comma-separated values and drops empty ones.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}
