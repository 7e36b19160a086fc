package localstack

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	mosquittoconf "github.com/otaflow/otaflow/deploy/mosquitto"
)

// TestMosquittoConfig: the native configuration is deploy/mosquitto's, line for line, except
// for the listener and the paths.
func TestMosquittoConfig(t *testing.T) {
	got, err := MosquittoConfig(18831, "/tmp/x/config", "/tmp/x", "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := fs.ReadFile(mosquittoconf.Files, mosquittoconf.ConfFile)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"listener 1883 0.0.0.0":                                        "listener 18831 127.0.0.1",
		"plugin /usr/lib/mosquitto_dynamic_security.so":                "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
		"plugin_opt_config_file /mosquitto/data/dynamic-security.json": "plugin_opt_config_file /tmp/x/dynamic-security.json",
		"acl_file /mosquitto/config/acl":                               "acl_file /tmp/x/config/acl",
		"persistence_location /mosquitto/data/":                        "persistence_location /tmp/x/",
	}
	orig, subst := strings.Split(string(b), "\n"), strings.Split(got, "\n")
	if len(orig) != len(subst) {
		t.Fatalf("the native configuration has %d lines, deploy/mosquitto/mosquitto.conf %d", len(subst), len(orig))
	}
	changed := 0
	for i := range orig {
		if orig[i] == subst[i] {
			continue
		}
		changed++
		if w, ok := want[orig[i]]; !ok || subst[i] != w {
			t.Errorf("line %d: %q became %q, want %q", i+1, orig[i], subst[i], w)
		}
	}
	if changed != len(want) {
		t.Errorf("%d lines substituted, want %d: %v", changed, len(want), want)
	}
}

func TestStartMosquitto(t *testing.T) {
	if _, err := findMosquitto(); errors.Is(err, ErrNoMosquitto) {
		t.Skipf("%v", err) // scripts/test installs it; CI never skips
	}
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "mqtt")
	var log syncWriter
	start := func() *Mosquitto {
		m, err := StartMosquitto(ctx, MosquittoOptions{Dir: dir, AdminPassword: "admin-pw", Log: &log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Stop() })
		return m
	}
	m := start()
	login := func(user, pass string) error {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID("probe").
			SetUsername(user).SetPassword(pass).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return errors.New("no answer")
		}
		if tok.Error() == nil {
			c.Disconnect(0)
		}
		return tok.Error()
	}
	if err := login(DefaultMosquittoAdmin, "admin-pw"); err != nil {
		t.Fatalf("administrator refused: %v", err)
	}
	for _, cred := range [][2]string{{"", ""}, {DefaultMosquittoAdmin, "wrong"}, {"nobody", "x"}} {
		if err := login(cred[0], cred[1]); err == nil {
			t.Errorf("login %q/%q accepted", cred[0], cred[1])
		}
	}
	accounts := filepath.Join(dir, "dynamic-security.json")
	if _, err := os.Stat(accounts); err != nil {
		t.Fatalf("no accounts file: %v", err)
	}

	// Stopped and started again on the same directory: same accounts, the first
	// administrator's password still holds even if another is given.
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "mosquitto.db")); err != nil {
		t.Errorf("no persistence file after a clean stop: %v", err)
	}
	m = start()
	if err := login(DefaultMosquittoAdmin, "admin-pw"); err != nil {
		t.Fatalf("administrator refused after a restart: %v", err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Kill returned before the broker exited")
	}
	if want := "mosquitto version " + mosquittoconf.Version + " running"; !strings.Contains(log.String(), want) {
		t.Errorf("not Mosquitto %s, the version docker-compose.yml pins; its output:\n%s", mosquittoconf.Version, log.String())
	}
}

// syncWriter collects output written concurrently.
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
