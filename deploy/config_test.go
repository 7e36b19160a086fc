package deploy

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"path"
	"reflect"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/protocol"
)

// aclRule is one topic line of the broker's ACL file.
type aclRule struct{ access, topic string }

// parseACL reads deploy/mosquitto/acl: user -> rules, refusing lines that would apply to
// every client (pattern lines, topics before the first user).
func parseACL(t *testing.T) map[string][]aclRule {
	t.Helper()
	rules := map[string][]aclRule{}
	user := ""
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "mosquitto/acl")))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		switch {
		case f[0] == "user" && len(f) == 2:
			user = f[1]
			rules[user] = nil
		case f[0] == "topic" && len(f) == 3 && user != "":
			rules[user] = append(rules[user], aclRule{f[1], f[2]})
		default:
			t.Fatalf("mosquitto/acl line %d: %q: only `user NAME` and, after it, `topic ACCESS TOPIC` lines", n, line)
		}
	}
	return rules
}

func TestACLMatchesProtocol(t *testing.T) {
	want := map[string][]aclRule{
		workerUser: {{"write", protocol.CommandTopic("+")}},
		bridgeUser: {
			{"read", protocol.ProgressFilter},
			{"read", protocol.StatusFilter},
			{"read", protocol.SharedFilter(protocol.ProgressFilter)},
			{"read", protocol.SharedFilter(protocol.StatusFilter)},
		},
	}
	if got := parseACL(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("mosquitto/acl:\n got %v\nwant %v", got, want)
	}
}

// parseConf reads deploy/mosquitto/mosquitto.conf: option -> values, in order.
func parseConf(t *testing.T) map[string][]string {
	t.Helper()
	conf := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "mosquitto/mosquitto.conf")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, _ := strings.Cut(line, " ")
		conf[key] = append(conf[key], strings.TrimSpace(value))
	}
	return conf
}

func TestMosquittoConf(t *testing.T) {
	conf := parseConf(t)
	p := loadCompose(t, nil)
	mosquitto := service(t, p, "mosquitto")
	mounts := map[string]string{} // target -> source (file) or volume name
	for _, v := range mosquitto.Volumes {
		mounts[v.Target] = v.Source
	}

	// The hasher settings are those of internal/credential, read from a hash it makes.
	hash, err := credential.Hash("x")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(hash, "$") // "", argon2id, v=19, m=..,t=..,p=.., salt, key
	var m, tm, pl int
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &tm, &pl); err != nil {
		t.Fatalf("credential.Hash made %q: %v", hash, err)
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if parts[1] != "argon2id" || err1 != nil || err2 != nil {
		t.Fatalf("credential.Hash made %q, not an argon2id PHC string with unpadded base64", hash)
	}

	tests := []struct{ option, want string }{
		{"allow_anonymous", "false"},
		{"auth_plugin", "/mosquitto/go-auth.so"},
		{"auth_opt_backends", "files, postgres"},
		{"auth_opt_hasher", "argon2id"},
		{"auth_opt_hasher_memory", fmt.Sprint(m)},
		{"auth_opt_hasher_iterations", fmt.Sprint(tm)},
		{"auth_opt_hasher_parallelism", fmt.Sprint(pl)},
		{"auth_opt_hasher_salt_size", fmt.Sprint(len(salt))},
		{"auth_opt_hasher_keylen", fmt.Sprint(len(key))},
		{"auth_opt_disable_superuser", "true"},
		// Files the compose file provides.
		{"auth_opt_files_acl_path", "/etc/mosquitto/acl"},
		{"auth_opt_files_password_path", "/mosquitto/auth/passwords"},
		{"include_dir", "/mosquitto/auth/conf.d"},
		// The database and role of the compose file and of mqtt-auth.sql.
		{"auth_opt_pg_host", "postgres"},
		{"auth_opt_pg_port", "5432"},
		{"auth_opt_pg_dbname", env(t, service(t, p, "postgres"), "POSTGRES_DB")},
		{"auth_opt_pg_user", "mqtt_auth"},
		{"auth_opt_pg_sslmode", "disable"},
		{"persistence", "true"},
	}
	for _, tt := range tests {
		if got := conf[tt.option]; len(got) != 1 || got[0] != tt.want {
			t.Errorf("mosquitto.conf: %s = %q, want %q", tt.option, got, tt.want)
		}
	}
	if _, ok := conf["auth_opt_pg_password"]; ok {
		t.Errorf("mosquitto.conf holds the database password; it belongs in the generated conf.d file")
	}

	// The paths are where the compose file puts the files.
	if !strings.HasSuffix(mounts["/etc/mosquitto/acl"], "/deploy/mosquitto/acl") {
		t.Errorf("the ACL file is not mounted at /etc/mosquitto/acl: %v", mounts)
	}
	if !strings.HasSuffix(mounts["/etc/mosquitto/mosquitto.conf"], "/deploy/mosquitto/mosquitto.conf") {
		t.Errorf("mosquitto.conf is not mounted at /etc/mosquitto/mosquitto.conf: %v", mounts)
	}
	authVolume := mounts[path.Dir(conf["auth_opt_files_password_path"][0])]
	if authVolume == "" {
		t.Fatalf("nothing is mounted at %s", path.Dir(conf["auth_opt_files_password_path"][0]))
	}
	initMounts := map[string]string{}
	for _, v := range service(t, p, "mqtt-auth-init").Volumes {
		initMounts[v.Source] = v.Target
	}
	script := readFile(t, "mosquitto/init-auth.sh")
	out := initMounts[authVolume]
	if out == "" || !strings.Contains(script, "out="+out+"\n") ||
		!strings.Contains(script, `"$out/passwords"`) || !strings.Contains(script, `"$out/conf.d/pg-password.conf"`) ||
		!strings.Contains(script, "auth_opt_pg_password") {
		t.Errorf("init-auth.sh does not write passwords and conf.d/pg-password.conf (auth_opt_pg_password) into the volume %s the broker reads", authVolume)
	}
}
