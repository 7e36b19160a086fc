package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/ota"
)

// envScreenshots names the directory TestScreenshots writes the README's Web UI screenshots
// to; the test is skipped without it.
const envScreenshots = "OTAFLOW_SCREENSHOTS"

// TestScreenshots takes the README's screenshots of the Temporal Web UI (not run in CI):
//
//	OTAFLOW_SCREENSHOTS=$PWD/docs go test -run TestScreenshots -v ./devstack/
//
// It starts the local stack as `go run ./devstack` does, on free ports and a data directory
// of its own, and a rollout of the demo package to 20 simulated devices: two devices, then,
// after an hour's bake, the rest, each device soaking a minute after its install. It
// photographs a device upgrade's page while the upgrade soaks and the rollout's page while it
// bakes, each on its User Metadata tab (summary, details, current details, timers'
// summaries) and its History tab (input, result, timeline), with headless Chromium from
// Debian (apt-get install -y chromium); pngquant, when installed, makes the PNGs smaller.
//
// Chromium waits for the page's network to be idle before it takes a picture, and the UI
// long-polls a running workflow's history; the pictures are taken through a proxy that turns
// the long polls into plain reads.
func TestScreenshots(t *testing.T) {
	dir := os.Getenv(envScreenshots)
	if dir == "" {
		t.Skip(envScreenshots + " is not set")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("needs Debian's chromium: apt-get install -y chromium")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ports := make([]int, 5)
	for i := range ports {
		if ports[i], err = localstack.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	s, err := Start(ctx, Config{DataDir: t.TempDir(), Devices: 20, TemporalPort: ports[0], UIPort: ports[1],
		MQTTPort: ports[2], PostgresPort: ports[3], HTTPPort: ports[4], Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	name := "fw-1.1-" + time.Now().UTC().Format("0102-1504")
	req := ota.RolloutRequest{
		Name: name,
		Upgrade: ota.UpgradeRequest{Type: s.Signed.Type, Version: s.Signed.Version,
			URL: s.Package.URL, MD5: s.Package.MD5, Size: s.Package.Size,
			SHA256: s.Signed.SHA256, Sig: s.Signed.Sig, KeyID: s.Signed.KeyID, Soak: ota.Duration(time.Minute)},
		Targets:         ota.Targets{Prefix: "sim-"},
		Waves:           []ota.Wave{{Count: 2, Bake: ota.Duration(time.Hour)}, {Percent: 100}},
		MaxInFlight:     10,
		FailurePercent:  20,
		FailureMinCount: 3,
	}
	if _, err := ota.StartRollout(ctx, s.Client, req); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_, _ = s.Client.UpdateWorkflow(context.Background(), client.UpdateWorkflowOptions{
			WorkflowID: ota.RolloutWorkflowID(name), UpdateName: ota.UpdateCancel,
			Args: []any{ota.CancelRequest{CancelRunning: true, Reason: "screenshots taken"}}, WaitForStage: client.WorkflowUpdateStageCompleted,
		})
	}()

	ui := uiProxy(t, s.UIURL)
	shoot := func(file, workflowID, tab string) {
		t.Helper()
		d, err := s.Client.DescribeWorkflow(ctx, workflowID, "")
		if err != nil {
			t.Fatal(err)
		}
		page := fmt.Sprintf("%s/namespaces/default/workflows/%s/%s/%s", ui, workflowID, d.WorkflowExecution.RunID, tab)
		path := filepath.Join(dir, file)
		cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
			"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir="+t.TempDir(), "--screenshot="+path, "--window-size=1400,1000",
			"--virtual-time-budget=15000", page)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("chromium %s: %v\n%s", page, err, b)
		}
		if pngquant, err := exec.LookPath("pngquant"); err == nil {
			if b, err := exec.CommandContext(ctx, pngquant, "--force", "--skip-if-larger", "--output", path, "--", path).CombinedOutput(); err != nil {
				t.Logf("pngquant %s: %v\n%s", path, err, b) // exit 98/99: kept as it was
			}
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s (%d KB): %s", path, fi.Size()>>10, page)
	}

	// A device upgrade of the first wave while it soaks: running, its state succeeded.
	var device string
	require.Eventually(t, func() bool {
		resp, err := s.Client.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: fmt.Sprintf(
			"OtaRollout = '%s' AND OtaState = 'succeeded' AND ExecutionStatus = 'Running'", name)})
		if err != nil || len(resp.Executions) == 0 {
			return false
		}
		device = resp.Executions[0].Execution.WorkflowId
		return true
	}, 2*time.Minute, 500*time.Millisecond, "no device upgrade of the rollout soaks")
	shoot("webui-device-details.png", device, "user-metadata")
	shoot("webui-device-history.png", device, "history")

	// The rollout while it bakes after its first wave.
	require.Eventually(t, func() bool {
		v, err := s.Client.QueryWorkflow(ctx, ota.RolloutWorkflowID(name), "", ota.QueryProgress)
		var p ota.RolloutProgress
		return err == nil && v.Get(&p) == nil && p.State == ota.RolloutBaking
	}, 3*time.Minute, time.Second, "the rollout does not bake")
	shoot("webui-rollout-details.png", ota.RolloutWorkflowID(name), "user-metadata")
	shoot("webui-rollout-history.png", ota.RolloutWorkflowID(name), "history")
}

// uiProxy serves the Web UI at target through a proxy that answers the UI's long polls of a
// workflow's history (waitNewEvent=true) at once, so that the page's network goes idle.
func uiProxy(t *testing.T, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		if q := r.Out.URL.Query(); q.Get("waitNewEvent") == "true" {
			q.Set("waitNewEvent", "false")
			r.Out.URL.RawQuery = q.Encode()
		}
	}})
	t.Cleanup(srv.Close)
	return srv.URL
}
