package localstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoPostgres is wrapped by the error StartPostgres returns when it finds no PostgreSQL
// server binaries.
var ErrNoPostgres = errors.New("no PostgreSQL binaries found: install them (apt-get install -y postgresql) or set DATABASE_URL")

// DatabaseName is the database StartPostgres creates and URL points to.
const DatabaseName = "otaflow"

// superuser is the name of the cluster's superuser, whoever runs the server.
const superuser = "postgres"

// PostgresOptions configures a local PostgreSQL server.
type PostgresOptions struct {
	// Dir is the data directory. A new or empty one is initialised (initdb); one that holds a
	// cluster (PG_VERSION) is reused with its data. The server's Unix socket is put there too.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// BinDir holds initdb and postgres; "" means the newest /usr/lib/postgresql/*/bin, else the
	// directory of `postgres` on PATH.
	BinDir string
	// NoFsync turns off fsync, synchronous_commit and full_page_writes: much faster, but a
	// machine crash can corrupt the data. For tests only.
	NoFsync bool
	// Log receives the server's output; nil discards it (its last lines still appear in
	// startup errors).
	Log io.Writer
	// StartTimeout bounds the wait for the server to accept connections; 0 means one minute.
	StartTimeout time.Duration
	// TLS, when set, turns SSL on (connections without it are still accepted).
	TLS *PostgresTLS
}

// PostgresTLS are the PEM files of a server with SSL on. They are copied into the data
// directory, where the server's user owns them and only it may read the key.
type PostgresTLS struct {
	// CertFile and KeyFile are the server's certificate and key.
	CertFile, KeyFile string
	// ClientCAFile, when set, holds the CAs the server trusts for client certificates
	// (ssl_ca_file); pg_stat_ssl then shows a client's certificate. pg_hba.conf still trusts
	// every local connection: a certificate is not required.
	ClientCAFile string
}

// Postgres is a running PostgreSQL server started by StartPostgres. It trusts every
// connection from 127.0.0.1 and from its Unix socket: for development and tests only.
type Postgres struct {
	proc     *process
	port     int
	stopOnce sync.Once
	stopErr  error
}

// StartPostgres starts a PostgreSQL server on opts.Dir, listening on 127.0.0.1 only, waits
// until it accepts connections and creates the database DatabaseName if it is missing.
//
// As root it runs the server as the postgres user (PostgreSQL refuses root): it hands Dir to
// that user and lets it traverse Dir's parents (adding the others-execute bit where missing).
// On Linux the server gets SIGINT (a fast shutdown) if the calling process dies without
// stopping it.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	if opts.Dir == "" {
		return nil, errors.New("PostgreSQL data directory not set")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL data directory %s: %w", opts.Dir, err)
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = time.Minute
	}
	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = findPostgresBinDir(); err != nil {
			return nil, err
		}
	}
	for _, prog := range []string{"initdb", "postgres"} {
		if !isExecutable(filepath.Join(binDir, prog)) {
			return nil, fmt.Errorf("%s is missing from %s: %w", prog, binDir, ErrNoPostgres)
		}
	}
	port, err := pickPort(opts.Port, "PostgreSQL", "--postgres-port")
	if err != nil {
		return nil, err
	}

	var as *runAs
	if os.Geteuid() == 0 {
		if as, err = lookupPostgresUser(); err != nil {
			return nil, err
		}
	}
	if err := prepareDataDir(dir, as); err != nil {
		return nil, err
	}
	if err := initCluster(ctx, binDir, dir, opts, as); err != nil {
		return nil, err
	}

	args := []string{"-D", dir,
		"-c", "listen_addresses=" + localhost,
		"-c", "port=" + strconv.Itoa(port),
		"-c", "unix_socket_directories=" + socketDir(dir),
		"-c", "max_connections=200",
	}
	if opts.NoFsync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	if opts.TLS != nil {
		tlsArgs, err := installTLSFiles(dir, *opts.TLS, as)
		if err != nil {
			return nil, err
		}
		args = append(args, tlsArgs...)
	}
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Dir = dir
	cmd.Env = postgresEnv()
	proc, err := startProcess("PostgreSQL server", cmd, opts.Log, syscall.SIGINT, as)
	if err != nil {
		return nil, err
	}
	pg := &Postgres{proc: proc, port: port}
	if err := pg.waitReady(ctx, opts.StartTimeout); err != nil {
		_ = pg.Stop()
		return nil, err
	}
	if _, err := pg.CreateDatabase(ctx, DatabaseName); err != nil {
		_ = pg.Stop()
		return nil, err
	}
	return pg, nil
}

// installTLSFiles copies the TLS files into dir, for the server's user alone, and returns the
// server arguments that use them.
func installTLSFiles(dir string, t PostgresTLS, as *runAs) ([]string, error) {
	if t.CertFile == "" || t.KeyFile == "" {
		return nil, errors.New("PostgreSQL TLS: both the server certificate and the key file are needed")
	}
	files := []struct{ src, name, setting string }{
		{t.CertFile, "server.crt", "ssl_cert_file"},
		{t.KeyFile, "server.key", "ssl_key_file"},
		{t.ClientCAFile, "root.crt", "ssl_ca_file"},
	}
	args := []string{"-c", "ssl=on"}
	for _, f := range files {
		if f.src == "" {
			continue
		}
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, fmt.Errorf("PostgreSQL TLS: %w", err)
		}
		dst := filepath.Join(dir, f.name)
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			return nil, fmt.Errorf("PostgreSQL TLS: %w", err)
		}
		// The server refuses a key others may read; WriteFile keeps an existing file's mode.
		if err := os.Chmod(dst, 0o600); err != nil {
			return nil, fmt.Errorf("PostgreSQL TLS: %w", err)
		}
		if as != nil {
			if err := os.Lchown(dst, int(as.uid), int(as.gid)); err != nil {
				return nil, fmt.Errorf("give %s to user %s: %w", dst, as.name, err)
			}
		}
		args = append(args, "-c", f.setting+"="+dst)
	}
	return args, nil
}

// findPostgresBinDir returns the newest /usr/lib/postgresql/*/bin, else the directory of
// `postgres` on PATH.
func findPostgresBinDir() (string, error) {
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	var dirs []string
	for _, f := range found {
		if isExecutable(f) {
			dirs = append(dirs, filepath.Dir(f))
		}
	}
	if len(dirs) > 0 {
		version := func(d string) float64 {
			v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
			return v
		}
		sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
		return dirs[0], nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoPostgres
}

func lookupPostgresUser() (*runAs, error) {
	return lookupRunAs(superuser, "PostgreSQL", "the postgresql package creates it")
}

// prepareDataDir creates dir (mode 0700, as PostgreSQL demands) and, when the server runs as
// another user, gives dir to that user and lets it reach dir.
func prepareDataDir(dir string, as *runAs) error {
	return prepareOwnedDir(dir, as, "PostgreSQL data directory")
}

// prepareOwnedDir creates dir (mode 0700) and, when a server runs as another user (as), gives
// dir and everything in it to that user and lets it traverse dir's parents (adding the
// others-execute bit where missing). what names the directory in errors.
func prepareOwnedDir(dir string, as *runAs, what string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", what, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if as == nil {
		return nil
	}
	uid, _, _, err := statOwner(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if uid != as.uid {
		err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(path, int(as.uid), int(as.gid))
		})
		if err != nil {
			return fmt.Errorf("give %s %s to user %s: %w", what, dir, as.name, err)
		}
	}
	// Every parent must be searchable by the server's user.
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		uid, gid, mode, err := statOwner(p)
		if err != nil {
			return fmt.Errorf("%s parent %s: %w", what, p, err)
		}
		searchable := mode&0o001 != 0 || (uid == as.uid && mode&0o100 != 0) || (gid == as.gid && mode&0o010 != 0)
		if !searchable {
			if err := os.Chmod(p, mode|0o001); err != nil {
				return fmt.Errorf("let user %s reach the %s through %s: %w", as.name, what, p, err)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// initCluster runs initdb unless dir already holds a cluster. The cluster is made in a
// sibling directory and renamed to dir once complete, so that an interrupted initdb never
// leaves a half-made cluster in dir.
func initCluster(ctx context.Context, binDir, dir string, opts PostgresOptions, as *runAs) error {
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("PostgreSQL data directory: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("%s is neither empty nor a PostgreSQL data directory (no PG_VERSION): choose another directory", dir)
	}
	tmp := dir + ".initdb"
	if err := os.RemoveAll(tmp); err != nil { // left by an interrupted start
		return fmt.Errorf("remove %s: %w", tmp, err)
	}
	if err := prepareDataDir(tmp, as); err != nil {
		return err
	}
	if err := runInitdb(ctx, binDir, tmp, opts, as); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	// dir is empty (checked above): os.Rename does not replace directories.
	if err := os.Remove(dir); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("move the new cluster into %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("move the new cluster into %s: %w", dir, err)
	}
	return nil
}

// runInitdb makes a cluster in the empty directory dir whose superuser is "postgres", trusting
// local connections only.
func runInitdb(ctx context.Context, binDir, dir string, opts PostgresOptions, as *runAs) error {
	args := []string{"-D", dir, "-U", superuser, "--auth=trust", "--encoding=UTF8", "--locale=C"}
	if opts.NoFsync {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = dir
	cmd.Env = postgresEnv()
	proc, err := startProcess("initdb", cmd, opts.Log, syscall.SIGKILL, as)
	if err != nil {
		return err
	}
	<-proc.done
	if proc.waitErr != nil {
		return fmt.Errorf("initdb %s: %w; its output:\n%s", dir, proc.waitErr, indent(proc.tail.String()))
	}
	// The server listens on 127.0.0.1 and its Unix socket only.
	hba := "# Written by OTAflow's localstack: trust local connections, for development and tests.\n" +
		"local all all trust\n" +
		"host  all all 127.0.0.1/32 trust\n"
	hbaPath := filepath.Join(dir, "pg_hba.conf")
	if err := os.WriteFile(hbaPath, []byte(hba), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", hbaPath, err)
	}
	if as != nil {
		if err := os.Lchown(hbaPath, int(as.uid), int(as.gid)); err != nil {
			return fmt.Errorf("give %s to user %s: %w", hbaPath, as.name, err)
		}
	}
	return nil
}

// postgresEnv is the environment of initdb and postgres: the caller's, without PG* settings
// that would change what they do, in the C locale.
func postgresEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LC_") && !strings.HasPrefix(kv, "LANG=") {
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C")
}

// socketDir is where the server puts its Unix socket: dir, unless the socket's path would be
// longer than Unix allows, in which case there is no socket ("").
func socketDir(dir string) string {
	if len(dir)+len("/.s.PGSQL.65535") >= 104 {
		return ""
	}
	return dir
}

// waitReady connects until the server answers, exits, or timeout passes.
func (pg *Postgres) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		connCtx, cancelConn := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(connCtx, pg.urlFor(superuser))
		cancelConn()
		if err == nil {
			return conn.Close(ctx)
		}
		lastErr = err
		select {
		case <-pg.proc.done:
			return pg.proc.exitError()
		case <-ctx.Done():
			return fmt.Errorf("PostgreSQL on port %d did not accept connections within %s (%w); last error: %v; its last output:\n%s",
				pg.port, timeout, ctx.Err(), lastErr, indent(pg.proc.tail.String()))
		case <-tick.C:
		}
	}
}

// urlFor returns the URL of database name on this server.
func (pg *Postgres) urlFor(name string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(superuser),
		Host:     net.JoinHostPort(localhost, strconv.Itoa(pg.port)),
		Path:     "/" + name,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// URL is the URL of the database DatabaseName, as its superuser, like
// postgres://postgres@127.0.0.1:PORT/otaflow?sslmode=disable.
func (pg *Postgres) URL() string { return pg.urlFor(DatabaseName) }

// Port is the server's TCP port on 127.0.0.1.
func (pg *Postgres) Port() int { return pg.port }

// Done is closed when the server process has exited, whether Stop ended it or not.
func (pg *Postgres) Done() <-chan struct{} { return pg.proc.done }

// CreateDatabase creates the database name unless it exists, and returns its URL. Tests use
// it to get a database of their own.
func (pg *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	return CreateDatabaseAt(ctx, pg.urlFor(superuser), name)
}

// databaseNameRE matches the database names CreateDatabaseAt accepts: lower-case SQL
// identifiers, which need no quoting anywhere.
var databaseNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// CreateDatabaseAt creates the database name, unless it exists, on the server that serverURL
// (of a role allowed to create databases) points to, and returns the URL of the new database:
// serverURL with the database replaced.
func CreateDatabaseAt(ctx context.Context, serverURL, name string) (string, error) {
	if !databaseNameRE.MatchString(name) {
		return "", fmt.Errorf("database name %q: use 1 to 63 of a-z, 0-9 and _, not starting with a digit", name)
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", fmt.Errorf("parse database URL: %w", err)
	}
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", fmt.Errorf("connect to PostgreSQL at %s to create database %s: %w", u.Host, name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", fmt.Errorf("look for database %s: %w", name, err)
	}
	if !exists {
		// template0 takes no connections, so copying it never fails for being in use. Copying
		// its files (PostgreSQL 15+) rather than WAL-logging them is twice as fast, but
		// checkpoints, which costs little only when fsync is off.
		strategy := ""
		var fsync string
		var version int
		if err := conn.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('server_version_num')::int`).Scan(&fsync, &version); err != nil {
			return "", fmt.Errorf("read server settings: %w", err)
		}
		if fsync == "off" && version >= 150000 {
			strategy = " STRATEGY FILE_COPY"
		}
		_, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()+` TEMPLATE template0 ENCODING 'UTF8'`+strategy)
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // duplicate_database: created meanwhile
			return "", fmt.Errorf("create database %s: %w", name, err)
		}
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}

// Stop stops the server with a fast shutdown (SIGINT, like `pg_ctl stop -m fast`), killing it
// if it has not stopped after 30 seconds. It is safe to call more than once.
func (pg *Postgres) Stop() error {
	pg.stopOnce.Do(func() {
		pg.stopErr = pg.proc.stop(syscall.SIGINT, 30*time.Second)
	})
	return pg.stopErr
}
