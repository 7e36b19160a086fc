package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/metrics"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// families is one scrape of a /metrics page.
type families map[string]*dto.MetricFamily

func scrape(t *testing.T, url string) families {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return fams
}

// sum adds the values of the series of a family that carry every label given: counters and
// gauges their value, histograms their count. A family that is missing sums to -1.
func (f families) sum(name string, labels ...string) float64 {
	fam, ok := f[name]
	if !ok {
		return -1
	}
	total := 0.0
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			total += m.GetUntyped().GetValue()
		}
	}
	return total
}

// exported are the metric names a set of scrapes shows, histograms with their series'
// suffixes.
func exported(scrapes ...families) map[string]bool {
	names := map[string]bool{}
	for _, f := range scrapes {
		for name, fam := range f {
			names[name] = true
			if fam.GetType() == dto.MetricType_HISTOGRAM {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[name+s] = true
				}
			}
		}
	}
	return names
}

// TestMetricsEqualRecords runs a rollout with injected failures (retried ones, one that fails
// every attempt), a pause, a message the bridge rejects and a connection the broker refuses,
// then scrapes the worker's, the bridge's and the broker's /metrics and finds the upgrade,
// rollout and bridge counters equal to what PostgreSQL recorded. It then checks that every
// metric the Grafana dashboard and the alert rules name is one the programs export.
func TestMetricsEqualRecords(t *testing.T) {
	faults := simulator.Faults{
		InstallFail:  simulator.Fault{Devices: []string{simID("met", 3)}},                               // fails both attempts
		DownloadFail: simulator.Fault{Devices: []string{simID("met", 5), simID("met", 8)}, Attempts: 1}, // retried, then succeed
		// Downloads for 16 s (64 KiB at 4 KiB/s), longer than the fleet figures are kept (10 s),
		// so that a scrape during the pause shows an upgrade in flight however fast the others go.
		Slow: simulator.Fault{Devices: []string{simID("met", 6)}},
	}
	timing := fastTiming
	timing.SlowRate = 4 << 10
	e := newEnv(t, system.Config{Devices: 10, Prefix: "met", Faults: faults, Timing: timing,
		Metrics: &system.MetricsAddrs{Worker: "127.0.0.1:0", Bridge: "127.0.0.1:0", Broker: "127.0.0.1:0"},
		Notify:  &system.Notify{}})
	urls := e.sys.MetricsURLs
	for _, part := range []string{system.PartWorker, system.PartBridge, system.PartBroker} {
		if !strings.HasPrefix(urls[part], "http://127.0.0.1:") || !strings.HasSuffix(urls[part], "/metrics") {
			t.Fatalf("%s metrics at %q", part, urls[part])
		}
	}
	db, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(e.ctx)
	count := func(sql string, args ...any) float64 {
		t.Helper()
		var n int64
		if err := db.QueryRow(e.ctx, sql, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return float64(n)
	}

	const name = "metrics"
	req := e.rollout(name, "met", ota.Wave{Count: 4}, ota.Wave{Percent: 100})
	req.Upgrade.MaxAttempts = 2
	req.MaxInFlight = 3
	run := e.startRollout(req)

	// Paused in wave 2, the slow download still shows in flight; with nothing running any
	// more, the fleet figures equal the records.
	require.Eventually(t, func() bool { return e.progress(run).Counts.Started >= 6 }, time.Minute, 50*time.Millisecond,
		"wave 2 started, the slow device with it")
	if err := e.update(run, ota.UpdatePause, "metrics test"); err != nil {
		t.Fatal(err)
	}
	require.Eventually(t, func() bool {
		return scrape(t, urls[system.PartWorker]).sum("otaflow_upgrades_in_flight", "type", "firmware") > 0
	}, 30*time.Second, 50*time.Millisecond, "upgrades in flight shown")
	require.Eventually(t, func() bool { return e.progress(run).Counts.Running() == 0 }, time.Minute, 50*time.Millisecond, "the running upgrades ended")
	var w, during families
	require.Eventually(t, func() bool {
		w = scrape(t, urls[system.PartWorker])
		return w.sum("otaflow_rollout_state", "rollout", name, "state", string(ota.RolloutPaused)) == 1
	}, 30*time.Second, 50*time.Millisecond, "the fleet figures to show the pause")
	during = w
	paused, err := e.store.CountByState(e.ctx, name, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range ota.AllStates {
		if got := w.sum("otaflow_rollout_devices", "rollout", name, "state", string(st)); got != float64(paused[st]) {
			t.Errorf("paused: otaflow_rollout_devices{state=%s} = %v, PostgreSQL has %d", st, got, paused[st])
		}
	}
	if err := e.update(run, ota.UpdateResume); err != nil {
		t.Fatal(err)
	}
	p, err := e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted {
		t.Fatalf("rollout %s: %+v, %v", name, p, err)
	}
	if p.Counts.Failed != 1 || p.Counts.Succeeded != 9 {
		t.Fatalf("rollout counts %+v, want 9 succeeded and met-00003 failed", p.Counts)
	}

	// A message the bridge rejects, and a connection the broker refuses.
	bad := e.scriptedDevice("met-bad", nil)
	bad.publish(protocol.ProgressTopic("met-bad"), []byte(`{"progress": "half"}`))
	require.Eventually(t, func() bool { return count(`SELECT count(*) FROM rejected_messages`) == 1 }, 10*time.Second, 50*time.Millisecond, "the rejection recorded")
	opts, err := mqttconn.Options(strings.Replace(e.sys.MQTTURL, "tcp://", "tcp://"+simID("met", 1)+":wrong@", 1), simID("met", 1))
	if err != nil {
		t.Fatal(err)
	}
	opts.SetConnectRetry(false)
	opts.SetProtocolVersion(4) // one attempt: no fallback to MQTT 3.1
	if tok := paho.NewClient(opts).Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		t.Fatal("the broker accepted a wrong secret")
	}

	var b, k families
	require.Eventually(t, func() bool {
		b = scrape(t, urls[system.PartBridge])
		return b.sum("otaflow_bridge_acks_pending") == 0 && b.sum("otaflow_bridge_queue_depth") == 0
	}, 10*time.Second, 50*time.Millisecond, "the bridge done with every message")
	// The fleet figures are read at most every 10 s.
	require.Eventually(t, func() bool {
		w = scrape(t, urls[system.PartWorker])
		return w.sum("otaflow_devices", "state", "enabled") == count(`SELECT count(*) FROM devices WHERE NOT disabled`)
	}, 30*time.Second, 50*time.Millisecond, "the fleet figures to show met-bad")
	k = scrape(t, urls[system.PartBroker])

	// Upgrades: by final state, attempts, time to success, starts.
	records, err := e.store.CountByState(e.ctx, name, "")
	if err != nil {
		t.Fatal(err)
	}
	rows := 0
	for _, st := range ota.AllStates {
		rows += records[st]
		if got := w.sum("otaflow_upgrades_finished_total", "rollout", name, "state", string(st)); got != float64(records[st]) && !(got == -1 && records[st] == 0) {
			t.Errorf("otaflow_upgrades_finished_total{state=%s} = %v, PostgreSQL has %d", st, got, records[st])
		}
	}
	checks := []struct {
		what      string
		got, want float64
	}{
		{"upgrades started", w.sum("otaflow_upgrades_started_total", "rollout", name), float64(rows)},
		{"failed with code -3", w.sum("otaflow_upgrades_finished_total", "rollout", name, "state", "failed", "error_code", "-3"),
			count(`SELECT count(*) FROM upgrades WHERE rollout = $1 AND state = 'failed' AND error_code = -3`, name)},
		{"attempts", w.sum("otaflow_upgrade_attempts_total", "rollout", name), count(`SELECT sum(attempt) FROM upgrades WHERE rollout = $1`, name)},
		{"successes timed", w.sum("otaflow_upgrade_duration_seconds", "rollout", name), float64(records[ota.StateSucceeded])},
		{"rollout starts", w.sum("otaflow_rollouts_started_total", "rollout", name), 1},
		{"rollout device starts", w.sum("otaflow_rollout_devices_started_total", "rollout", name), float64(rows)},
		{"operator pauses", w.sum("otaflow_rollout_pauses_total", "rollout", name, "cause", "operator"), 1},
		{"waves finished", w.sum("otaflow_rollout_waves_finished_total", "rollout", name), 2},
		{"rollouts completed", w.sum("otaflow_rollouts_finished_total", "rollout", name, "state", "completed"), 1},
		{"upgrades in flight", w.sum("otaflow_upgrades_in_flight"), count(`SELECT count(*) FROM upgrades WHERE finished_at IS NULL`)},
		{"devices enabled", w.sum("otaflow_devices", "state", "enabled"), count(`SELECT count(*) FROM devices WHERE NOT disabled`)},
		// Bridge: what it stored and rejected is what PostgreSQL holds.
		{"progress reports stored", b.sum("otaflow_bridge_reports_stored_total", "kind", "progress"), count(`SELECT count(*) FROM progress_events`)},
		{"messages rejected", b.sum("otaflow_bridge_messages_rejected_total"), count(`SELECT count(*) FROM rejected_messages`)},
		{"payloads rejected", b.sum("otaflow_bridge_messages_rejected_total", "reason", "payload"), 1},
		{"errors", b.sum("otaflow_bridge_errors_total"), 0},
		// Broker: the devices connected, the refusal.
		{"devices connected", k.sum("otaflow_broker_clients_connected", "kind", "device"), 11},
		{"wrong secrets refused", k.sum("otaflow_broker_connections_refused_total", "reason", "bad_secret"), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: metrics say %v, the records %v", c.what, c.got, c.want)
		}
	}
	if got, min := b.sum("otaflow_bridge_messages_received_total"), b.sum("otaflow_bridge_reports_stored_total")+1; got < min {
		t.Errorf("bridge received %v messages, fewer than it stored and rejected (%v)", got, min)
	}
	if got := b.sum("otaflow_bridge_signal_latency_seconds"); got < 1 {
		t.Errorf("no signal latency observed (%v)", got)
	}
	// The Temporal SDK's own metrics come through the contrib handler. (Here the bridge's
	// client shares the worker's connection, whose request metrics the worker counts.)
	var sdk []string
	for name := range w {
		if strings.HasPrefix(name, "temporal_") {
			sdk = append(sdk, name)
		}
	}
	t.Logf("the worker's SDK metrics: %v", sdk)
	if w.sum("temporal_request_total") <= 0 || w.sum("temporal_workflow_completed_total") <= 0 {
		t.Errorf("the worker exports no temporal_request_total or temporal_workflow_completed_total")
	}

	// Every metric the dashboard and the alert rules name is exported.
	names := exported(during, w, b, k)
	for _, q := range dashboardQueries(t) {
		for _, m := range metrics.MetricNames(q) {
			if !names[m] {
				t.Errorf("dashboard query %q names %s, which no program exports", q, m)
			}
		}
	}
	for _, q := range alertQueries(t) {
		for _, m := range metrics.MetricNames(q) {
			if !names[m] {
				t.Errorf("alert rule %q names %s, which no program exports", q, m)
			}
		}
	}
}

func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "otaflow.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var qs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			qs = append(qs, tg.Expr)
		}
	}
	if len(qs) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	return qs
}

func alertQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	var qs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			qs = append(qs, r.Expr)
		}
	}
	if len(qs) == 0 {
		t.Fatal("alerts.yml has no rules")
	}
	return qs
}
