package testenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/dev/localstack"
)

// Needs names the servers a test binary needs.
type Needs struct {
	Temporal bool
	Postgres bool
}

// Environment variables that change where the servers come from (see the package doc).
const (
	EnvTemporalCLI       = "OTAFLOW_TEST_TEMPORAL_CLI"
	EnvTemporalAddress   = "OTAFLOW_TEST_TEMPORAL_ADDRESS"
	EnvTemporalNamespace = "OTAFLOW_TEST_TEMPORAL_NAMESPACE"
	EnvDatabaseURL       = "OTAFLOW_TEST_DATABASE_URL"
	// EnvTemporalServer and EnvTemporalSQLTool are the real Temporal server and its SQL tool
	// (scripts/test sets them), for the tests of the production topology.
	EnvTemporalServer  = "OTAFLOW_TEST_TEMPORAL_SERVER"
	EnvTemporalSQLTool = "OTAFLOW_TEST_TEMPORAL_SQL_TOOL"
)

// dirPrefix starts the name of every temporary directory testenv makes.
const dirPrefix = "otaflow-testenv-"

// startTimeout bounds starting the servers, building the Temporal CLI included.
const startTimeout = 10 * time.Minute

// env is the test binary's environment, set by Start.
var env struct {
	started bool
	needs   Needs
	dir     string

	temporal     *localstack.Temporal // nil when the server is external
	tclient      client.Client
	taddr, tns   string
	pg           *localstack.Postgres // nil when the server is external
	pgServerURL  string
	pgExternal   bool
	dbSeq        atomic.Int64
	stopOnce     sync.Once
	temporalLogs string
	postgresLogs string
}

// Start starts the servers needs names, runs the tests and stops the servers. It returns the
// exit code for os.Exit: 1 if a server could not start, else m.Run's.
func Start(m *testing.M, needs Needs) (code int) {
	if err := start(needs); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		stop(true)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if sig, ok := <-sigs; ok {
			fmt.Fprintf(os.Stderr, "testenv: %v: stopping the test servers\n", sig)
			stop(false)
			os.Exit(130)
		}
	}()
	defer func() {
		signal.Stop(sigs)
		close(sigs)
		if r := recover(); r != nil {
			stop(true)
			panic(r)
		}
		stop(code != 0)
	}()
	return m.Run()
}

// start starts the servers, Temporal and PostgreSQL side by side.
func start(needs Needs) error {
	env.started, env.needs = true, needs
	removeStaleDirs()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return fmt.Errorf("create the servers' directory: %w", err)
	}
	env.dir = dir
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("create the servers' directory: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()

	var wg sync.WaitGroup
	var terr, perr error
	if needs.Temporal {
		wg.Add(1)
		go func() { defer wg.Done(); terr = startTemporal(ctx) }()
	}
	if needs.Postgres {
		wg.Add(1)
		go func() { defer wg.Done(); perr = startPostgres(ctx) }()
	}
	wg.Wait()
	return errors.Join(terr, perr)
}

func startTemporal(ctx context.Context) error {
	logger := log.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	if addr := os.Getenv(EnvTemporalAddress); addr != "" {
		ns := os.Getenv(EnvTemporalNamespace)
		if ns == "" {
			ns = "default"
		}
		c, err := client.DialContext(ctx, client.Options{HostPort: addr, Namespace: ns, Logger: logger})
		if err != nil {
			return fmt.Errorf("connect to the Temporal server at %s (%s): %w", addr, EnvTemporalAddress, err)
		}
		if err := localstack.RegisterSearchAttributes(ctx, c, ns); err != nil {
			c.Close()
			return err
		}
		env.tclient, env.taddr, env.tns = c, addr, ns
		return nil
	}
	cli := os.Getenv(EnvTemporalCLI)
	if cli == "" {
		var err error
		cli, err = localstack.EnsureTemporalCLI(ctx, func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "testenv: "+format+"\n", args...)
		})
		if err != nil {
			return err
		}
	}
	env.temporalLogs = filepath.Join(env.dir, "temporal.log")
	logFile, err := os.Create(env.temporalLogs)
	if err != nil {
		return fmt.Errorf("create the Temporal log: %w", err)
	}
	tp, err := localstack.StartTemporal(ctx, localstack.TemporalOptions{
		CLIPath:  cli,
		DBFile:   filepath.Join(env.dir, "temporal.db"),
		LogLevel: "error",
		Stdout:   logFile,
		Stderr:   logFile,
		Logger:   logger,
	})
	if err != nil {
		logFile.Close()
		return fmt.Errorf("start the Temporal test server: %w", err)
	}
	env.temporal, env.tclient, env.taddr, env.tns = tp, tp.Client(), tp.Address(), tp.Namespace()
	return nil
}

func startPostgres(ctx context.Context) error {
	if u := os.Getenv(EnvDatabaseURL); u != "" {
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			return fmt.Errorf("connect to the PostgreSQL server %s of %s: %w", credential.RedactURL(u), EnvDatabaseURL, err)
		}
		conn.Close(ctx)
		env.pgServerURL, env.pgExternal = u, true
		return nil
	}
	env.postgresLogs = filepath.Join(env.dir, "postgres.log")
	logFile, err := os.Create(env.postgresLogs)
	if err != nil {
		return fmt.Errorf("create the PostgreSQL log: %w", err)
	}
	pg, err := localstack.StartPostgres(ctx, localstack.PostgresOptions{
		Dir:     filepath.Join(env.dir, "pg"),
		NoFsync: true,
		Log:     logFile,
	})
	if errors.Is(err, localstack.ErrNoPostgres) {
		logFile.Close()
		return fmt.Errorf("%w (for tests: or set %s to a server where tests may create databases)", err, EnvDatabaseURL)
	}
	if err != nil {
		logFile.Close()
		return fmt.Errorf("start the PostgreSQL test server: %w", err)
	}
	env.pg, env.pgServerURL = pg, pg.URL()
	return nil
}

// stop stops the servers and removes their directory, first printing the end of their logs
// when failed.
func stop(failed bool) {
	env.stopOnce.Do(func() {
		if failed {
			printTail("Temporal", env.temporalLogs)
			printTail("PostgreSQL", env.postgresLogs)
		}
		if env.temporal != nil {
			if err := env.temporal.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
			}
		} else if env.tclient != nil {
			env.tclient.Close()
		}
		if env.pg != nil {
			if err := env.pg.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
			}
		}
		if env.dir != "" {
			if err := os.RemoveAll(env.dir); err != nil {
				fmt.Fprintf(os.Stderr, "testenv: remove %s: %v\n", env.dir, err)
			}
		}
	})
}

func printTail(name, path string) {
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil || len(strings.TrimSpace(string(b))) == 0 {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	fmt.Fprintf(os.Stderr, "testenv: last lines of the %s test server's log:\n    %s\n", name, strings.Join(lines, "\n    "))
}

// removeStaleDirs removes the directories of test binaries that died without removing theirs.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "pid"))
		if err != nil {
			// Not yet written by a binary starting now, or not ours: leave young ones alone.
			if fi, err := os.Stat(d); err != nil || time.Since(fi.ModTime()) < 10*time.Minute {
				continue
			}
		} else if pid, err := strconv.Atoi(string(b)); err == nil && processAlive(pid) {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	// EPERM: alive, but another user's.
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// TemporalAddress is the Temporal server's gRPC address, host:port. It panics unless Start
// was given Needs.Temporal.
func TemporalAddress() string {
	mustHave("Temporal", env.needs.Temporal)
	return env.taddr
}

// TemporalNamespace is the namespace TemporalClient uses.
func TemporalNamespace() string {
	mustHave("Temporal", env.needs.Temporal)
	return env.tns
}

// TemporalClient is a client of the Temporal server, shared by the binary's tests: do not
// close it. It panics unless Start was given Needs.Temporal.
func TemporalClient() client.Client {
	mustHave("Temporal", env.needs.Temporal)
	return env.tclient
}

func mustHave(server string, needed bool) {
	if !env.started || !needed {
		panic(fmt.Sprintf("testenv: no %s test server: call os.Exit(testenv.Start(m, testenv.Needs{%s: true})) from TestMain", server, server))
	}
}

// TemporalServerBinaries returns the real Temporal server, its SQL tool and its schemas, for
// a test that starts the production topology (localstack.StartTemporalServer): those of
// EnvTemporalServer and EnvTemporalSQLTool when both are set, else those
// localstack.EnsureTemporalServer finds in the Go bin directory or builds there (about 6
// minutes once). The test fails if they cannot be had.
func TemporalServerBinaries(tb testing.TB) localstack.TemporalServerBinaries {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	server, sqlTool := os.Getenv(EnvTemporalServer), os.Getenv(EnvTemporalSQLTool)
	if server != "" && sqlTool != "" {
		dir, err := localstack.TemporalSchemaDir(ctx)
		if err != nil {
			tb.Fatalf("testenv: %v", err)
		}
		return localstack.TemporalServerBinaries{Server: server, SQLTool: sqlTool, SchemaDir: dir}
	}
	b, err := localstack.EnsureTemporalServer(ctx, tb.Logf)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	return b
}

// nonIdent matches the runs of characters a database name cannot have.
var nonIdent = regexp.MustCompile(`[^a-z0-9]+`)

// DatabaseURL creates an empty database for tb alone and returns its URL. The test fails if
// Start was not given Needs.Postgres or the database cannot be created.
func DatabaseURL(tb testing.TB) string {
	tb.Helper()
	if !env.started || !env.needs.Postgres {
		tb.Fatal("testenv: no PostgreSQL test server: call os.Exit(testenv.Start(m, testenv.Needs{Postgres: true})) from TestMain")
	}
	// Unique within the binary (sequence) and among binaries sharing a server (process ID);
	// the test's name is there for people.
	name := fmt.Sprintf("t%d_%d_%s", os.Getpid(), env.dbSeq.Add(1), strings.Trim(nonIdent.ReplaceAllString(strings.ToLower(tb.Name()), "_"), "_"))
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "_")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u, err := localstack.CreateDatabaseAt(ctx, env.pgServerURL, name)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	if env.pgExternal {
		tb.Cleanup(func() { dropDatabase(tb, name) })
	}
	return u
}

// dropDatabase removes a test's database from an external server, ending its connections.
func dropDatabase(tb testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, env.pgServerURL)
	if err != nil {
		tb.Logf("testenv: drop database %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`); err != nil {
		tb.Logf("testenv: drop database %s: %v", name, err)
	}
}
