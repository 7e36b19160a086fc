package localstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/setup"
)

// TemporalCLIModule is the Go package, at the version the project uses, that `go install`
// builds the Temporal CLI (and its development server) from.
const TemporalCLIModule = "github.com/temporalio/cli/cmd/temporal@v1.5.1"

// EnsureTemporalCLI returns the path of the Temporal CLI: `temporal` on PATH, else in the Go
// bin directory (GOBIN, or the first GOPATH entry's bin), else one it builds there with
// `go install` from the Go module proxy (2-3 minutes, once). logf, which may be nil, is told
// about a build.
func EnsureTemporalCLI(ctx context.Context, logf func(format string, args ...any)) (string, error) {
	if path, err := exec.LookPath("temporal"); err == nil {
		return path, nil
	}
	goBin, err := goBinDir(ctx)
	if err != nil {
		return "", fmt.Errorf("find the Temporal CLI: it is not on PATH, and %w", err)
	}
	return ensureGoProgram(ctx, goBin, "temporal", "the Temporal CLI", TemporalCLIModule, "2-3 minutes", logf)
}

// goBinDir returns the directory `go install` puts programs in.
func goBinDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOBIN", "GOPATH").Output()
	if err != nil {
		return "", fmt.Errorf("`go env GOBIN GOPATH` failed (is Go installed?): %w", err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) == 2 && lines[0] != "" {
		return lines[0], nil
	}
	if len(lines) == 2 && lines[1] != "" {
		return filepath.Join(filepath.SplitList(lines[1])[0], "bin"), nil
	}
	return "", fmt.Errorf("`go env GOBIN GOPATH` printed no directory: %q", out)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// TemporalOptions configures a Temporal development server.
type TemporalOptions struct {
	// CLIPath is the Temporal CLI executable; "" means `temporal` on PATH (see EnsureTemporalCLI).
	CLIPath string
	// DBFile is the SQLite file that keeps the server's state across restarts; "" keeps it in
	// memory, lost when the server stops.
	DBFile string
	// Port is the gRPC port on 127.0.0.1; 0 picks a free one.
	Port int
	// EnableUI serves the Temporal Web UI on UIPort (0 picks a free one).
	EnableUI bool
	UIPort   int
	// Namespace is created at start and used by Client; "" means "default".
	Namespace string
	// LogLevel is the server's log level: debug, info, warn (the default) or error.
	LogLevel string
	// Stdout and Stderr receive the server's output; nil discards it (its last lines still
	// appear in startup errors).
	Stdout, Stderr io.Writer
	// Logger is the logger of Client; nil logs warnings and errors to standard error.
	Logger log.Logger
	// StartTimeout bounds the wait for the server to answer; 0 means one minute.
	StartTimeout time.Duration
}

// Temporal is a running Temporal development server (`temporal server start-dev`) started by
// StartTemporal.
type Temporal struct {
	proc      *process
	client    client.Client
	address   string
	uiURL     string
	namespace string
	stopOnce  sync.Once
	stopErr   error
}

// StartTemporal starts a Temporal development server on 127.0.0.1 and waits until it answers,
// with namespace opts.Namespace and every search attribute in ota.SearchAttributeNames
// registered as Keyword. Restarted on the same DBFile, it keeps its workflows. On Linux the
// server gets SIGTERM (a clean stop) if the calling process dies without stopping it.
//
// StartTemporal runs the CLI itself rather than through testsuite.StartDevServer, which leaves
// the server running when it fails to answer and cannot see it exit, so that a start that fails
// stops at once, says why (with the server's last output) and leaves nothing behind.
func StartTemporal(ctx context.Context, opts TemporalOptions) (*Temporal, error) {
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = log.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	cli := opts.CLIPath
	if cli == "" {
		p, err := exec.LookPath("temporal")
		if err != nil {
			return nil, fmt.Errorf("the Temporal CLI is not on PATH: build it with `go install %s`, or pass its path: %w", TemporalCLIModule, err)
		}
		cli = p
	} else if !isExecutable(cli) {
		return nil, fmt.Errorf("the Temporal CLI %s is missing or not executable (build it with `go install %s`)", cli, TemporalCLIModule)
	}
	if opts.DBFile != "" {
		abs, err := filepath.Abs(opts.DBFile)
		if err != nil {
			return nil, fmt.Errorf("Temporal database file %s: %w", opts.DBFile, err)
		}
		opts.DBFile = abs
		if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("the directory of the Temporal database file %s does not exist", abs)
		}
	}

	port, err := pickPort(opts.Port, "Temporal gRPC", "--temporal-port")
	if err != nil {
		return nil, err
	}
	uiPort := 0
	if opts.EnableUI {
		if opts.UIPort != 0 && opts.UIPort == port {
			return nil, fmt.Errorf("the Temporal UI port and gRPC port are both %d: choose two different ports", port)
		}
		if uiPort, err = pickPort(opts.UIPort, "Temporal Web UI", "--temporal-ui-port"); err != nil {
			return nil, err
		}
	}

	args := temporalArgs(opts, port, uiPort)
	proc, err := startProcess("Temporal server", exec.Command(cli, args...), temporalOutput(opts), syscall.SIGTERM, nil)
	if err != nil {
		return nil, err
	}
	t := &Temporal{proc: proc, address: net.JoinHostPort(localhost, strconv.Itoa(port)), namespace: opts.Namespace}
	if uiPort != 0 {
		t.uiURL = "http://" + net.JoinHostPort(localhost, strconv.Itoa(uiPort))
	}
	if err := t.waitReady(ctx, opts); err != nil {
		_ = t.Stop()
		return nil, err
	}
	regCtx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	if err := RegisterSearchAttributes(regCtx, t.client, t.namespace); err != nil {
		_ = t.Stop()
		return nil, err
	}
	return t, nil
}

// temporalArgs returns the command line of `temporal server start-dev`.
func temporalArgs(opts TemporalOptions, port, uiPort int) []string {
	args := []string{
		"server", "start-dev",
		"--ip", localhost, "--port", strconv.Itoa(port),
		"--namespace", opts.Namespace,
		"--log-level", opts.LogLevel,
		// As testsuite.StartDevServer does: the dev server need not phone home.
		"--dynamic-config-value", "frontend.enableServerVersionCheck=false",
		// WAL journal and NORMAL sync make the SQLite store about 2.5 times faster. The dev
		// server accepts them in memory too, where SQLite ignores them.
		"--sqlite-pragma", "journal_mode=WAL", "--sqlite-pragma", "synchronous=NORMAL",
	}
	if uiPort == 0 {
		args = append(args, "--headless")
	} else {
		args = append(args, "--ui-port", strconv.Itoa(uiPort))
	}
	if opts.DBFile != "" {
		args = append(args, "--db-filename", opts.DBFile)
	}
	// The dev server registers these only in a namespace it creates; RegisterSearchAttributes
	// adds them to one a database file already holds.
	for _, name := range ota.SearchAttributeNames {
		args = append(args, "--search-attribute", name+"=Keyword")
	}
	return args
}

func temporalOutput(opts TemporalOptions) io.Writer {
	switch {
	case opts.Stdout != nil && opts.Stderr != nil && opts.Stdout != opts.Stderr:
		return io.MultiWriter(opts.Stdout, opts.Stderr)
	case opts.Stdout != nil:
		return opts.Stdout
	default:
		return opts.Stderr
	}
}

// waitReady dials the server until it answers, it exits, or the start timeout passes.
func (t *Temporal) waitReady(ctx context.Context, opts TemporalOptions) error {
	c, err := dialStarting(ctx, t.proc, client.Options{HostPort: t.address, Namespace: t.namespace, Logger: opts.Logger}, opts.StartTimeout)
	t.client = c
	return err
}

// dialStarting dials a Temporal server that proc is starting until it answers, proc exits, or
// timeout passes; the error says which, with the server's last output.
func dialStarting(ctx context.Context, proc *process, opts client.Options, timeout time.Duration) (client.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		dialCtx, cancelDial := context.WithTimeout(ctx, 2*time.Second)
		c, err := client.DialContext(dialCtx, opts)
		cancelDial()
		if err == nil {
			return c, nil
		}
		lastErr = err
		select {
		case <-proc.done:
			return nil, proc.exitError()
		case <-ctx.Done():
			return nil, fmt.Errorf("Temporal server at %s did not answer within %s (%w); last error: %v; its last output:\n%s",
				opts.HostPort, timeout, ctx.Err(), lastErr, indent(proc.tail.String()))
		case <-tick.C:
		}
	}
}

// RegisterSearchAttributes registers, as Keyword, every search attribute in
// ota.SearchAttributeNames that namespace lacks on the server c is connected to (see
// setup.RegisterSearchAttributes).
func RegisterSearchAttributes(ctx context.Context, c client.Client, namespace string) error {
	_, err := setup.RegisterSearchAttributes(ctx, c, namespace)
	return err
}

// Address is the server's gRPC address, host:port.
func (t *Temporal) Address() string { return t.address }

// Namespace is the namespace Client uses.
func (t *Temporal) Namespace() string { return t.namespace }

// UIURL is the Web UI's URL, or "" when the UI is off.
func (t *Temporal) UIURL() string { return t.uiURL }

// Client is a client connected to the server and its namespace. Stop closes it.
func (t *Temporal) Client() client.Client { return t.client }

// Done is closed when the server process has exited, whether Stop ended it or not.
func (t *Temporal) Done() <-chan struct{} { return t.proc.done }

// Stop closes the client and stops the server (SIGTERM, then SIGKILL after 20 seconds). It
// is safe to call more than once.
func (t *Temporal) Stop() error {
	t.stopOnce.Do(func() { t.stopErr = stopTemporal(t.client, t.proc, 20*time.Second) })
	return t.stopErr
}

// stopTemporal closes c (when not nil) and stops the server proc: SIGTERM, then SIGKILL after
// grace.
func stopTemporal(c client.Client, proc *process, grace time.Duration) error {
	if c != nil {
		c.Close()
	}
	if err := proc.stop(syscall.SIGTERM, grace); err != nil {
		return err
	}
	// Exiting with a status after SIGTERM is the normal end of the server.
	var exit *exec.ExitError
	if err := proc.waitErr; err != nil && !errors.As(err, &exit) {
		return fmt.Errorf("stop Temporal server: %w", err)
	}
	return nil
}
