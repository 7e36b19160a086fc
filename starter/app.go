package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/errtext"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/temporalconn"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
)

// Exit codes of starter.
const (
	exitFailure        = 1   // the command failed, or the upgrade it waited for did not succeed
	exitUsage          = 2   // bad flags or bad input: nothing was done
	exitAlreadyRunning = 3   // the device already has an upgrade running; the rollout already runs or has a schedule
	exitInterrupted    = 130 // interrupted while waiting; the upgrade goes on
)

// Global flag names.
const (
	flagTemporalAddress   = "temporal-address"
	flagTemporalNamespace = "temporal-namespace"
	flagDatabaseURL       = "database-url"
	flagUIURL             = "ui-url"
)

// run runs starter with args (args[0] is the program name) and returns the exit code. Errors
// are printed on errOut; the commands' output goes to out.
func run(ctx context.Context, args []string, out, errOut io.Writer) int {
	err := newApp(out, errOut).RunContext(ctx, args)
	if err == nil {
		return 0
	}
	// In plain words: an error that crossed Temporal (a workflow's, an activity's) without
	// the SDK's wrapping.
	if msg := errtext.Plain(err); msg != "" {
		fmt.Fprintf(errOut, "starter: %s\n", msg)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return exitFailure
}

// appEnv is what the commands share: the output streams and the connections, opened lazily by
// the commands that need them and closed when the command ends.
type appEnv struct {
	out, errOut io.Writer
	temporal    client.Client
	store       *store.Store
	admin       *brokeraccounts.Admin // the production broker's administration, when set
	noAdmin     bool                  // no broker administrator is set (and the user was told)
}

// newApp builds the starter command line, writing output to out and messages to errOut. Its
// errors are returned, never turned into os.Exit, so that tests can run it in-process.
func newApp(out, errOut io.Writer) *cli.App {
	e := &appEnv{out: out, errOut: errOut}
	app := &cli.App{
		Name:     "starter",
		HelpName: "starter",
		Usage:    "start and follow OTAflow device upgrades and fleet rollouts, manage devices, inspect packages",
		Description: "Global flags go before the command and are also read from the environment.\n" +
			"Exit codes: 0 success, 1 failure (or the upgrade or rollout did not succeed), 2 bad usage or\n" +
			"input, 3 the device already has an upgrade running (or the rollout already runs or has a\n" +
			"schedule), 130 interrupted while waiting.",
		Writer:                    out,
		ErrWriter:                 errOut,
		HideVersion:               true,
		DisableSliceFlagSeparator: true,
		ExitErrHandler:            func(*cli.Context, error) {},
		OnUsageError:              onUsageError,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: flagTemporalAddress, Value: "localhost:7233", EnvVars: []string{"TEMPORAL_ADDRESS"},
				Usage: "Temporal frontend `HOST:PORT`"},
			&cli.StringFlag{Name: flagTemporalNamespace, Value: "default", EnvVars: []string{"TEMPORAL_NAMESPACE"},
				Usage: "Temporal `NAMESPACE`"},
			&cli.StringFlag{Name: flagDatabaseURL, EnvVars: []string{"DATABASE_URL"},
				Usage: "PostgreSQL `URL`, e.g. postgres://otaflow@localhost:5432/otaflow (commands that read the registry); " +
					"TLS with ?sslmode=verify-full&sslrootcert=FILE[&sslcert=FILE&sslkey=FILE]"},
			&cli.StringFlag{Name: flagUIURL, Value: "http://localhost:8233", EnvVars: []string{"TEMPORAL_UI_URL"},
				Usage: "base `URL` of the Temporal Web UI, for the links starter prints"},
		}, append(tlsflags.TemporalFlags(), brokerFlags()...)...),
		Commands: []*cli.Command{
			upgradeCommand(e),
			statusCommand(e),
			cancelCommand(e),
			devicesCommand(e),
			packageCommand(e),
			rolloutCommand(e),
			setupCommand(e),
			retentionCommand(e),
		},
		Action: groupAction,
		After: func(*cli.Context) error {
			e.close()
			return nil
		},
	}
	setUsageErrors(app.Commands)
	return app
}

// setUsageErrors makes every command report flag errors as usage errors (exit code 2).
func setUsageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = onUsageError
		setUsageErrors(c.Subcommands)
	}
}

func onUsageError(cCtx *cli.Context, err error, _ bool) error {
	return usageErrorf(cCtx, "%v", err)
}

// usageErrorf is a usage error (exit code 2) with a pointer to the command's help.
func usageErrorf(cCtx *cli.Context, format string, args ...any) error {
	name := "starter"
	if cCtx != nil && cCtx.Command != nil && cCtx.Command.HelpName != "" {
		name = cCtx.Command.HelpName
	}
	return cli.Exit(fmt.Sprintf(format, args...)+fmt.Sprintf("\nRun '%s --help' for usage.", name), exitUsage)
}

// groupAction is the action of the app and of command groups: help without arguments, a usage
// error for an unknown subcommand.
func groupAction(cCtx *cli.Context) error {
	if cCtx.Args().Present() {
		return usageErrorf(cCtx, "unknown command %q", cCtx.Args().First())
	}
	if cCtx.Command != nil && cCtx.Command.Name != "" && cCtx.Command.Name != cCtx.App.Name {
		return cli.ShowSubcommandHelp(cCtx)
	}
	return cli.ShowAppHelp(cCtx)
}

// requireFlags is a Before hook: it refuses positional arguments and missing required flags
// with a usage error, before anything is dialled.
func requireFlags(names ...string) cli.BeforeFunc {
	return func(cCtx *cli.Context) error {
		if cCtx.Args().Present() {
			return usageErrorf(cCtx, "unexpected argument %q (every value is given with a flag)", cCtx.Args().First())
		}
		var missing []string
		for _, n := range names {
			if cCtx.IsSet(flagSidecar) && slices.Contains(sidecarFields, n) {
				continue // the sidecar gives it
			}
			if !cCtx.IsSet(n) {
				missing = append(missing, "--"+n)
			}
		}
		if len(missing) > 0 {
			return usageErrorf(cCtx, "missing required flag(s) %s", strings.Join(missing, ", "))
		}
		return nil
	}
}

// deviceFlag reads and checks --device.
func deviceFlag(cCtx *cli.Context) (string, error) {
	id := cCtx.String("device")
	if err := protocol.ValidateDeviceID(id); err != nil {
		return "", usageErrorf(cCtx, "--device: %v", err)
	}
	return id, nil
}

// temporalClient dials Temporal on first use.
func (e *appEnv) temporalClient(cCtx *cli.Context) (client.Client, error) {
	if e.temporal != nil {
		return e.temporal, nil
	}
	tlsCfg, err := tlsflags.Temporal(cCtx)
	if err != nil {
		return nil, usageErrorf(cCtx, "%v", err)
	}
	c, err := temporalconn.Dial(cCtx.Context, temporalconn.Options{
		Address:   cCtx.String(flagTemporalAddress),
		Namespace: cCtx.String(flagTemporalNamespace),
		TLS:       tlsCfg,
	})
	if err != nil {
		return nil, err
	}
	e.temporal = c
	return c, nil
}

// openStore connects to PostgreSQL on first use.
func (e *appEnv) openStore(cCtx *cli.Context) (*store.Store, error) {
	if e.store != nil {
		return e.store, nil
	}
	dbURL := cCtx.String(flagDatabaseURL)
	if dbURL == "" {
		return nil, usageErrorf(cCtx, "this command reads the device registry: set --%s (before the command) or DATABASE_URL", flagDatabaseURL)
	}
	st, err := store.Open(cCtx.Context, dbURL)
	if err != nil {
		return nil, err
	}
	e.store = st
	return st, nil
}

func (e *appEnv) close() {
	if e.temporal != nil {
		e.temporal.Close()
		e.temporal = nil
	}
	if e.store != nil {
		e.store.Close()
		e.store = nil
	}
	if e.admin != nil {
		e.admin.Close()
		e.admin = nil
	}
}

// webUILink is the Web UI page of a workflow.
func webUILink(cCtx *cli.Context, workflowID string) string {
	base := strings.TrimRight(cCtx.String(flagUIURL), "/")
	ns := cCtx.String(flagTemporalNamespace)
	if ns == "" {
		ns = "default"
	}
	return base + "/namespaces/" + url.PathEscape(ns) + "/workflows/" + url.PathEscape(workflowID)
}

// writeJSON writes v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}
