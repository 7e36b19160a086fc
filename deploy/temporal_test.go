package deploy

import (
	"io/fs"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"

	temporalconfig "github.com/otaflow/otaflow/deploy/temporal"
	"github.com/otaflow/otaflow/internal/dev/localstack"
)

// TestComposeTemporalMatchesNativeTopology checks that docker-compose.yml runs the Temporal
// server as the native topology (internal/dev/localstack) does: the same version, and exactly
// the configuration files localstack embeds from deploy/temporal, mounted where the server's
// command line and environment look for them.
func TestComposeTemporalMatchesNativeTopology(t *testing.T) {
	p := loadCompose(t, nil)
	temporalDir, err := filepath.Abs("temporal")
	if err != nil {
		t.Fatal(err)
	}
	// The files the native topology writes and runs.
	entries, err := fs.ReadDir(temporalconfig.Files, ".")
	if err != nil {
		t.Fatal(err)
	}
	var native []string
	for _, e := range entries {
		native = append(native, e.Name())
	}

	// Every file of deploy/temporal the compose file mounts, by service.
	mounted := map[string]map[string]string{} // service -> file name -> target
	var all []string
	for _, name := range p.ServiceNames() {
		for _, v := range p.Services[name].Volumes {
			if v.Type != types.VolumeTypeBind || filepath.Dir(v.Source) != temporalDir {
				continue
			}
			if mounted[name] == nil {
				mounted[name] = map[string]string{}
			}
			mounted[name][filepath.Base(v.Source)] = v.Target
			all = append(all, filepath.Base(v.Source))
		}
	}
	slices.Sort(all)
	all = slices.Compact(all)
	if !slices.Equal(all, native) {
		t.Errorf("docker-compose.yml mounts %v from deploy/temporal; the native topology runs %v", all, native)
	}

	server := service(t, p, "temporal")
	schema := service(t, p, "temporal-schema")
	wantServer := []string{temporalconfig.ConfigFile, temporalconfig.DynamicConfigFile}
	wantServer = sortedStrings(wantServer)
	if got := slices.Sorted(maps.Keys(mounted["temporal"])); !slices.Equal(got, wantServer) {
		t.Errorf("the temporal service mounts %v, want %v", got, wantServer)
	}
	if got := slices.Sorted(maps.Keys(mounted["temporal-schema"])); !slices.Equal(got, []string{temporalconfig.SchemaScript}) {
		t.Errorf("the temporal-schema service mounts %v, want only %s", got, temporalconfig.SchemaScript)
	}

	// Versions: the server image and the admin tools are the release localstack builds.
	version := strings.TrimPrefix(localstack.TemporalServerVersion, "v")
	if server.Image != "temporalio/server:"+version {
		t.Errorf("temporal runs %s, want temporalio/server:%s", server.Image, version)
	}
	if !strings.HasPrefix(schema.Image, "temporalio/admin-tools:"+version+"-") {
		t.Errorf("temporal-schema runs %s, want temporalio/admin-tools:%s-...", schema.Image, version)
	}

	// The server reads production.yaml from --root/--config as the environment --env, as
	// localstack starts it, and the dynamic configuration from the absolute path mounted.
	args := map[string]string{}
	for i := 0; i+1 < len(server.Entrypoint); i++ {
		if strings.HasPrefix(server.Entrypoint[i], "--") {
			args[server.Entrypoint[i]] = server.Entrypoint[i+1]
		}
	}
	if len(server.Entrypoint) == 0 || server.Entrypoint[0] != "temporal-server" || server.Entrypoint[len(server.Entrypoint)-1] != "start" ||
		!slices.Contains(server.Entrypoint, "--allow-no-auth") {
		t.Errorf("the temporal service runs %v, want temporal-server ... --allow-no-auth start", server.Entrypoint)
	}
	configPath := path.Join(args["--root"], args["--config"], args["--env"]+".yaml")
	if args["--env"] != temporalconfig.Environment || mounted["temporal"][temporalconfig.ConfigFile] != configPath {
		t.Errorf("the server reads %s (--env %s), where %s is mounted at %s", configPath, args["--env"],
			temporalconfig.ConfigFile, mounted["temporal"][temporalconfig.ConfigFile])
	}
	dynamic := env(t, server, "DYNAMIC_CONFIG_FILE_PATH")
	if !path.IsAbs(dynamic) || dynamic != mounted["temporal"][temporalconfig.DynamicConfigFile] {
		t.Errorf("DYNAMIC_CONFIG_FILE_PATH is %q, want the absolute path where %s is mounted (%s)", dynamic,
			temporalconfig.DynamicConfigFile, mounted["temporal"][temporalconfig.DynamicConfigFile])
	}
	if want := []string{"/bin/sh", mounted["temporal-schema"][temporalconfig.SchemaScript]}; !slices.Equal(schema.Entrypoint, want) {
		t.Errorf("the temporal-schema service runs %v, want %v", schema.Entrypoint, want)
	}

	// The health check asks the HTTP API the native topology's test asks too.
	if hc := server.HealthCheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), ":7243"+temporalconfig.HealthPath) {
		t.Errorf("the temporal health check does not ask %s on port 7243", temporalconfig.HealthPath)
	}

	// The schema job makes the databases the server uses.
	for _, k := range []string{"POSTGRES_SEEDS", "DB_PORT", "POSTGRES_USER", "POSTGRES_PWD", "DBNAME", "VISIBILITY_DBNAME"} {
		a, b := server.Environment[k], schema.Environment[k]
		if (a == nil) != (b == nil) || (a != nil && *a != *b) {
			t.Errorf("%s differs between the server and the schema job", k)
		}
	}
	if d, ok := server.DependsOn["temporal-schema"]; !ok || d.Condition != types.ServiceConditionCompletedSuccessfully {
		t.Errorf("the server does not wait for the schema job to complete")
	}

	// Nothing starts the worker or the bridge before the setup step completed, and the setup
	// step runs once the server is healthy.
	setupSvc := service(t, p, "setup")
	if setupSvc.Build == nil || setupSvc.Build.Args["CMD"] == nil || *setupSvc.Build.Args["CMD"] != "starter" ||
		len(setupSvc.Command) == 0 || setupSvc.Command[0] != "setup" {
		t.Errorf("the setup service runs %v of CMD %v, want `starter setup`", setupSvc.Command, setupSvc.Build)
	}
	if d, ok := setupSvc.DependsOn["temporal"]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("the setup service does not wait for a healthy Temporal server")
	}
	for _, name := range []string{"worker", "mqttbridge"} {
		if d, ok := service(t, p, name).DependsOn["setup"]; !ok || d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s does not wait for the setup service to complete", name)
		}
	}
}

func sortedStrings(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
