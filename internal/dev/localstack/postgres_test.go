package localstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func startPostgres(t *testing.T, opts PostgresOptions) *Postgres {
	t.Helper()
	pg, err := StartPostgres(context.Background(), opts)
	if errors.Is(err, ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	return pg
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestStartPostgresRestartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "pg")
	// What an initdb killed halfway through leaves behind.
	if err := os.MkdirAll(dir+".initdb/base", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+".initdb/PG_VERSION", []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	first := startPostgres(t, PostgresOptions{Dir: dir, NoFsync: true})
	if _, err := os.Stat(dir + ".initdb"); !os.IsNotExist(err) {
		t.Errorf("the half-made cluster is still there: %v", err)
	}
	wantURL := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/otaflow?sslmode=disable", first.Port())
	if first.URL() != wantURL {
		t.Fatalf("URL() = %s, want %s", first.URL(), wantURL)
	}
	conn := connect(t, first.URL())
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	extraURL, err := first.CreateDatabase(ctx, "extra_db")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, extraURL).Exec(ctx, `CREATE TABLE t (v int)`); err != nil {
		t.Fatal(err)
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := CheckPortFree(first.Port()); err != nil {
		t.Fatalf("after Stop: %v", err)
	}

	second := startPostgres(t, PostgresOptions{Dir: dir, NoFsync: true})
	var v string
	if err := connect(t, second.URL()).QueryRow(ctx, `SELECT v FROM kept`).Scan(&v); err != nil || v != "before restart" {
		t.Fatalf("after restart: %q, %v; want the row written before", v, err)
	}
	// Creating an existing database is not an error and keeps its data.
	again, err := second.CreateDatabase(ctx, "extra_db")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, again).Exec(ctx, `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatalf("the table made before the restart is gone: %v", err)
	}
}

func TestCreateDatabaseIsolates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := startPostgres(t, PostgresOptions{Dir: filepath.Join(t.TempDir(), "pg"), NoFsync: true})
	a, err := pg.CreateDatabase(ctx, "iso_a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := pg.CreateDatabase(ctx, "iso_b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, a).Exec(ctx, `CREATE TABLE only_in_a (v int)`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := connect(t, b).QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("database b sees %d tables of a (%v)", n, err)
	}

	for _, name := range []string{"", "Upper", "1digit", "semi;colon", "dash-name", strings.Repeat("a", 64)} {
		if _, err := pg.CreateDatabase(ctx, name); err == nil {
			t.Errorf("CreateDatabase(%q) succeeded, want an error", name)
		}
	}
}

func TestStartPostgresErrors(t *testing.T) {
	t.Parallel()
	busy := listen(t).Addr().(*net.TCPAddr).Port
	notEmpty := t.TempDir()
	if err := os.WriteFile(filepath.Join(notEmpty, "precious.txt"), []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	binDir, err := findPostgresBinDir()
	if err != nil {
		t.Skip(err)
	}
	tests := []struct {
		name    string
		opts    PostgresOptions
		is      error
		wantErr []string
	}{
		{name: "port in use", opts: PostgresOptions{Dir: filepath.Join(t.TempDir(), "pg"), Port: busy}, is: ErrPortInUse,
			wantErr: []string{fmt.Sprint(busy), "--postgres-port"}},
		{name: "no binaries", opts: PostgresOptions{Dir: filepath.Join(t.TempDir(), "pg"), BinDir: t.TempDir()}, is: ErrNoPostgres,
			wantErr: []string{"apt-get install -y postgresql", "DATABASE_URL"}},
		{name: "directory holds other files", opts: PostgresOptions{Dir: notEmpty, BinDir: binDir},
			wantErr: []string{notEmpty, "PG_VERSION"}},
		{name: "no directory", opts: PostgresOptions{}, wantErr: []string{"data directory not set"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pg, err := StartPostgres(context.Background(), tt.opts)
			if err == nil {
				pg.Stop()
				t.Fatal("StartPostgres succeeded, want an error")
			}
			t.Logf("error: %v", err)
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(notEmpty, "precious.txt")); err != nil || string(b) != "keep me" {
		t.Fatalf("StartPostgres touched a directory that is not its own: %q, %v", b, err)
	}
}

func TestStartPostgresReportsServerFailure(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pg")
	pg := startPostgres(t, PostgresOptions{Dir: dir, NoFsync: true})
	// A second server on the same data directory must fail at once, saying why.
	start := time.Now()
	second, err := StartPostgres(context.Background(), PostgresOptions{Dir: dir, NoFsync: true})
	if err == nil {
		second.Stop()
		t.Fatal("a second server started on the same data directory")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"stopped during startup", "postmaster.pid"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the error took %s", d)
	}
	// The first server is unharmed.
	var one int
	if err := connect(t, pg.URL()).QueryRow(context.Background(), `SELECT 1`).Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// TestServersStopWhenParentDies kills, with SIGKILL, a process that started both servers and
// checks that the servers go too.
func TestServersStopWhenParentDies(t *testing.T) {
	if os.Getenv("LOCALSTACK_TEST_ORPHAN_PARENT") == "1" {
		runOrphanParent(t)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("servers outlive their parent outside Linux")
	}
	if _, err := findPostgresBinDir(); err != nil {
		t.Skip(err)
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestServersStopWhenParentDies$", "-test.v")
	cmd.Env = append(os.Environ(), "LOCALSTACK_TEST_ORPHAN_PARENT=1", "LOCALSTACK_TEST_DIR="+t.TempDir(),
		"OTAFLOW_TEST_TEMPORAL_CLI="+temporalCLI(t))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ready := make(chan []int, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var tp, pg int
			if _, err := fmt.Sscanf(sc.Text(), "ORPHAN-READY %d %d", &tp, &pg); err == nil {
				ready <- []int{tp, pg}
			}
		}
		close(ready)
	}()
	var ports []int
	select {
	case ports = <-ready:
		if ports == nil {
			t.Fatal("the parent process ended before starting its servers")
		}
	case <-time.After(90 * time.Second):
		t.Fatal("the parent process did not start its servers within 90s")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, port := range ports {
		require.Eventually(t, func() bool { return CheckPortFree(port) == nil }, 30*time.Second, 100*time.Millisecond,
			"port %d free once its server's parent died", port)
	}
}

// runOrphanParent starts both servers, says on which ports, and waits to be killed.
func runOrphanParent(t *testing.T) {
	ctx := context.Background()
	dir := os.Getenv("LOCALSTACK_TEST_DIR")
	tp, err := StartTemporal(ctx, TemporalOptions{CLIPath: os.Getenv("OTAFLOW_TEST_TEMPORAL_CLI"), DBFile: filepath.Join(dir, "t.db")})
	if err != nil {
		t.Fatal(err)
	}
	pg, err := StartPostgres(ctx, PostgresOptions{Dir: filepath.Join(dir, "pg"), NoFsync: true})
	if err != nil {
		tp.Stop()
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(tp.Address())
	fmt.Printf("ORPHAN-READY %s %d\n", port, pg.Port())
	time.Sleep(5 * time.Minute)
}
