package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/ota"
)

func TestMain(m *testing.M) {
	os.Exit(Start(m, Needs{Temporal: true, Postgres: true}))
}

func TestDatabaseURLGivesEachTestItsOwnDatabase(t *testing.T) {
	ctx := context.Background()
	urls := map[string]string{}
	for _, name := range []string{"first", "second", strings.Repeat("a very long test name ", 5)} {
		t.Run(name, func(t *testing.T) {
			u := DatabaseURL(t)
			parsed, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			db := strings.TrimPrefix(parsed.Path, "/")
			if len(db) > 63 {
				t.Errorf("database name %q is longer than PostgreSQL allows", db)
			}
			for other, otherURL := range urls {
				if otherURL == u {
					t.Fatalf("test %q got the database of %q", name, other)
				}
			}
			urls[name] = u
			conn, err := pgx.Connect(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'mine'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Fatalf("a new database already has the table another test made")
			}
			if _, err := conn.Exec(ctx, `CREATE TABLE mine (v int)`); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestTemporalRunsWorkflows(t *testing.T) {
	t.Parallel()
	c := TemporalClient()
	host, _, err := net.SplitHostPort(TemporalAddress())
	if err != nil || host == "" {
		t.Fatalf("TemporalAddress() = %q", TemporalAddress())
	}
	list, err := c.OperatorService().ListSearchAttributes(context.Background(),
		&operatorservice.ListSearchAttributesRequest{Namespace: TemporalNamespace()})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range ota.SearchAttributeNames {
		if list.GetCustomAttributes()[name] != enums.INDEXED_VALUE_TYPE_KEYWORD {
			t.Errorf("search attribute %s is not registered as Keyword", name)
		}
	}

	queue := "testenv-" + t.Name()
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(func(ctx workflow.Context, who string) (string, error) {
		return "hello " + who, nil
	}, workflow.RegisterOptions{Name: "TestenvHello"})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "testenv-hello", TaskQueue: queue}, "TestenvHello", "otaflow")
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := run.Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	if got != "hello otaflow" {
		t.Fatalf("workflow returned %q", got)
	}
}

func TestAccessorsPanicWithoutTheServer(t *testing.T) {
	saved := env.needs
	defer func() { env.needs = saved }()
	env.needs = Needs{}
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(fmt.Sprint(r), "testenv.Needs{Temporal: true}") {
			t.Fatalf("TemporalClient without Temporal: recovered %v, want a panic saying what to do", r)
		}
	}()
	TemporalClient()
}

func TestRemoveStaleDirs(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip("cannot run true:", err)
	}
	mk := func(pid int) string {
		d, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		if err := os.WriteFile(filepath.Join(d, "pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	stale, live := mk(dead.Process.Pid), mk(os.Getpid())
	starting, err := os.MkdirTemp("", dirPrefix) // no pid file yet
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(starting) })

	removeStaleDirs()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the directory of a dead test binary is still there (%v)", err)
	}
	for _, d := range []string{live, starting, env.dir} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("removeStaleDirs removed %s, which is in use: %v", d, err)
		}
	}
}

// TestServersStopWhenTestsEnd runs this test binary again, with a passing and a failing test,
// and checks that the servers it started are gone, and their directory too, once it exits.
func TestServersStopWhenTestsEnd(t *testing.T) {
	if os.Getenv("TESTENV_TEST_CHILD") != "" {
		t.Skip("already in the child")
	}
	t.Parallel()
	for _, fail := range []bool{false, true} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestChildReportsServers$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_TEST_CHILD=1", fmt.Sprintf("TESTENV_TEST_CHILD_FAIL=%v", fail))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var taddr, dir string
		var pgPort int
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Sscanf(sc.Text(), "TESTENV-SERVERS %s %d %s", &taddr, &pgPort, &dir)
		}
		err = cmd.Wait()
		if fail != (err != nil) {
			t.Fatalf("child with failing test %v exited with %v", fail, err)
		}
		if taddr == "" || pgPort == 0 || dir == "" {
			t.Fatal("the child did not report its servers")
		}
		_, tport, _ := net.SplitHostPort(taddr)
		for _, port := range []string{tport, strconv.Itoa(pgPort)} {
			p, _ := strconv.Atoi(port)
			if err := localstack.CheckPortFree(p); err != nil {
				t.Errorf("after the tests ended (failed %v): %v", fail, err)
			}
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the servers' directory %s is still there (failed %v)", dir, fail)
		}
	}
}

func TestChildReportsServers(t *testing.T) {
	if os.Getenv("TESTENV_TEST_CHILD") == "" {
		t.Skip("only runs in the child of TestServersStopWhenTestsEnd")
	}
	u, err := url.Parse(DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("TESTENV-SERVERS %s %s %s\n", TemporalAddress(), u.Port(), env.dir)
	if os.Getenv("TESTENV_TEST_CHILD_FAIL") == "true" {
		t.Error("failing on purpose")
	}
}
