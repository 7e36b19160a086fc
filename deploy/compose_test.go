package deploy

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	mosquittoconf "github.com/otaflow/otaflow/deploy/mosquitto"
	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/dev/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

// repo is the repository root, seen from this package's directory.
const repo = ".."

// loadCompose loads and validates docker-compose.yml (schema, interpolation, references
// between services) with exactly env as the environment: no OS variables, no .env file.
func loadCompose(t *testing.T, env map[string]string) *types.Project {
	t.Helper()
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(repo, "docker-compose.yml")},
		cli.WithEnv(kv), cli.WithInterpolation(true), cli.WithConsistency(true), cli.WithResolvedPaths(true))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q", name)
	}
	return s
}

func env(t *testing.T, s types.ServiceConfig, key string) string {
	t.Helper()
	v, ok := s.Environment[key]
	if !ok || v == nil {
		t.Fatalf("service %s: no %s in its environment", s.Name, key)
	}
	return *v
}

func TestComposeInterpolation(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want map[string]map[string]string // service -> variable -> value
	}{
		{
			name: "defaults",
			env:  nil,
			want: map[string]map[string]string{
				"postgres":        {"POSTGRES_PASSWORD": "otaflow-dev"},
				"temporal":        {"POSTGRES_PWD": "otaflow-dev"},
				"temporal-schema": {"POSTGRES_PWD": "otaflow-dev"},
				"mosquitto":       {"OTAFLOW_MQTT_ADMIN_USER": "otaflow-admin", "OTAFLOW_MQTT_ADMIN_PASSWORD": "admin-dev-secret"},
				"setup": {
					"DATABASE_URL":                 "postgres://otaflow:otaflow-dev@postgres:5432/otaflow?sslmode=disable",
					"TEMPORAL_ADDRESS":             "temporal:7233",
					"TEMPORAL_NAMESPACE":           "default",
					"MQTT_ADMIN_URL":               "tcp://otaflow-admin:admin-dev-secret@mosquitto:1883",
					"OTAFLOW_WORKER_MQTT_PASSWORD": "worker-dev-secret",
					"OTAFLOW_BRIDGE_MQTT_PASSWORD": "bridge-dev-secret",
				},
				"worker": {
					"DATABASE_URL":       "postgres://otaflow:otaflow-dev@postgres:5432/otaflow?sslmode=disable",
					"TEMPORAL_ADDRESS":   "temporal:7233",
					"TEMPORAL_NAMESPACE": "default",
					"MQTT_URL":           "tcp://otaflow-worker:worker-dev-secret@mosquitto:1883",
				},
				"mqttbridge": {"MQTT_URL": "tcp://otaflow-bridge:bridge-dev-secret@mosquitto:1883", "BRIDGE_SHARED": "false",
					"METRICS_LISTEN": ":9465", "BRIDGE_BROKER_METRICS": "true"},
			},
		},
		{
			name: "overrides",
			env: map[string]string{
				"POSTGRES_PASSWORD": "pg-s3cret", "TEMPORAL_NAMESPACE": "fleet", "OTAFLOW_MQTT_ADMIN_PASSWORD": "admin-s3cret",
				"OTAFLOW_WORKER_MQTT_PASSWORD": "w-s3cret", "OTAFLOW_BRIDGE_MQTT_PASSWORD": "b-s3cret", "BRIDGE_SHARED": "true",
			},
			want: map[string]map[string]string{
				"postgres":        {"POSTGRES_PASSWORD": "pg-s3cret"},
				"mosquitto":       {"OTAFLOW_MQTT_ADMIN_PASSWORD": "admin-s3cret"},
				"temporal":        {"POSTGRES_PWD": "pg-s3cret"},
				"temporal-schema": {"POSTGRES_PWD": "pg-s3cret"},
				"setup": {"TEMPORAL_NAMESPACE": "fleet", "DATABASE_URL": "postgres://otaflow:pg-s3cret@postgres:5432/otaflow?sslmode=disable",
					"MQTT_ADMIN_URL": "tcp://otaflow-admin:admin-s3cret@mosquitto:1883", "OTAFLOW_WORKER_MQTT_PASSWORD": "w-s3cret"},
				"temporal-ui": {"TEMPORAL_DEFAULT_NAMESPACE": "fleet"},
				"worker": {
					"DATABASE_URL":       "postgres://otaflow:pg-s3cret@postgres:5432/otaflow?sslmode=disable",
					"TEMPORAL_NAMESPACE": "fleet",
					"MQTT_URL":           "tcp://otaflow-worker:w-s3cret@mosquitto:1883",
				},
				"mqttbridge": {
					"DATABASE_URL":       "postgres://otaflow:pg-s3cret@postgres:5432/otaflow?sslmode=disable",
					"TEMPORAL_NAMESPACE": "fleet",
					"MQTT_URL":           "tcp://otaflow-bridge:b-s3cret@mosquitto:1883",
					"BRIDGE_SHARED":      "true",
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadCompose(t, tt.env)
			for svc, vars := range tt.want {
				s := service(t, p, svc)
				for k, want := range vars {
					if got := env(t, s, k); got != want {
						t.Errorf("service %s: %s = %q, want %q", svc, k, got, want)
					}
				}
			}
			// Nothing is left uninterpolated.
			for name, s := range p.Services {
				for k, v := range s.Environment {
					if v != nil && strings.Contains(*v, "${") {
						t.Errorf("service %s: %s = %q is not interpolated", name, k, *v)
					}
				}
			}
		})
	}
}

// TestComposeServices checks every service: pinned image or an existing build, health checks
// where something waits for them, dependencies that can be met, mounted files that exist.
func TestComposeServices(t *testing.T) {
	p := loadCompose(t, nil)
	deployDir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		t.Run(name, func(t *testing.T) {
			oneShot := s.Restart == "no"
			if s.Build != nil {
				checkBuild(t, s)
			} else if err := pinned(s.Image); err != nil {
				t.Errorf("image: %v", err)
			}
			if !oneShot && (s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) == 0) {
				t.Errorf("a long-running service without a health check")
			}
			if oneShot && len(s.Ports) > 0 {
				t.Errorf("a one-shot service publishes ports")
			}
			for dep, d := range s.DependsOn {
				target, ok := p.Services[dep]
				if !ok {
					t.Errorf("depends on %q, which is not a service", dep)
					continue
				}
				switch d.Condition {
				case types.ServiceConditionHealthy:
					if target.HealthCheck == nil || target.HealthCheck.Disable {
						t.Errorf("waits for %s to be healthy, but it has no health check", dep)
					}
				case types.ServiceConditionCompletedSuccessfully:
					if target.Restart != "no" {
						t.Errorf("waits for %s to complete, but it restarts (%q)", dep, target.Restart)
					}
				default:
					t.Errorf("depends on %s with condition %q: use service_healthy or service_completed_successfully", dep, d.Condition)
				}
			}
			for _, port := range s.Ports {
				if port.HostIP != "127.0.0.1" {
					t.Errorf("port %d published on %q, want 127.0.0.1 only", port.Target, port.HostIP)
				}
			}
			mounted := map[string]bool{}
			for _, v := range s.Volumes {
				mounted[v.Target] = true
				switch v.Type {
				case types.VolumeTypeBind:
					rel, err := filepath.Rel(deployDir, v.Source)
					if err != nil || strings.HasPrefix(rel, "..") {
						t.Errorf("mounts %s, which is not under deploy/", v.Source)
					}
					if fi, err := os.Stat(v.Source); err != nil || !fi.Mode().IsRegular() {
						t.Errorf("mounts %s, which is not a file: %v", v.Source, err)
					}
					if !v.ReadOnly {
						t.Errorf("mounts %s writable; configuration is mounted read-only", v.Source)
					}
				case types.VolumeTypeVolume:
					if _, ok := p.Volumes[v.Source]; !ok {
						t.Errorf("uses volume %q, which is not declared", v.Source)
					}
				}
			}
			// An entrypoint script must be one of the mounted files.
			for _, arg := range s.Entrypoint {
				if strings.HasPrefix(arg, "/otaflow/") && !mounted[arg] {
					t.Errorf("entrypoint runs %s, which is not mounted", arg)
				}
			}
		})
	}
}

// pinned reports whether image names a fixed version: a digest, or a tag other than latest.
func pinned(image string) error {
	if image == "" {
		return errMsg("no image")
	}
	if strings.Contains(image, "@sha256:") {
		return nil
	}
	last := image[strings.LastIndex(image, "/")+1:]
	i := strings.LastIndex(last, ":")
	if i < 0 {
		return errMsg(image + " has no tag: pin a version")
	}
	if tag := last[i+1:]; tag == "" || tag == "latest" {
		return errMsg(image + " is not pinned to a version")
	}
	return nil
}

type errMsg string

func (e errMsg) Error() string { return string(e) }

// checkBuild checks a service built from this repository: its Dockerfile exists and pins its
// base images, and the program its CMD build argument names exists.
func checkBuild(t *testing.T, s types.ServiceConfig) {
	t.Helper()
	dockerfile := s.Build.Dockerfile
	if !filepath.IsAbs(dockerfile) {
		dockerfile = filepath.Join(s.Build.Context, dockerfile)
	}
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	var froms int
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && strings.EqualFold(f[0], "FROM") {
			froms++
			// Distroless publishes only floating tags (nonroot), never latest.
			if err := pinned(f[1]); err != nil {
				t.Errorf("%s: FROM %v", dockerfile, err)
			}
		}
	}
	if froms == 0 {
		t.Errorf("%s has no FROM", dockerfile)
	}
	cmd, ok := s.Build.Args["CMD"]
	if !ok || cmd == nil || *cmd == "" {
		t.Fatalf("build: no CMD build argument naming the program")
	}
	for _, dir := range []string{*cmd, "deploy/healthcheck"} {
		if _, err := os.Stat(filepath.Join(s.Build.Context, dir, "main.go")); err != nil {
			t.Errorf("the image builds ./%s, which has no main.go: %v", dir, err)
		}
	}
}

// TestComposeServiceAccounts checks that the worker and the bridge log in to the broker with
// the service accounts internal/brokeraccounts provisions, and that a service that gives
// their passwords to the provisioning (the setup) gives the ones in their MQTT_URL.
func TestComposeServiceAccounts(t *testing.T) {
	p := loadCompose(t, map[string]string{"OTAFLOW_WORKER_MQTT_PASSWORD": "w-pw", "OTAFLOW_BRIDGE_MQTT_PASSWORD": "b-pw"})
	for _, tt := range []struct {
		service, user, password, passwordVar string
	}{
		{"worker", brokeraccounts.WorkerAccount, "w-pw", brokeraccounts.EnvWorkerPassword},
		{"mqttbridge", brokeraccounts.BridgeAccount, "b-pw", brokeraccounts.EnvBridgePassword},
	} {
		u, err := url.Parse(env(t, service(t, p, tt.service), "MQTT_URL"))
		if err != nil {
			t.Fatalf("%s: MQTT_URL: %v", tt.service, err)
		}
		pw, _ := u.User.Password()
		if u.User.Username() != tt.user || pw != tt.password || u.Host != "mosquitto:1883" {
			t.Errorf("%s logs in as %q at %s with the password of %s? got %q at %q, password matches %v",
				tt.service, tt.user, "mosquitto:1883", tt.passwordVar, u.User.Username(), u.Host, pw == tt.password)
		}
		for name, s := range p.Services {
			if v, ok := s.Environment[tt.passwordVar]; ok && (v == nil || *v != tt.password) {
				t.Errorf("service %s gives %s another value than %s's MQTT_URL", name, tt.passwordVar, tt.service)
			}
		}
	}
}

// TestComposeMosquittoMatchesNative: the compose file's broker is the one the tests run
// natively (internal/dev/localstack.StartMosquitto): the same version, exactly the configuration
// files of deploy/mosquitto at the paths mosquitto.conf names, its state in a volume, started
// by start.sh.
func TestComposeMosquittoMatchesNative(t *testing.T) {
	p := loadCompose(t, nil)
	m := service(t, p, "mosquitto")
	if want := "eclipse-mosquitto:" + mosquittoconf.Version; m.Image != want {
		t.Errorf("image %q, want %q (the version the tests run natively)", m.Image, want)
	}
	if want := []string{"/bin/sh", mosquittoconf.ConfigDir + mosquittoconf.StartFile}; !slices.Equal(m.Command, want) {
		t.Errorf("command %q, want %q", m.Command, want)
	}
	deployDir, err := filepath.Abs("mosquitto")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{} // target -> source
	var data []string
	for _, v := range m.Volumes {
		switch v.Type {
		case types.VolumeTypeBind:
			files[v.Target] = v.Source
		case types.VolumeTypeVolume:
			data = append(data, v.Target)
		}
	}
	want := map[string]string{}
	for _, name := range mosquittoconf.Names() {
		want[mosquittoconf.ConfigDir+name] = filepath.Join(deployDir, name)
	}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("the broker mounts %v, want exactly the files the native broker runs: %v", files, want)
	}
	if want := []string{strings.TrimSuffix(mosquittoconf.DataDir, "/")}; !slices.Equal(data, want) {
		t.Errorf("the broker's volumes are mounted at %v, want %v (persistence_location)", data, want)
	}
	if len(m.Ports) != 1 || m.Ports[0].Target != mosquittoconf.Port {
		t.Errorf("ports %v, want the listener's %d", m.Ports, mosquittoconf.Port)
	}
	if m.HealthCheck == nil || !strings.Contains(strings.Join(m.HealthCheck.Test, " "), "mosquitto_sub") {
		t.Errorf("the health check does not log in to the broker: %v", m.HealthCheck)
	}
	for _, v := range []string{"OTAFLOW_MQTT_ADMIN_USER", "OTAFLOW_MQTT_ADMIN_PASSWORD"} {
		env(t, m, v) // start.sh creates the administrator from them
	}

	// The health check, run against the native broker (port substituted), passes; with a wrong
	// password it fails.
	if len(m.HealthCheck.Test) != 2 || m.HealthCheck.Test[0] != "CMD-SHELL" {
		t.Fatalf("health check %q: want CMD-SHELL and one command", m.HealthCheck.Test)
	}
	check := strings.Replace(m.HealthCheck.Test[1], fmt.Sprintf("-p %d ", mosquittoconf.Port), "-p PORT ", 1)
	if !strings.Contains(check, "-p PORT ") {
		t.Fatalf("the health check %q does not name the port %d", m.HealthCheck.Test[1], mosquittoconf.Port)
	}
	native := testenv.Mosquitto(t)
	user, password := native.Admin()
	for _, tt := range []struct {
		password string
		ok       bool
	}{{password, true}, {"wrong", false}} {
		cmd := exec.Command("/bin/sh", "-c", strings.Replace(check, "PORT", strconv.Itoa(native.Port()), 1))
		cmd.Env = append(os.Environ(), "OTAFLOW_MQTT_ADMIN_USER="+user, "OTAFLOW_MQTT_ADMIN_PASSWORD="+tt.password)
		out, err := cmd.CombinedOutput()
		if (err == nil) != tt.ok {
			t.Errorf("the health check with the password %s: %v, want success %v; output: %s", map[bool]string{true: "right", false: "wrong"}[tt.ok], err, tt.ok, out)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
