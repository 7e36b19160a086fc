package deploy

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"

	"github.com/otaflow/otaflow/internal/localstack"
	"github.com/otaflow/otaflow/internal/ota"
)

// TestSearchAttributeScriptRegisters runs register-search-attributes.sh, as the
// temporal-setup service does, against a real Temporal server that lacks OTAflow's search
// attributes, in the default namespace and in another one, twice.
func TestSearchAttributeScriptRegisters(t *testing.T) {
	ctx := context.Background()
	cli := os.Getenv("OTAFLOW_TEST_TEMPORAL_CLI")
	if cli == "" {
		var err error
		if cli, err = localstack.EnsureTemporalCLI(ctx, t.Logf); err != nil {
			t.Fatal(err)
		}
	}
	// The script runs `temporal` from PATH.
	bin := t.TempDir()
	if err := os.Symlink(cli, filepath.Join(bin, "temporal")); err != nil {
		t.Fatal(err)
	}
	port, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	// A plain dev server: without localstack's registration of the search attributes.
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{
		ExistingPath: cli,
		ClientOptions: &client.Options{HostPort: addr, Namespace: "fleet",
			Logger: log.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))},
		LogLevel: "error",
		Stdout:   io.Discard,
		Stderr:   io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Stop(); err != nil {
			t.Logf("stop Temporal: %v", err)
		}
	}()
	c := srv.Client()
	defer c.Close()

	registered := func(ns string) map[string]enums.IndexedValueType {
		t.Helper()
		list, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		return list.GetCustomAttributes()
	}
	for _, ns := range []string{"default", "fleet"} {
		if _, ok := registered(ns)[ota.SearchAttributeNames[0]]; ok {
			t.Fatalf("namespace %s already has %s before the script ran", ns, ota.SearchAttributeNames[0])
		}
		for run := 1; run <= 2; run++ {
			cmd := exec.Command("sh", filepath.Join("temporal", "register-search-attributes.sh"))
			cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
				"TEMPORAL_ADDRESS="+addr, "TEMPORAL_NAMESPACE="+ns)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("namespace %s, run %d: %v\n%s", ns, run, err, out)
			}
		}
		got := registered(ns)
		for _, name := range ota.SearchAttributeNames {
			if got[name] != enums.INDEXED_VALUE_TYPE_KEYWORD {
				t.Errorf("namespace %s: search attribute %s is %s, want Keyword", ns, name, got[name])
			}
		}
	}
}
