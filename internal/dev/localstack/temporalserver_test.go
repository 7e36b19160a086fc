package localstack

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/types/known/durationpb"

	temporalconfig "github.com/otaflow/otaflow/deploy/temporal"
)

// temporalServerBinaries returns the server and SQL tool the tests run:
// $OTAFLOW_TEST_TEMPORAL_SERVER and $OTAFLOW_TEST_TEMPORAL_SQL_TOOL (set by scripts/test),
// else those EnsureTemporalServer finds or builds.
func temporalServerBinaries(t *testing.T) TemporalServerBinaries {
	t.Helper()
	server, sqlTool := os.Getenv("OTAFLOW_TEST_TEMPORAL_SERVER"), os.Getenv("OTAFLOW_TEST_TEMPORAL_SQL_TOOL")
	if server != "" && sqlTool != "" {
		dir, err := TemporalSchemaDir(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return TemporalServerBinaries{Server: server, SQLTool: sqlTool, SchemaDir: dir}
	}
	b, err := EnsureTemporalServer(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestScriptsTestBuildsTheseVersions checks that scripts/test installs the Temporal CLI and
// server this package runs.
func TestScriptsTestBuildsTheseVersions(t *testing.T) {
	script, err := os.ReadFile(filepath.Join("..", "..", "..", "scripts", "test"))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"TEMPORAL_CLI_MODULE": TemporalCLIModule, "TEMPORAL_SERVER_VERSION": TemporalServerVersion} {
		got := ""
		if m := regexp.MustCompile(`(?m)^` + name + `=(\S+)$`).FindSubmatch(script); m != nil {
			got = string(m[1])
		}
		if got != want {
			t.Errorf("scripts/test sets %s to %q, want %q", name, got, want)
		}
	}
}

// TestTemporalServerOnPostgres starts the real Temporal server on PostgreSQL from
// deploy/temporal's files, uses it, kills it (SIGKILL) and restarts it in place on the same
// databases.
func TestTemporalServerOnPostgres(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bins := temporalServerBinaries(t)
	dir := t.TempDir()
	pg := startPostgres(t, PostgresOptions{Dir: filepath.Join(dir, "pg"), NoFsync: true})
	var log syncBuffer
	opts := TemporalServerOptions{Binaries: bins, Dir: filepath.Join(dir, "temporal"), PostgresURL: pg.URL(),
		Log: &log, Logger: quietLogger(), Namespace: "fleet"}
	tp, err := StartTemporalServer(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Stop() })

	// The files it runs are deploy/'s, byte for byte.
	for _, name := range []string{temporalconfig.ConfigFile, temporalconfig.DynamicConfigFile, temporalconfig.SchemaScript} {
		ran, err := os.ReadFile(filepath.Join(tp.Dir(), "config", name))
		if err != nil {
			t.Fatal(err)
		}
		repo, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "temporal", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ran, repo) {
			t.Errorf("the server ran a %s that differs from deploy/temporal/%s", name, name)
		}
	}
	// The schema job made both databases, at the schema versions of the release.
	for db, table := range map[string]string{"temporal": "executions", "temporal_visibility": "executions_visibility"} {
		var version string
		conn := connect(t, strings.Replace(pg.URL(), "/"+DatabaseName+"?", "/"+db+"?", 1))
		if err := conn.QueryRow(ctx, `SELECT curr_version FROM schema_version`).Scan(&version); err != nil {
			t.Fatalf("database %s: %v", db, err)
		}
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil || !exists {
			t.Errorf("database %s has no table %s (%v)", db, table, err)
		}
		t.Logf("database %s: schema version %s", db, version)
	}

	// Every service listens on 127.0.0.1 alone, on the ports reported (the worker service
	// serves no gRPC in v1.29.1: its port is only reserved).
	ports := tp.Ports()
	for what, p := range map[string]int{"frontend gRPC": ports.FrontendGRPC, "frontend HTTP": ports.FrontendHTTP,
		"frontend membership": ports.FrontendMembership, "history gRPC": ports.HistoryGRPC, "history membership": ports.HistoryMembership,
		"matching gRPC": ports.MatchingGRPC, "matching membership": ports.MatchingMembership,
		"worker membership": ports.WorkerMembership} {
		if CheckPortFree(p) == nil {
			t.Errorf("nothing listens on the %s port %d", what, p)
		}
	}
	if host, _, _ := net.SplitHostPort(tp.Address()); host != "127.0.0.1" {
		t.Errorf("Address() = %s, want 127.0.0.1:port", tp.Address())
	}
	// The HTTP API that docker-compose.yml's health check asks answers.
	resp, err := http.Get("http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.FrontendHTTP)) + temporalconfig.HealthPath)
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("health check %s answered %s", temporalconfig.HealthPath, resp.Status)
	}
	if ip := nonLoopbackIP(); ip != nil {
		if conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(ports.FrontendGRPC)), time.Second); err == nil {
			conn.Close()
			t.Errorf("the frontend answers on %s too, want 127.0.0.1 only", ip)
		}
	}

	// A namespace, with OTAflow's search attributes, and a workflow that stays running.
	c := tp.Client()
	if _, err := c.WorkflowService().RegisterNamespace(ctx, &workflowservice.RegisterNamespaceRequest{
		Namespace: "fleet", WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	require.EventuallyWithT(t, func(c2 *assert.CollectT) {
		assert.NoError(c2, RegisterSearchAttributes(ctx, c, "fleet"))
	}, time.Minute, 200*time.Millisecond, "the search attributes to register in the new namespace")
	assertSearchAttributes(t, c, "fleet")
	var run string
	require.EventuallyWithT(t, func(c2 *assert.CollectT) {
		var err error
		run, err = startProbeErr(c, "probe-real", "dev-real")
		assert.NoError(c2, err)
	}, time.Minute, 200*time.Millisecond, "a workflow to start")
	waitVisible(t, c, `OtaDevice = "dev-real"`, "probe-real")

	// Killed (as in a crash) and restarted in place, on its databases: the workflow is still
	// there and still listed. The restart serves pprof (PPROF_PORT), on 127.0.0.1 only.
	tp.Kill()
	select {
	case <-tp.Done():
	default:
		t.Fatal("Done not closed after Kill")
	}
	if err := tp.Stop(); err != nil {
		t.Fatalf("Stop after Kill: %v", err)
	}
	opts.Ports = ports
	if opts.PProfPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	restartedAt := time.Now()
	tp, err = StartTemporalServer(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Stop() })
	t.Logf("restarted in %s", time.Since(restartedAt).Round(100*time.Millisecond))
	if tp.Address() != net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.FrontendGRPC)) {
		t.Errorf("restarted on %s, want port %d", tp.Address(), ports.FrontendGRPC)
	}
	var desc *client.WorkflowExecutionDescription
	require.EventuallyWithT(t, func(c2 *assert.CollectT) {
		var err error
		desc, err = tp.Client().DescribeWorkflow(ctx, "probe-real", run)
		assert.NoError(c2, err)
	}, time.Minute, 200*time.Millisecond, "the workflow started before the restart")
	if desc.Status != enums.WORKFLOW_EXECUTION_STATUS_RUNNING {
		t.Fatalf("workflow status after restart %s, want running", desc.Status)
	}
	pprofURL := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/cmdline", opts.PProfPort)
	resp, err = http.Get(pprofURL)
	if err != nil {
		t.Fatalf("pprof with PPROF_PORT: %v", err)
	}
	cmdline, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(cmdline), "start") {
		t.Errorf("%s answered %s: %q, want the server's command line", pprofURL, resp.Status, cmdline)
	}
	if ip := nonLoopbackIP(); ip != nil {
		if conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(opts.PProfPort)), time.Second); err == nil {
			conn.Close()
			t.Errorf("pprof answers on %s too, want 127.0.0.1 only", ip)
		}
	}
	waitVisible(t, tp.Client(), `OtaDevice = "dev-real"`, "probe-real")
	if !strings.Contains(log.String(), "setup-schema: database temporal: schema 1.18, up to date") {
		t.Errorf("the second schema job did not find the database up to date (at v1.29.1's 1.18); its output:\n%s", log.String())
	}
}

func TestStartTemporalServerErrors(t *testing.T) {
	t.Parallel()
	busy := listen(t).Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	bins := TemporalServerBinaries{Server: "/bin/true", SQLTool: "/bin/true", SchemaDir: dir}
	pgURL := "postgres://postgres@127.0.0.1:5432/otaflow"
	tests := []struct {
		name    string
		opts    TemporalServerOptions
		wantErr []string
	}{
		{"no directory", TemporalServerOptions{Binaries: bins, PostgresURL: pgURL}, []string{"Dir"}},
		{"no PostgreSQL", TemporalServerOptions{Binaries: bins, Dir: dir}, []string{"PostgresURL"}},
		{"server missing", TemporalServerOptions{Binaries: TemporalServerBinaries{Server: filepath.Join(dir, "nope"), SQLTool: "/bin/true"},
			Dir: dir, PostgresURL: pgURL}, []string{"nope", "go install"}},
		{"frontend port in use", TemporalServerOptions{Binaries: bins, Dir: dir, PostgresURL: pgURL, Ports: TemporalServerPorts{FrontendGRPC: busy}},
			[]string{strconv.Itoa(busy), "--temporal-port"}},
		{"membership port too high", TemporalServerOptions{Binaries: bins, Dir: dir, PostgresURL: pgURL, Ports: TemporalServerPorts{HistoryMembership: 40000}},
			[]string{"40000", "32767", "HistoryMembership"}},
		{"two services on one port", TemporalServerOptions{Binaries: bins, Dir: dir, PostgresURL: pgURL,
			Ports: TemporalServerPorts{FrontendGRPC: 21000, MatchingGRPC: 21000}}, []string{"both 21000"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, err := StartTemporalServer(context.Background(), tt.opts)
			if err == nil {
				tp.Stop()
				t.Fatal("StartTemporalServer succeeded, want an error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// TestTemporalServerConfigRefusesRelativeDynamicConfig renders deploy/temporal's
// configuration with the server's own loader: a relative dynamic configuration path, which the
// server would resolve against its working directory, is refused with a message saying why.
func TestTemporalServerConfigRefusesRelativeDynamicConfig(t *testing.T) {
	t.Parallel()
	bins := temporalServerBinaries(t)
	dir := t.TempDir()
	configDir, err := WriteTemporalConfig(filepath.Join(dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	render := func(dynamicConfig string, pprofPort int) (string, error) {
		env, err := temporalServerEnv(TemporalServerOptions{PostgresURL: "postgres://temporal:s3cret@db.example:6543/x", LogLevel: "warn", PProfPort: pprofPort},
			configDir, TemporalServerPorts{FrontendGRPC: 17233, FrontendHTTP: 17243, FrontendMembership: 16933,
				HistoryGRPC: 17234, HistoryMembership: 16934, MatchingGRPC: 17235, MatchingMembership: 16935, WorkerGRPC: 17239, WorkerMembership: 16939})
		if err != nil {
			t.Fatal(err)
		}
		env = append(env, "DYNAMIC_CONFIG_FILE_PATH="+dynamicConfig)
		cmd := exec.Command(bins.Server, "--root", dir, "--config", "config", "--env", temporalconfig.Environment, "render-config")
		cmd.Env = env
		// render-config reads --config from the working directory, not --root.
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := render(filepath.Join(configDir, temporalconfig.DynamicConfigFile), 0)
	if err != nil {
		t.Fatalf("render with an absolute path: %v\n%s", err, out)
	}
	if !strings.Contains(out, "pprof:\n        host: \"\"\n        port: 0\n") {
		t.Errorf("rendered configuration has a pprof port nobody asked for (want port 0):\n%s", out)
	}
	// A pprof port is served on 127.0.0.1 alone.
	withPProf, err := render(filepath.Join(configDir, temporalconfig.DynamicConfigFile), 17260)
	if err != nil {
		t.Fatalf("render with a pprof port: %v\n%s", err, withPProf)
	}
	if !strings.Contains(withPProf, "pprof:\n        host: 127.0.0.1\n        port: 17260\n") {
		t.Errorf("rendered configuration lacks the pprof endpoint on 127.0.0.1:17260:\n%s", withPProf)
	}
	for _, want := range []string{"numHistoryShards: 4", "db.example:6543", "pluginName: postgres12", "grpcPort: 17233", "bindOnIP: 127.0.0.1",
		"databaseName: temporal_visibility", "membershipPort: 16939"} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered configuration lacks %q:\n%s", want, out)
		}
	}
	out, err = render("config/dynamicconfig.yaml", 0)
	if err == nil || !strings.Contains(out, "is not an absolute path") {
		t.Fatalf("render with a relative path: %v, want a refusal naming the absolute path; output:\n%s", err, out)
	}
}

// TestSetupTemporalSchemaTwice runs the schema job twice on a new PostgreSQL server: the
// second run finds both databases and changes nothing.
func TestSetupTemporalSchemaTwice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bins := temporalServerBinaries(t)
	pg := startPostgres(t, PostgresOptions{Dir: filepath.Join(t.TempDir(), "pg"), NoFsync: true})
	opts := TemporalServerOptions{Binaries: bins, PostgresURL: pg.URL(), DatabaseName: "t_main", VisibilityDatabaseName: "t_vis"}
	versions := func() map[string]string {
		v := map[string]string{}
		for _, db := range []string{"t_main", "t_vis"} {
			var cur string
			if err := connect(t, strings.Replace(pg.URL(), "/"+DatabaseName+"?", "/"+db+"?", 1)).QueryRow(ctx,
				`SELECT curr_version || ' ' || (SELECT count(*) FROM schema_update_history) FROM schema_version`).Scan(&cur); err != nil {
				t.Fatalf("database %s: %v", db, err)
			}
			v[db] = cur
		}
		return v
	}
	var first, second bytes.Buffer
	opts.Log = &first
	if err := SetupTemporalSchema(ctx, opts); err != nil {
		t.Fatal(err)
	}
	before := versions()
	opts.Log = &second
	if err := SetupTemporalSchema(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if after := versions(); after["t_main"] != before["t_main"] || after["t_vis"] != before["t_vis"] {
		t.Errorf("the second run changed the schemas: %v, then %v", before, after)
	}
	for _, tt := range []struct {
		out  string
		want []string
	}{
		{first.String(), []string{"database t_main: schema updated from 0.0 to", "database t_vis: schema updated from 0.0 to"}},
		{second.String(), []string{"database t_main: schema " + strings.Fields(before["t_main"])[0] + ", up to date",
			"database t_vis: schema " + strings.Fields(before["t_vis"])[0] + ", up to date"}},
	} {
		for _, w := range tt.want {
			if !strings.Contains(tt.out, w) {
				t.Errorf("output lacks %q:\n%s", w, tt.out)
			}
		}
	}
	t.Logf("schema versions (version, updates applied): %v", before)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// nonLoopbackIP returns an IPv4 address of this machine other than loopback, or nil.
func nonLoopbackIP() net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP
		}
	}
	return nil
}
