package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/store"
)

// TestMainServesBrokerMetrics runs the command with --broker-metrics against Mosquitto from
// deploy/mosquitto, provisioned as `starter setup` does: its metrics page shows the bridge's
// own metrics and the broker's clients read from $SYS, the bridge and the collector's
// connection (kind="all").
func TestMainServesBrokerMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dbURL := databaseURL(t)
	st, err := store.Open(ctx, dbURL)
	require.NoError(t, err)
	defer st.Close()
	m := testenv.Mosquitto(t)
	admin, err := brokeraccounts.Dial(ctx, m.AdminURL(), nil)
	require.NoError(t, err)
	_, err = brokeraccounts.Provision(ctx, admin, brokeraccounts.Setup{WorkerPassword: "w", BridgePassword: "b", Registry: st})
	admin.Close()
	require.NoError(t, err)
	port, err := localstack.FreePort()
	require.NoError(t, err)

	runCtx, stopBridge := context.WithCancel(ctx)
	defer stopBridge()
	done := make(chan error, 1)
	go func() {
		done <- newApp().RunContext(runCtx, []string{"mqttbridge",
			"--mqtt-url", m.URL(brokeraccounts.BridgeAccount, "b"), "--mqtt-client-id", "bridge-metrics-test",
			"--database-url", dbURL, "--temporal-address", testenv.TemporalAddress(), "--temporal-namespace", testenv.TemporalNamespace(),
			"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", port), "--broker-metrics",
		})
	}()
	var page string
	var stopped error
	require.Eventually(t, func() bool {
		select {
		case stopped = <-done:
			return true
		default:
		}
		page = get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		// Mosquitto publishes $SYS every 10 s: the count may first be from before the bridge.
		return strings.Contains(page, "\n"+`otaflow_broker_clients_connected{kind="all"} 2`+"\n")
	}, 30*time.Second, 100*time.Millisecond, "the bridge's metrics page:\n%s", page)
	if stopped != nil {
		t.Fatalf("mqttbridge stopped: %v", stopped)
	}
	for _, want := range []string{"otaflow_bridge_reports_stored_total", "otaflow_broker_messages_received_total",
		"otaflow_broker_sys_last_update_timestamp_seconds"} {
		require.Contains(t, page, want)
	}
	stopApp(t, stopBridge, done)
}

// TestBrokerMetricsNeedsMetricsListen: --broker-metrics without --metrics-listen is refused at
// once, before anything is dialled, with an error that says what to set.
func TestBrokerMetricsNeedsMetricsListen(t *testing.T) {
	app := newApp()
	app.ExitErrHandler = func(*cli.Context, error) {} // the error is returned, not exited with
	err := app.RunContext(context.Background(), []string{"mqttbridge",
		"--mqtt-url", "tcp://otaflow-bridge:b@127.0.0.1:1", "--database-url", "postgres://nobody@127.0.0.1:1/none",
		"--broker-metrics"})
	var exit cli.ExitCoder
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 2, exit.ExitCode(), "the exit code of a usage error")
	require.Contains(t, err.Error(), "set --metrics-listen (METRICS_LISTEN)")
}

// get returns the body of url, or "" when it cannot be read (not serving yet).
func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}
