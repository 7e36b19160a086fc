package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// promtool returns the path of Debian's promtool (package prometheus), which ./scripts/test
// installs when it is missing.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is missing: apt-get install -y prometheus (./scripts/test does as root): %v", err)
	}
	return p
}

func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPrometheusRules checks the alert rules and the Prometheus configuration with promtool,
// and runs the rules' unit tests, which fire each alert on synthetic series.
func TestPrometheusRules(t *testing.T) {
	runPromtool(t, "check", "rules", "alerts.yml")
	runPromtool(t, "check", "config", "prometheus.yml")
	out := runPromtool(t, "test", "rules", "alerts_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules did not succeed:\n%s", out)
	}
	// Every alert has a unit test that expects it to fire.
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, "prometheus/alerts.yml")), &rules); err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, "prometheus/alerts_test.yml")), &tests); err != nil {
		t.Fatal(err)
	}
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if !fired[r.Alert] {
				t.Errorf("alert %s: no unit test in alerts_test.yml expects it to fire", r.Alert)
			}
		}
	}
	if n < 10 {
		t.Errorf("alerts.yml has %d alerts, want at least 10", n)
	}
}

// TestComposeMonitoring checks that the compose file runs the Prometheus version whose
// promtool the tests use, mounts the files they check where the configuration looks for
// them, and provisions Grafana with the dashboard and a datasource of the uid it names.
func TestComposeMonitoring(t *testing.T) {
	p := loadCompose(t, nil)
	prom := service(t, p, "prometheus")
	out, err := exec.Command(promtool(t), "--version").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`version (\d+\.\d+\.\d+)`).FindStringSubmatch(string(out))
	if m == nil || !strings.HasSuffix(prom.Image, ":v"+m[1]) {
		t.Errorf("prometheus image %s, want the version of the native promtool (%s)", prom.Image, strings.TrimSpace(string(out)))
	}
	mounts := func(svc string) map[string]string {
		got := map[string]string{}
		for _, v := range service(t, p, svc).Volumes {
			if v.Type == "bind" {
				rel, _ := filepath.Rel(mustAbs(t, "."), v.Source)
				got[filepath.ToSlash(rel)] = v.Target
			}
		}
		return got
	}
	want := map[string]map[string]string{
		"prometheus": {"prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml", "prometheus/alerts.yml": "/etc/prometheus/alerts.yml"},
		"grafana": {"grafana/datasource.yml": "/etc/grafana/provisioning/datasources/otaflow.yml",
			"grafana/dashboards.yml": "/etc/grafana/provisioning/dashboards/otaflow.yml",
			"grafana/otaflow.json":   "/etc/grafana/provisioning/dashboards/otaflow/otaflow.json"},
	}
	for svc, files := range want {
		got := mounts(svc)
		for src, target := range files {
			if got[src] != target {
				t.Errorf("%s mounts deploy/%s at %q, want %s", svc, src, got[src], target)
			}
		}
	}
	// Prometheus scrapes every running service that serves metrics (METRICS_LISTEN :PORT) at
	// SERVICE:PORT (the one-shot setup inherits the variable and serves nothing); the bridge's
	// include the broker's (BRIDGE_BROKER_METRICS).
	var conf struct {
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, "prometheus/prometheus.yml")), &conf); err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	for _, sc := range conf.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				targets[target] = true
			}
		}
	}
	serving := 0
	for name, svc := range p.Services {
		if v, ok := svc.Environment["METRICS_LISTEN"]; ok && v != nil && *v != "" && svc.Restart != "no" {
			serving++
			if target := name + *v; !strings.HasPrefix(*v, ":") || !targets[target] {
				t.Errorf("service %s serves metrics on %q, but prometheus.yml does not scrape %s", name, *v, target)
			}
		}
	}
	if serving < 2 {
		t.Errorf("%d services serve metrics, want the worker and the bridge at least", serving)
	}
	if v := service(t, p, "mqttbridge").Environment["BRIDGE_BROKER_METRICS"]; v == nil || *v != "true" {
		t.Error("the bridge does not export the broker's metrics (BRIDGE_BROKER_METRICS=true)")
	}
	// The rule file sits beside the configuration, which names it relatively.
	if !strings.Contains(readFile(t, "prometheus/prometheus.yml"), "- alerts.yml") {
		t.Error("prometheus.yml does not load alerts.yml from beside itself")
	}
	// Grafana: the provider reads the directory the dashboard is mounted in, and the
	// dashboard's queries use the provisioned datasource.
	var provider struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, "grafana/dashboards.yml")), &provider); err != nil || len(provider.Providers) != 1 {
		t.Fatalf("dashboards.yml: %v", err)
	}
	if dir := provider.Providers[0].Options.Path; dir != filepath.Dir(want["grafana"]["grafana/otaflow.json"]) {
		t.Errorf("dashboards.yml reads %s, but the dashboard is mounted in %s", dir, filepath.Dir(want["grafana"]["grafana/otaflow.json"]))
	}
	var ds struct {
		Datasources []struct {
			UID string `yaml:"uid"`
			URL string `yaml:"url"`
		} `yaml:"datasources"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, "grafana/datasource.yml")), &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("datasource.yml: %v", err)
	}
	if ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("the datasource points at %s, not the prometheus service", ds.Datasources[0].URL)
	}
	d := LoadDashboard(t, filepath.Join(".", "grafana", "otaflow.json"))
	if len(d.Queries) < 20 {
		t.Errorf("the dashboard has %d queries, want the fleet, rollouts, bridge and notifications covered", len(d.Queries))
	}
	for _, uid := range d.DatasourceUIDs {
		if uid != ds.Datasources[0].UID {
			t.Errorf("the dashboard uses datasource %q, not the provisioned %q", uid, ds.Datasources[0].UID)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Dashboard is what the tests read of a Grafana dashboard: its queries and the datasources
// they name.
type Dashboard struct {
	Queries        []string
	DatasourceUIDs []string
}

// LoadDashboard reads a dashboard's JSON.
func LoadDashboard(t *testing.T, path string) Dashboard {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr       string `json:"expr"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Type    string   `json:"type"`
		Targets []target `json:"targets"`
	}
	var raw struct {
		UID    string  `json:"uid"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var d Dashboard
	for _, p := range raw.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			d.Queries = append(d.Queries, tg.Expr)
			d.DatasourceUIDs = append(d.DatasourceUIDs, tg.Datasource.UID)
		}
	}
	return d
}
