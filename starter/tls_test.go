package main

import (
	"context"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlstest"
)

// TestTemporalTLS runs starter against the test Temporal server behind a TLS-terminating proxy
// that requires a client certificate, with the TLS files given by flags or environment.
func TestTemporalTLS(t *testing.T) {
	pki := tlstest.NewPKI(t, "temporal")
	other := tlstest.NewPKI(t, "other")
	addr := tlstest.Proxy(t, testenv.TemporalAddress(), pki.ServerConfig(t))
	global := []string{"--temporal-address", addr, "--temporal-namespace", testenv.TemporalNamespace()}

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		wantErr  []string // in stderr
	}{
		{name: "flags", args: []string{"--temporal-ca", pki.CAFile, "--temporal-cert", pki.ClientCertFile, "--temporal-key", pki.ClientKeyFile}},
		{name: "environment", env: map[string]string{tlsflags.EnvTemporalCAPath: pki.CAFile, tlsflags.EnvTemporalCert: pki.ClientCertFile,
			tlsflags.EnvTemporalKeyPath: pki.ClientKeyFile, tlsflags.EnvTemporalServerName: "localhost"}},
		{name: "no client certificate", args: []string{"--temporal-ca", pki.CAFile},
			wantCode: exitFailure, wantErr: []string{"over TLS", "certificate required"}},
		{name: "wrong CA", args: []string{"--temporal-ca", other.CAFile, "--temporal-cert", pki.ClientCertFile, "--temporal-key", pki.ClientKeyFile},
			wantCode: exitFailure, wantErr: []string{"certificate signed by unknown authority"}},
		{name: "no TLS", wantCode: exitFailure, wantErr: []string{"cannot reach Temporal at " + addr}},
		{name: "certificate without key", args: []string{"--temporal-ca", pki.CAFile, "--temporal-cert", pki.ClientCertFile},
			wantCode: exitUsage, wantErr: []string{pki.ClientCertFile, "--temporal-key"}},
		{name: "key given as CA", args: []string{"--temporal-ca", pki.ClientKeyFile},
			wantCode: exitUsage, wantErr: []string{"CA file " + pki.ClientKeyFile + ": no PEM certificates"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := append(append(append([]string{}, global...), tt.args...), "rollout", "list", "--json")
			r := runCLI(t, context.Background(), args...)
			r.check(t, tt.wantCode, tt.wantErr...)
			if tt.wantCode == 0 && !strings.HasPrefix(strings.TrimSpace(r.stdout), "[") {
				t.Errorf("rollout list --json printed %q, want a JSON array", r.stdout)
			}
			// A key's PEM never shows up.
			if strings.Contains(r.stderr, "PRIVATE KEY") {
				t.Errorf("stderr shows a key:\n%s", r.stderr)
			}
		})
	}
}

// TestDatabasePasswordNotShown: whatever goes wrong with the database, starter never prints
// the password of DATABASE_URL.
func TestDatabasePasswordNotShown(t *testing.T) {
	const password = "s3cret-db-password"
	tests := []struct {
		name string
		url  string
	}{
		{"unreachable server", "postgres://otaflow:" + password + "@127.0.0.1:1/otaflow?sslmode=disable&connect_timeout=2"},
		{"missing sslrootcert", "postgres://otaflow:" + password + "@127.0.0.1:1/otaflow?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"},
		{"bad sslmode", "postgres://otaflow:" + password + "@127.0.0.1:1/otaflow?sslmode=sometimes"},
		{"bad port", "postgres://otaflow:" + password + "@127.0.0.1:port/otaflow"},
		{"password parameter", "postgres://otaflow@127.0.0.1:1/otaflow?password=" + password + "&sslmode=bogus"},
		{"keyword form", "host=127.0.0.1 port=1 user=otaflow password=" + password + " sslmode=bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, context.Background(), "--database-url", tt.url, "devices", "list")
			if r.code == 0 {
				t.Fatalf("devices list succeeded against %s", tt.name)
			}
			if strings.Contains(r.stderr, password) || strings.Contains(r.stdout, password) {
				t.Errorf("the password shows in the output:\nstdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			}
			if !strings.Contains(r.stderr, "starter: ") {
				t.Errorf("no error message:\n%s", r.stderr)
			}
		})
	}
}
