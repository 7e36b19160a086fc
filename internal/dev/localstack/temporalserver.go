package localstack

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
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

	temporalconfig "github.com/otaflow/otaflow/deploy/temporal"
)

// TemporalServerVersion is the version of go.temporal.io/server that docker-compose.yml pins
// (temporalio/server) and that the native topology builds.
const TemporalServerVersion = "v1.29.1"

// Go packages, at TemporalServerVersion, that `go install` builds the server and its SQL tool
// (temporal-sql-tool) from. Their programs are named server and sql.
const (
	TemporalServerModule  = "go.temporal.io/server/cmd/server@" + TemporalServerVersion
	TemporalSQLToolModule = "go.temporal.io/server/cmd/tools/sql@" + TemporalServerVersion
)

// temporalServerModulePath is the module holding the schemas.
const temporalServerModulePath = "go.temporal.io/server"

// TemporalServerBinaries are what runs a real Temporal server on PostgreSQL.
type TemporalServerBinaries struct {
	// Server is the server program (go.temporal.io/server/cmd/server).
	Server string
	// SQLTool is its SQL tool (go.temporal.io/server/cmd/tools/sql, temporal-sql-tool).
	SQLTool string
	// SchemaDir is the module's schema/postgresql/v12 directory, with the temporal and
	// visibility schemas.
	SchemaDir string
}

// EnsureTemporalServer returns the Temporal server and SQL tool in the Go bin directory
// (GOBIN, or the first GOPATH entry's bin), building the missing ones there with `go install`
// from the Go module proxy (about 6 minutes once), and the schema directory of the module
// cache. logf, which may be nil, is told about a build.
func EnsureTemporalServer(ctx context.Context, logf func(format string, args ...any)) (TemporalServerBinaries, error) {
	var b TemporalServerBinaries
	goBin, err := goBinDir(ctx)
	if err != nil {
		return b, fmt.Errorf("find the Temporal server: %w", err)
	}
	if b.Server, err = ensureGoProgram(ctx, goBin, "server", "the Temporal server", TemporalServerModule, "about 6 minutes", logf); err != nil {
		return b, err
	}
	if b.SQLTool, err = ensureGoProgram(ctx, goBin, "sql", "the Temporal SQL tool", TemporalSQLToolModule, "about 2 minutes", logf); err != nil {
		return b, err
	}
	if b.SchemaDir, err = TemporalSchemaDir(ctx); err != nil {
		return b, err
	}
	return b, nil
}

// ensureGoProgram returns goBin/name, building it with `go install module` when it is missing.
func ensureGoProgram(ctx context.Context, goBin, name, what, module, duration string, logf func(string, ...any)) (string, error) {
	path := filepath.Join(goBin, name)
	if isExecutable(path) {
		return path, nil
	}
	if logf != nil {
		logf("building %s from the Go module proxy, this takes %s once (go install %s)", what, duration, module)
	}
	cmd := exec.CommandContext(ctx, "go", "install", module)
	// Outside any module, so the project's go.mod plays no part.
	cmd.Dir = os.TempDir()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s with `go install %s`: %w\n%s", what, module, err, indent(string(bytes.TrimSpace(out))))
	}
	if !isExecutable(path) {
		return "", fmt.Errorf("`go install %s` succeeded but %s is missing", module, path)
	}
	return path, nil
}

// TemporalSchemaDir returns the PostgreSQL schema directory (schema/postgresql/v12) of
// go.temporal.io/server at TemporalServerVersion in the module cache, downloading the module
// when it is not there.
func TemporalSchemaDir(ctx context.Context) (string, error) {
	mod := temporalServerModulePath + "@" + TemporalServerVersion
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	cmd.Dir = os.TempDir()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &info); jerr != nil && err == nil {
		err = jerr
	}
	if err != nil || info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("find the Temporal schemas with `go mod download -json %s`: %v %s\n%s", mod, err, info.Error, indent(strings.TrimSpace(stderr.String())))
	}
	dir := filepath.Join(info.Dir, "schema", "postgresql", "v12")
	if fi, err := os.Stat(filepath.Join(dir, "temporal", "versioned")); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("the module %s has no PostgreSQL schema in %s", mod, dir)
	}
	return dir, nil
}

// TemporalServerPorts are the ports of a Temporal server's four services, on 127.0.0.1. A
// zero port is picked free.
type TemporalServerPorts struct {
	// FrontendGRPC is where clients connect (TEMPORAL_ADDRESS); FrontendHTTP serves the
	// HTTP API.
	FrontendGRPC, FrontendHTTP, FrontendMembership int
	HistoryGRPC, HistoryMembership                 int
	MatchingGRPC, MatchingMembership               int
	WorkerGRPC, WorkerMembership                   int
}

// TemporalServerOptions configures a Temporal server on PostgreSQL.
type TemporalServerOptions struct {
	// Binaries are the server, its SQL tool and the schemas; the zero value means those
	// EnsureTemporalServer finds or builds.
	Binaries TemporalServerBinaries
	// Dir is the server's root directory: the configuration files (deploy/temporal) are
	// written to Dir/config. Required.
	Dir string
	// PostgresURL is a URL of the PostgreSQL server, as a role that may create databases
	// (its database is ignored): the server's databases are created there. Required.
	PostgresURL string
	// DatabaseName and VisibilityDatabaseName default to temporal and temporal_visibility.
	DatabaseName, VisibilityDatabaseName string
	// Ports are the services' ports; zero ones are picked free (Ports tells which).
	Ports TemporalServerPorts
	// MetricsAddress, when set (host:port), serves Prometheus metrics there.
	MetricsAddress string
	// PProfPort, when not 0, serves the server's Go profiles (net/http/pprof, /debug/pprof/)
	// on 127.0.0.1:PProfPort, and nowhere else.
	PProfPort int
	// Namespace is the namespace of Client; "" means "default". It is not created: that is
	// the setup step's work (internal/setup).
	Namespace string
	// LogLevel is the server's log level: debug, info, warn (the default) or error.
	LogLevel string
	// Log receives the output of the server and of the schema job; nil discards it (its last
	// lines still appear in startup errors).
	Log io.Writer
	// Logger is the logger of Client; nil logs warnings and errors to standard error.
	Logger log.Logger
	// StartTimeout bounds the wait for the server to answer; 0 means two minutes.
	StartTimeout time.Duration
}

// TemporalServer is a running Temporal server (go.temporal.io/server) on PostgreSQL, started by
// StartTemporalServer from the configuration docker-compose.yml mounts.
type TemporalServer struct {
	proc      *process
	client    client.Client
	ports     TemporalServerPorts
	address   string
	namespace string
	dir       string
	stopOnce  sync.Once
	stopErr   error
}

// StartTemporalServer sets the server's databases up (SetupTemporalSchema: created if missing,
// schemas brought up to date), starts the server on 127.0.0.1 with deploy/temporal's
// configuration and waits until its frontend answers. Restarted on the same databases (with
// Ports from the previous server's Ports), it keeps its workflows. On Linux the server gets
// SIGTERM if the calling process dies without stopping it.
func StartTemporalServer(ctx context.Context, opts TemporalServerOptions) (*TemporalServer, error) {
	if opts.Dir == "" {
		return nil, errors.New("Temporal server: no root directory (Dir)")
	}
	if opts.PostgresURL == "" {
		return nil, errors.New("Temporal server: no PostgreSQL server (PostgresURL)")
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = log.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("Temporal server directory %s: %w", opts.Dir, err)
	}
	if opts.Binaries == (TemporalServerBinaries{}) {
		if opts.Binaries, err = EnsureTemporalServer(ctx, nil); err != nil {
			return nil, err
		}
	}
	for _, p := range []struct{ what, path string }{{"Temporal server", opts.Binaries.Server}, {"Temporal SQL tool", opts.Binaries.SQLTool}} {
		if !isExecutable(p.path) {
			return nil, fmt.Errorf("the %s %q is missing or not executable (build it with `go install`: see EnsureTemporalServer)", p.what, p.path)
		}
	}
	ports, err := pickServerPorts(opts.Ports)
	if err != nil {
		return nil, err
	}
	configDir, err := WriteTemporalConfig(filepath.Join(dir, "config"))
	if err != nil {
		return nil, err
	}
	env, err := temporalServerEnv(opts, configDir, ports)
	if err != nil {
		return nil, err
	}
	if err := runSchemaScript(ctx, configDir, env, opts.Log); err != nil {
		return nil, err
	}

	cmd := exec.Command(opts.Binaries.Server, "--root", dir, "--config", "config",
		"--env", temporalconfig.Environment, "--allow-no-auth", "start")
	cmd.Dir = dir
	cmd.Env = env
	proc, err := startProcess("Temporal server", cmd, opts.Log, syscall.SIGTERM, nil)
	if err != nil {
		return nil, err
	}
	t := &TemporalServer{proc: proc, ports: ports, namespace: opts.Namespace, dir: dir,
		address: net.JoinHostPort(localhost, strconv.Itoa(ports.FrontendGRPC))}
	if err := t.waitReady(ctx, opts); err != nil {
		_ = t.Stop()
		return nil, err
	}
	return t, nil
}

// WriteTemporalConfig writes deploy/temporal's files (the server configuration, its dynamic
// configuration and the schema script) to dir, creating it, and returns dir as an absolute
// path.
func WriteTemporalConfig(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("Temporal configuration directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create the Temporal configuration directory: %w", err)
	}
	for _, name := range []string{temporalconfig.ConfigFile, temporalconfig.DynamicConfigFile, temporalconfig.SchemaScript} {
		data, err := fs.ReadFile(temporalconfig.Files, name)
		if err != nil {
			return "", fmt.Errorf("read embedded %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return "", fmt.Errorf("write the Temporal configuration: %w", err)
		}
	}
	return dir, nil
}

// maxMembershipPort is the highest membership port a Temporal server on SQL can use: the
// cluster_membership table keeps it as a SMALLINT, and a higher one stops the server at start
// ("value ... is out of range for type smallint").
const maxMembershipPort = 32767

// minMembershipPort is the lowest membership port picked free.
const minMembershipPort = 20000

// pickServerPorts returns ports with every zero port replaced by a free one, after checking
// that the given ones are free. Membership ports are picked at or below maxMembershipPort,
// outside the range the system hands out for bind(:0).
func pickServerPorts(p TemporalServerPorts) (TemporalServerPorts, error) {
	type field struct {
		port       *int
		what       string
		flag       string
		membership bool
	}
	fields := []field{
		{&p.FrontendGRPC, "Temporal frontend gRPC", "--temporal-port", false},
		{&p.FrontendHTTP, "Temporal frontend HTTP", "TemporalServerPorts.FrontendHTTP", false},
		{&p.FrontendMembership, "Temporal frontend membership", "TemporalServerPorts.FrontendMembership", true},
		{&p.HistoryGRPC, "Temporal history gRPC", "TemporalServerPorts.HistoryGRPC", false},
		{&p.HistoryMembership, "Temporal history membership", "TemporalServerPorts.HistoryMembership", true},
		{&p.MatchingGRPC, "Temporal matching gRPC", "TemporalServerPorts.MatchingGRPC", false},
		{&p.MatchingMembership, "Temporal matching membership", "TemporalServerPorts.MatchingMembership", true},
		{&p.WorkerGRPC, "Temporal worker gRPC", "TemporalServerPorts.WorkerGRPC", false},
		{&p.WorkerMembership, "Temporal worker membership", "TemporalServerPorts.WorkerMembership", true},
	}
	taken := map[int]string{}
	for _, f := range fields {
		if *f.port == 0 {
			continue
		}
		if other, dup := taken[*f.port]; dup {
			return p, fmt.Errorf("the %s and %s ports are both %d: choose different ports", other, f.what, *f.port)
		}
		if f.membership && *f.port > maxMembershipPort {
			return p, fmt.Errorf("the %s port %d is above %d, which Temporal's cluster_membership table cannot hold: choose a lower port (%s)",
				f.what, *f.port, maxMembershipPort, f.flag)
		}
		taken[*f.port] = f.what
	}
	for _, f := range fields {
		var err error
		switch {
		case f.membership && *f.port == 0:
			*f.port, err = FreePortRun(minMembershipPort, maxMembershipPort+1, 1, taken)
			if err != nil {
				err = fmt.Errorf("%s port: %w", f.what, err)
			}
		default:
			*f.port, err = pickPort(*f.port, f.what, f.flag)
		}
		if err != nil {
			return p, err
		}
		taken[*f.port] = f.what
	}
	return p, nil
}

// templateVars are the environment variables deploy/temporal/production.yaml and
// setup-schema.sh read; the server gets none of them from the caller's environment.
var templateVars = []string{
	"POSTGRES_SEEDS", "DB_PORT", "POSTGRES_USER", "POSTGRES_PWD", "DBNAME", "VISIBILITY_DBNAME",
	"BIND_ON_IP", "FRONTEND_GRPC_PORT", "FRONTEND_HTTP_PORT", "FRONTEND_MEMBERSHIP_PORT",
	"HISTORY_GRPC_PORT", "HISTORY_MEMBERSHIP_PORT", "MATCHING_GRPC_PORT", "MATCHING_MEMBERSHIP_PORT",
	"WORKER_GRPC_PORT", "WORKER_MEMBERSHIP_PORT", "PROMETHEUS_ENDPOINT", "PPROF_PORT", "LOG_LEVEL", "DYNAMIC_CONFIG_FILE_PATH",
	"TEMPORAL_SQL_TOOL", "TEMPORAL_SCHEMA_DIR",
}

// temporalServerEnv is the environment of the server and of the schema script: the caller's,
// without the variables the configuration reads or the server's own TEMPORAL_* ones, and with
// those variables set from opts.
func temporalServerEnv(opts TemporalServerOptions, configDir string, ports TemporalServerPorts) ([]string, error) {
	u, err := url.Parse(opts.PostgresURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("Temporal server: PostgresURL is not a postgres:// URL with a host")
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5432"
	}
	password, _ := u.User.Password()
	set := map[string]string{
		"POSTGRES_SEEDS": host, "DB_PORT": port, "POSTGRES_USER": u.User.Username(), "POSTGRES_PWD": password,
		"DBNAME":            cmp.Or(opts.DatabaseName, "temporal"),
		"VISIBILITY_DBNAME": cmp.Or(opts.VisibilityDatabaseName, "temporal_visibility"),
		"BIND_ON_IP":        localhost,
		"LOG_LEVEL":         opts.LogLevel,
		// Absolute: the server resolves it against its working directory.
		"DYNAMIC_CONFIG_FILE_PATH": filepath.Join(configDir, temporalconfig.DynamicConfigFile),
		"TEMPORAL_SQL_TOOL":        opts.Binaries.SQLTool,
		"TEMPORAL_SCHEMA_DIR":      opts.Binaries.SchemaDir,
	}
	for name, port := range map[string]int{
		"FRONTEND_GRPC_PORT": ports.FrontendGRPC, "FRONTEND_HTTP_PORT": ports.FrontendHTTP, "FRONTEND_MEMBERSHIP_PORT": ports.FrontendMembership,
		"HISTORY_GRPC_PORT": ports.HistoryGRPC, "HISTORY_MEMBERSHIP_PORT": ports.HistoryMembership,
		"MATCHING_GRPC_PORT": ports.MatchingGRPC, "MATCHING_MEMBERSHIP_PORT": ports.MatchingMembership,
		"WORKER_GRPC_PORT": ports.WorkerGRPC, "WORKER_MEMBERSHIP_PORT": ports.WorkerMembership,
	} {
		set[name] = strconv.Itoa(port)
	}
	if opts.MetricsAddress != "" {
		set["PROMETHEUS_ENDPOINT"] = opts.MetricsAddress
	}
	if opts.PProfPort != 0 {
		set["PPROF_PORT"] = strconv.Itoa(opts.PProfPort)
	}
	drop := map[string]bool{}
	for _, k := range templateVars {
		drop[k] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		// TEMPORAL_ROOT, TEMPORAL_ENVIRONMENT... would override the command line.
		if drop[k] || strings.HasPrefix(k, "TEMPORAL_") || strings.HasPrefix(k, "SQL_") {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	return env, nil
}

// SetupTemporalSchema runs deploy/temporal/setup-schema.sh, as docker-compose.yml's schema job
// does: it creates the Temporal server's two databases on the PostgreSQL server of
// opts.PostgresURL unless they exist, and brings their schemas up to date. Only
// opts.Binaries, PostgresURL, the database names and Log are used; StartTemporalServer runs
// it itself.
func SetupTemporalSchema(ctx context.Context, opts TemporalServerOptions) error {
	var err error
	if opts.Binaries == (TemporalServerBinaries{}) {
		if opts.Binaries, err = EnsureTemporalServer(ctx, nil); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "otaflow-temporal-schema-")
	if err != nil {
		return fmt.Errorf("Temporal schema: %w", err)
	}
	defer os.RemoveAll(dir)
	configDir, err := WriteTemporalConfig(dir)
	if err != nil {
		return err
	}
	env, err := temporalServerEnv(opts, configDir, TemporalServerPorts{})
	if err != nil {
		return err
	}
	return runSchemaScript(ctx, configDir, env, opts.Log)
}

// runSchemaScript runs the schema script of configDir with env.
func runSchemaScript(ctx context.Context, configDir string, env []string, out io.Writer) error {
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(configDir, temporalconfig.SchemaScript))
	cmd.Env = env
	var buf bytes.Buffer
	w := io.Writer(&buf)
	if out != nil {
		w = io.MultiWriter(out, &buf)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("set up the Temporal server's databases (%s): %w; its output:\n%s", temporalconfig.SchemaScript, err, indent(lastLines(buf.String(), 30)))
	}
	return nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitReady dials the frontend until it answers, the server exits, or the start timeout
// passes.
func (t *TemporalServer) waitReady(ctx context.Context, opts TemporalServerOptions) error {
	c, err := dialStarting(ctx, t.proc, client.Options{HostPort: t.address, Namespace: t.namespace, Logger: opts.Logger}, opts.StartTimeout)
	t.client = c
	return err
}

// Address is the frontend's gRPC address, host:port (TEMPORAL_ADDRESS).
func (t *TemporalServer) Address() string { return t.address }

// Ports are the ports the server listens on; start a server with them to restart it in
// place.
func (t *TemporalServer) Ports() TemporalServerPorts { return t.ports }

// Namespace is the namespace Client uses.
func (t *TemporalServer) Namespace() string { return t.namespace }

// Client is a client of the server for Namespace. Stop closes it.
func (t *TemporalServer) Client() client.Client { return t.client }

// Dir is the server's root directory (its configuration is in Dir/config).
func (t *TemporalServer) Dir() string { return t.dir }

// PID is the server's process ID.
func (t *TemporalServer) PID() int { return t.proc.cmd.Process.Pid }

// Done is closed when the server process has exited, whether Stop ended it or not.
func (t *TemporalServer) Done() <-chan struct{} { return t.proc.done }

// Kill ends the server at once (SIGKILL), as a crash would, and waits for it to exit. Its
// client stays open; Stop still closes it.
func (t *TemporalServer) Kill() {
	_ = t.proc.stop(syscall.SIGKILL, 10*time.Second)
}

// Stop closes the client and stops the server (SIGTERM, then SIGKILL after 30 seconds). It is
// safe to call more than once.
func (t *TemporalServer) Stop() error {
	t.stopOnce.Do(func() { t.stopErr = stopTemporal(t.client, t.proc, 30*time.Second) })
	return t.stopErr
}
