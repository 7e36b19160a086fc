package main

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlstest"
)

// TestMainOverTLS runs the command with MQTT and Temporal behind TLS-terminating proxies that
// require client certificates (files given by flags for MQTT, by environment for Temporal), and
// passwords in both URLs: a device's report is recorded, and the bridge's log output never
// shows a password.
func TestMainOverTLS(t *testing.T) {
	const (
		bridgePass = "bridge-s3cret"
		dbPass     = "db-s3cret" // the test server trusts local connections: any password does
	)
	ctx := context.Background()
	dbURL := databaseURL(t)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), dbPass)
	dbURLWithPassword := u.String()

	device, secret := registerDevice(t, ctx, st, "tls-test")
	br, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Credentials: st,
		Services: map[string]string{"otaflow-bridge": bridgePass}})
	if err != nil {
		t.Fatal(err)
	}
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer br.Close()

	mqttPKI, temporalPKI := tlstest.NewPKI(t, "mqtt"), tlstest.NewPKI(t, "temporal")
	mqttAddr := tlstest.Proxy(t, br.Addr(), mqttPKI.ServerConfig(t))
	temporalAddr := tlstest.Proxy(t, testenv.TemporalAddress(), temporalPKI.ServerConfig(t))
	t.Setenv(tlsflags.EnvTemporalCA, temporalPKI.CAFile)
	t.Setenv(tlsflags.EnvTemporalCert, temporalPKI.ClientCertFile)
	t.Setenv(tlsflags.EnvTemporalKey, temporalPKI.ClientKeyFile)

	// The command logs to stderr.
	logPath := filepath.Join(t.TempDir(), "stderr")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	stderr := os.Stderr
	os.Stderr = logFile
	defer func() { os.Stderr = stderr }()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- newApp().RunContext(runCtx, []string{"mqttbridge",
			"--mqtt-url", "mqtts://otaflow-bridge:" + bridgePass + "@" + mqttAddr,
			"--mqtt-ca", mqttPKI.CAFile, "--mqtt-cert", mqttPKI.ClientCertFile, "--mqtt-key", mqttPKI.ClientKeyFile,
			"--mqtt-client-id", "bridge-tls-test",
			"--database-url", dbURLWithPassword,
			"--temporal-address", temporalAddr,
			"--temporal-namespace", testenv.TemporalNamespace(),
		})
	}()

	reportUntilRecorded(t, ctx, st, br.URL(), device, secret, "4.3", done)
	stopApp(t, cancel, done)
	os.Stderr = stderr
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := string(b)
	if !strings.Contains(logs, "bridge running") || !strings.Contains(logs, "mqtts://otaflow-bridge:xxxxx@"+mqttAddr) {
		t.Errorf("the logs do not show the bridge running with its broker's redacted URL:\n%s", logs)
	}
	for _, p := range []string{bridgePass, dbPass} {
		if strings.Contains(logs, p) {
			t.Errorf("the logs show a password:\n%s", logs)
		}
	}
}

// TestMainTLSFileErrors: a wrong TLS file stops the command before it dials anything, with an
// error that names the file and hides the passwords.
func TestMainTLSFileErrors(t *testing.T) {
	pki := tlstest.NewPKI(t, "mqtt")
	const pass = "bridge-s3cret"
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"MQTT key without certificate", []string{"--mqtt-url", "ssl://otaflow-bridge:" + pass + "@127.0.0.1:1", "--mqtt-key", pki.ClientKeyFile},
			"client key " + pki.ClientKeyFile + " has no certificate file"},
		{"Temporal CA without certificates", []string{"--mqtt-url", "ssl://otaflow-bridge:" + pass + "@127.0.0.1:1", "--temporal-ca", pki.ClientKeyFile},
			"CA file " + pki.ClientKeyFile + ": no PEM certificates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Nothing listens on port 1: the command must fail on the files, before any dial.
			err := newApp().RunContext(context.Background(), append([]string{"mqttbridge",
				"--database-url", "postgres://otaflow:" + pass + "@127.0.0.1:1/otaflow", "--temporal-address", "127.0.0.1:1"}, tt.args...))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), pass) {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}
