package localstack_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlstest"
)

// TestPostgresTLS starts PostgreSQL with SSL on and checks that the DATABASE_URL parameters
// reach pgx through store.Open: sslmode=verify-full with sslrootcert verifies the server,
// sslcert and sslkey present a client certificate, and errors never show the password.
func TestPostgresTLS(t *testing.T) {
	t.Parallel()
	pki := tlstest.NewPKI(t, "postgres")
	other := tlstest.NewPKI(t, "other")
	pg, err := localstack.StartPostgres(context.Background(), localstack.PostgresOptions{
		Dir:     filepath.Join(t.TempDir(), "pg"),
		NoFsync: true,
		TLS:     &localstack.PostgresTLS{CertFile: pki.ServerCertFile, KeyFile: pki.ServerKeyFile, ClientCAFile: pki.CAFile},
	})
	if errors.Is(err, localstack.ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})

	const password = "s3cret-db-password" // the server trusts local connections: any password does
	// dbURL is the database's URL with a password and the given TLS parameters.
	dbURL := func(host string, params map[string]string) string {
		u, err := url.Parse(pg.URL())
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword("postgres", password)
		if host != "" {
			u.Host = host + ":" + u.Port()
		}
		q := url.Values{}
		for k, v := range params {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		return u.String()
	}

	tests := []struct {
		name       string
		host       string // "" keeps 127.0.0.1
		params     map[string]string
		wantErr    string // "" for success
		wantClient string // the client certificate's subject the server saw ("" for none)
	}{
		{name: "verify-full with the CA", params: map[string]string{"sslmode": "verify-full", "sslrootcert": pki.CAFile}},
		{name: "verify-full by host name", host: "localhost", params: map[string]string{"sslmode": "verify-full", "sslrootcert": pki.CAFile}},
		{name: "verify-full with a client certificate", params: map[string]string{"sslmode": "verify-full", "sslrootcert": pki.CAFile,
			"sslcert": pki.ClientCertFile, "sslkey": pki.ClientKeyFile}, wantClient: "CN=otaflow-test-client"},
		{name: "verify-full with a wrong CA", params: map[string]string{"sslmode": "verify-full", "sslrootcert": other.CAFile},
			wantErr: "certificate signed by unknown authority"},
		// Go offers only a certificate signed by a CA the server names: none here.
		{name: "client certificate of another CA", params: map[string]string{"sslmode": "verify-full", "sslrootcert": pki.CAFile,
			"sslcert": other.ClientCertFile, "sslkey": other.ClientKeyFile}},
		{name: "client key of another certificate", params: map[string]string{"sslmode": "verify-full", "sslrootcert": pki.CAFile,
			"sslcert": pki.ClientCertFile, "sslkey": other.ClientKeyFile}, wantErr: "private key does not match public key"},
		{name: "missing CA file", params: map[string]string{"sslmode": "verify-full", "sslrootcert": filepath.Join(t.TempDir(), "none.pem")},
			wantErr: "none.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			u := dbURL(tt.host, tt.params)
			st, err := store.Open(ctx, u)
			if tt.wantErr != "" {
				if err == nil {
					st.Close()
					t.Fatalf("store.Open succeeded, want an error saying %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not say %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), password) {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("store.Open: %v", err)
			}
			st.Close()
			// The same URL, as store.Open hands it to pgx: the session is encrypted.
			conn, err := pgx.Connect(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var ssl bool
			var clientDN string
			if err := conn.QueryRow(ctx, `SELECT ssl, coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl, &clientDN); err != nil {
				t.Fatal(err)
			}
			if !ssl || clientDN != "/"+tt.wantClient && clientDN != tt.wantClient {
				t.Errorf("session ssl %v, client certificate %q; want ssl, %q", ssl, clientDN, tt.wantClient)
			}
		})
	}

	// The server still takes connections without TLS (localstack's own, and sslmode=disable).
	conn, err := pgx.Connect(context.Background(), pg.URL())
	if err != nil {
		t.Fatalf("connect without TLS: %v", err)
	}
	conn.Close(context.Background())
}
