package deploy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/testenv"
)

// Mosquitto's access codes, as mosquitto-go-auth passes them to the ACL query.
const (
	aclRead      = 1
	aclWrite     = 2
	aclSubscribe = 4
)

// TestBrokerSQL installs mqtt-auth.sql as the postgres image does (before the store's
// migrations create the devices table), then runs the broker's queries from mosquitto.conf
// as its role, with the arguments mosquitto-go-auth passes, against devices registered with
// internal/credential hashes.
func TestBrokerSQL(t *testing.T) {
	ctx := context.Background()
	dbURL := testenv.DatabaseURL(t)
	admin, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(ctx) })

	// The role is cluster-wide: give it a name of this run, and remove it afterwards.
	role := fmt.Sprintf("mqtt_auth_t%d", os.Getpid())
	const rolePassword = "role-pw-for-test"
	script := readFile(t, "postgres/mqtt-auth.sql")
	script = strings.ReplaceAll(script, ":'mqtt_auth_password'", "'"+rolePassword+"'")
	script = regexp.MustCompile(`\bmqtt_auth\b`).ReplaceAllString(script, role)
	if _, err := admin.Exec(ctx, script); err != nil {
		t.Fatalf("mqtt-auth.sql on an empty database: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(ctx, `DROP OWNED BY `+role+`; DROP ROLE `+role); err != nil {
			t.Logf("remove role %s: %v", role, err)
		}
	})

	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	secrets := map[string]string{}
	for _, d := range []struct {
		id       string
		disabled bool
		noSecret bool
	}{{id: "dev-1"}, {id: "dev-2"}, {id: "dev-off", disabled: true}, {id: "dev-nosecret", noSecret: true},
		{id: workerUser}, {id: bridgeUser}} {
		hash := ""
		if !d.noSecret {
			secret, err := credential.NewSecret()
			if err != nil {
				t.Fatal(err)
			}
			if hash, err = credential.Hash(secret); err != nil {
				t.Fatal(err)
			}
			secrets[d.id] = secret
		}
		if err := st.AddDevice(ctx, d.id, hash, nil); err != nil {
			t.Fatal(err)
		}
		if d.disabled {
			if err := st.SetDisabled(ctx, d.id, true); err != nil {
				t.Fatal(err)
			}
		}
	}

	conf := parseConf(t)
	userQuery, aclQuery := conf["auth_opt_pg_userquery"][0], conf["auth_opt_pg_aclquery"][0]
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, rolePassword)
	broker, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatalf("connect as the broker's role: %v", err)
	}
	defer broker.Close(ctx)

	tests := []struct {
		user     string
		canLogIn bool // the user query returns the hash of the device's secret
		topics   bool // the ACL query returns the device's topics
	}{
		{user: "dev-1", canLogIn: true, topics: true},
		{user: "dev-2", canLogIn: true, topics: true},
		{user: "dev-off"},
		// Without a secret a device cannot log in; its topics are then of no use to anyone.
		{user: "dev-nosecret", topics: true},
		{user: "unknown"},
		// Devices registered under the service accounts' names get nothing from the database.
		{user: workerUser},
		{user: bridgeUser},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			var hash sql.NullString
			if err := broker.QueryRow(ctx, userQuery, tt.user).Scan(&hash); err != nil && !errors.Is(err, pgx.ErrNoRows) {
				t.Fatalf("user query: %v", err)
			}
			if hash.Valid != tt.canLogIn {
				t.Fatalf("user query returned a hash: %v, want %v", hash.Valid, tt.canLogIn)
			}
			if tt.canLogIn {
				ok, err := credential.Verify(hash.String, secrets[tt.user])
				if err != nil || !ok {
					t.Fatalf("the hash the broker reads does not verify the device's secret: %v, %v", ok, err)
				}
				if ok, _ := credential.Verify(hash.String, secrets[tt.user]+"x"); ok {
					t.Fatal("a wrong secret verifies")
				}
			}
			want := map[int][]string{}
			if tt.topics {
				want = map[int][]string{
					aclRead:      {protocol.CommandTopic(tt.user)},
					aclSubscribe: {protocol.CommandTopic(tt.user)},
					aclWrite:     {protocol.ProgressTopic(tt.user), protocol.StatusTopic(tt.user)},
				}
			}
			for _, access := range []int{aclRead, aclWrite, aclSubscribe} {
				rows, err := broker.Query(ctx, aclQuery, tt.user, int32(access))
				if err != nil {
					t.Fatalf("ACL query: %v", err)
				}
				topics, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatalf("ACL query: %v", err)
				}
				for i := range topics {
					// The broker substitutes the username, the device ID, for %u.
					topics[i] = strings.ReplaceAll(topics[i], "%u", tt.user)
				}
				sort.Strings(topics)
				sort.Strings(want[access])
				if len(topics) != len(want[access]) || (len(topics) > 0 && !reflect.DeepEqual(topics, want[access])) {
					t.Errorf("access %d: topics %v, want %v", access, topics, want[access])
				}
			}
		})
	}

	// The broker's role reads nothing but through the two functions.
	_, err = broker.Exec(ctx, `SELECT count(*) FROM public.devices`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("the broker's role reads the devices table directly: %v, want permission denied", err)
	}
}

// TestBrokerSQLWithPsql runs mqtt-auth.sql through psql, as 10-mqtt-auth.sh does, to check
// that psql fills in the role's password.
func TestBrokerSQLWithPsql(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
		if len(found) == 0 {
			t.Skip("psql not found")
		}
		psql = found[len(found)-1]
	}
	initScript := readFile(t, "postgres/10-mqtt-auth.sh")
	if !strings.Contains(initScript, `-v mqtt_auth_password="$MQTT_AUTH_DB_PASSWORD" -f /otaflow/mqtt-auth.sql`) ||
		!strings.Contains(initScript, "-v ON_ERROR_STOP=1") {
		t.Fatalf("10-mqtt-auth.sh no longer runs psql as this test does; update the test")
	}
	ctx := context.Background()
	dbURL := testenv.DatabaseURL(t)
	role := fmt.Sprintf("mqtt_auth_p%d", os.Getpid())
	script := regexp.MustCompile(`\bmqtt_auth\b`).ReplaceAllString(readFile(t, "postgres/mqtt-auth.sql"), role)
	cmd := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "mqtt_auth_password=it's a secret", "-f", "-", dbURL)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("psql -f mqtt-auth.sql: %v\n%s", err, out)
	}
	admin, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	defer func() {
		if _, err := admin.Exec(ctx, `DROP OWNED BY `+role+`; DROP ROLE `+role); err != nil {
			t.Logf("remove role %s: %v", role, err)
		}
	}()
	var hasPassword, canLogin bool
	if err := admin.QueryRow(ctx, `SELECT rolpassword IS NOT NULL, rolcanlogin FROM pg_authid WHERE rolname = $1`, role).
		Scan(&hasPassword, &canLogin); err != nil {
		t.Fatal(err)
	}
	if !hasPassword || !canLogin {
		t.Fatalf("role %s: password set %v, can log in %v; want both", role, hasPassword, canLogin)
	}
}
