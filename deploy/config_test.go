package deploy

import (
	"bufio"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	mosquittoconf "github.com/otaflow/otaflow/deploy/mosquitto"
	"github.com/otaflow/otaflow/internal/protocol"
)

// aclRule is one rule of the broker's acl file.
type aclRule struct{ access, topic string }

// parseACL reads deploy/mosquitto/acl, refusing anything but pattern lines: a user or topic
// line would give one account rights by name, which belong in the plugin's roles.
func parseACL(t *testing.T) []aclRule {
	t.Helper()
	var rules []aclRule
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "mosquitto/acl")))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "pattern" {
			t.Fatalf("mosquitto/acl line %d: %q: only `pattern ACCESS TOPIC` lines", n, line)
		}
		rules = append(rules, aclRule{f[1], f[2]})
	}
	return rules
}

// TestACLMatchesProtocol: a device (%u, its username = device ID) reads its own commands and
// cancellations and writes its own reports, nothing else (PROTOCOL.md 1.1).
func TestACLMatchesProtocol(t *testing.T) {
	const u = "%u"
	want := []aclRule{
		{"read", protocol.CommandTopic(u)},
		{"read", protocol.CancelTopic(u)},
		{"write", protocol.ProgressTopic(u)},
		{"write", protocol.StatusTopic(u)},
	}
	if got := parseACL(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("mosquitto/acl:\n got %v\nwant %v", got, want)
	}
}

// confLine is one option of mosquitto.conf.
type confLine struct {
	n          int
	key, value string
}

// parseConf reads deploy/mosquitto/mosquitto.conf: its options in order.
func parseConf(t *testing.T) []confLine {
	t.Helper()
	var conf []confLine
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "mosquitto/mosquitto.conf")))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, _ := strings.Cut(line, " ")
		conf = append(conf, confLine{n, key, strings.TrimSpace(value)})
	}
	return conf
}

func values(conf []confLine, key string) []string {
	var v []string
	for _, c := range conf {
		if c.key == key {
			v = append(v, c.value)
		}
	}
	return v
}

func TestMosquittoConf(t *testing.T) {
	conf := parseConf(t)
	tests := []struct{ option, want string }{
		{"per_listener_settings", "false"},
		{"allow_anonymous", "false"},
		{"listener", mosquittoconf.Listener[len("listener "):]},
		{"plugin", mosquittoconf.PluginPath},
		{"plugin_opt_config_file", mosquittoconf.DataDir + "dynamic-security.json"},
		{"acl_file", mosquittoconf.ConfigDir + mosquittoconf.ACLFile},
		{"persistence", "true"},
		{"persistence_location", mosquittoconf.DataDir},
	}
	for _, tt := range tests {
		if got := values(conf, tt.option); len(got) != 1 || got[0] != tt.want {
			t.Errorf("mosquitto.conf: %s = %q, want %q", tt.option, got, tt.want)
		}
	}

	// Mosquitto resets the plugin at each included file: the plugin's options must follow its
	// plugin line in this file, and nothing may be included.
	plugin := -1
	for i, c := range conf {
		switch {
		case c.key == "plugin":
			plugin = i
		case strings.HasPrefix(c.key, "plugin_opt_") || strings.HasPrefix(c.key, "auth_opt_"):
			if plugin < 0 {
				t.Errorf("mosquitto.conf line %d: %s before the plugin line", c.n, c.key)
			}
		case c.key == "include_dir" || c.key == "auth_plugin" || c.key == "password_file":
			t.Errorf("mosquitto.conf line %d: %s: the accounts are the dynamic-security plugin's alone", c.n, c.key)
		}
	}
}

// TestMosquittoQueueLimits: the queues hold a bridge outage of 10 minutes of a 10,000-device
// fleet reporting as often as PROTOCOL.md allows (once a second), limited by bytes.
func TestMosquittoQueueLimits(t *testing.T) {
	conf := parseConf(t)
	number := func(option string) int64 {
		v := values(conf, option)
		if len(v) != 1 {
			t.Fatalf("mosquitto.conf: %s given %d times, want once", option, len(v))
		}
		n, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil {
			t.Fatalf("mosquitto.conf: %s %q: %v", option, v[0], err)
		}
		return n
	}
	// A typical progress report (Mosquitto counts payload bytes only).
	report, err := json.Marshal(protocol.Progress{ID: "c1f3a2e0-5b7d-4c1e-9f3a-2b7d4c1e9f3a", Type: "firmware",
		Version: "1.1.0", Progress: 42, Desc: "downloading"})
	if err != nil {
		t.Fatal(err)
	}
	const devices, seconds = 10_000, 600
	reports := int64(devices * seconds)
	need := reports * int64(len(report))
	maxBytes, maxMessages := number("max_queued_bytes"), number("max_queued_messages")
	t.Logf("%d reports of %d bytes: %d MB; max_queued_bytes %d MB", reports, len(report), need>>20, maxBytes>>20)
	if maxBytes < need {
		t.Errorf("max_queued_bytes %d holds less than %d reports of %d bytes (%d)", maxBytes, reports, len(report), need)
	}
	// The count must not bind before the bytes, and must not be 0 (see mosquitto.conf).
	if maxMessages < maxBytes/int64(len(report)) {
		t.Errorf("max_queued_messages %d binds before max_queued_bytes %d (%d reports of %d bytes)",
			maxMessages, maxBytes, maxBytes/int64(len(report)), len(report))
	}
	if v := values(conf, "autosave_on_changes"); len(v) > 0 && v[0] == "true" {
		t.Errorf("autosave_on_changes true: autosave_interval must count seconds (README states what a crash loses)")
	}
}

// TestMosquittoFilesEmbedded: the Go package embeds every file of deploy/mosquitto but itself,
// so that the native topology runs all of them.
func TestMosquittoFilesEmbedded(t *testing.T) {
	entries, err := os.ReadDir("mosquitto")
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") {
			files = append(files, e.Name())
		}
	}
	want := mosquittoconf.Names()
	slices.Sort(files)
	slices.Sort(want)
	if !slices.Equal(files, want) {
		t.Fatalf("deploy/mosquitto holds %v, the package embeds %v", files, want)
	}
}
