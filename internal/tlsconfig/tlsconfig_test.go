package tlsconfig_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/tlsconfig"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlstest"
)

func write(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFilesConfig(t *testing.T) {
	pki := tlstest.NewPKI(t, "good")
	other := tlstest.NewPKI(t, "other")
	missing := filepath.Join(t.TempDir(), "missing.pem")
	garbage := write(t, "garbage.pem", "not a certificate\n")
	badKey := write(t, "bad-key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	encryptedKey := write(t, "enc-key.pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
	chain := write(t, "chain.pem", read(t, pki.ClientCertFile)+read(t, pki.CAFile))

	tests := []struct {
		name      string
		files     tlsconfig.Files
		wantErr   error  // nil: success
		wantInErr string // also required in the error's text
		check     func(t *testing.T, cfg *tls.Config)
	}{
		{name: "zero: system roots, no client certificate", check: func(t *testing.T, cfg *tls.Config) {
			if cfg.RootCAs != nil || len(cfg.Certificates) != 0 || cfg.ServerName != "" {
				t.Errorf("zero Files gave RootCAs %v, %d certificates, server name %q", cfg.RootCAs, len(cfg.Certificates), cfg.ServerName)
			}
		}},
		{name: "CA, client certificate and server name", files: tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile, ServerName: "broker.example"},
			check: func(t *testing.T, cfg *tls.Config) {
				if cfg.RootCAs == nil || len(cfg.Certificates) != 1 || cfg.ServerName != "broker.example" {
					t.Fatalf("RootCAs %v, %d certificates, server name %q", cfg.RootCAs, len(cfg.Certificates), cfg.ServerName)
				}
				if len(cfg.Certificates[0].Certificate) != 1 {
					t.Errorf("client chain has %d certificates, want 1", len(cfg.Certificates[0].Certificate))
				}
			}},
		{name: "client certificate followed by its chain", files: tlsconfig.Files{Cert: chain, Key: pki.ClientKeyFile},
			check: func(t *testing.T, cfg *tls.Config) {
				if n := len(cfg.Certificates[0].Certificate); n != 2 {
					t.Errorf("client chain has %d certificates, want 2", n)
				}
			}},
		{name: "unreadable CA", files: tlsconfig.Files{CA: missing}, wantErr: os.ErrNotExist, wantInErr: "CA file: cannot read: open " + missing},
		{name: "CA without certificates", files: tlsconfig.Files{CA: garbage}, wantErr: tlsconfig.ErrNoCertificates, wantInErr: "CA file " + garbage},
		{name: "key given as CA", files: tlsconfig.Files{CA: pki.ClientKeyFile}, wantErr: tlsconfig.ErrNoCertificates, wantInErr: pki.ClientKeyFile},
		{name: "certificate without key", files: tlsconfig.Files{Cert: pki.ClientCertFile}, wantErr: tlsconfig.ErrIncomplete, wantInErr: pki.ClientCertFile},
		{name: "key without certificate", files: tlsconfig.Files{Key: pki.ClientKeyFile}, wantErr: tlsconfig.ErrIncomplete, wantInErr: pki.ClientKeyFile},
		{name: "unreadable certificate", files: tlsconfig.Files{Cert: missing, Key: pki.ClientKeyFile}, wantErr: os.ErrNotExist, wantInErr: "client certificate: cannot read: open " + missing},
		{name: "unreadable key", files: tlsconfig.Files{Cert: pki.ClientCertFile, Key: missing}, wantErr: os.ErrNotExist, wantInErr: "client key: cannot read: open " + missing},
		{name: "certificate file without certificates", files: tlsconfig.Files{Cert: pki.ClientKeyFile, Key: pki.ClientKeyFile}, wantErr: tlsconfig.ErrNoCertificates, wantInErr: "client certificate " + pki.ClientKeyFile},
		{name: "key file without key", files: tlsconfig.Files{Cert: pki.ClientCertFile, Key: pki.ClientCertFile}, wantErr: tlsconfig.ErrNoPrivateKey, wantInErr: "client key " + pki.ClientCertFile},
		{name: "unparsable key", files: tlsconfig.Files{Cert: pki.ClientCertFile, Key: badKey}, wantErr: tlsconfig.ErrNoPrivateKey, wantInErr: badKey},
		{name: "encrypted key", files: tlsconfig.Files{Cert: pki.ClientCertFile, Key: encryptedKey}, wantErr: tlsconfig.ErrNoPrivateKey, wantInErr: "encrypted"},
		{name: "key of another certificate", files: tlsconfig.Files{Cert: pki.ClientCertFile, Key: other.ClientKeyFile}, wantErr: tlsconfig.ErrKeyMismatch, wantInErr: other.ClientKeyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.files.Config()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Config: %v", err)
				}
				if cfg.MinVersion != tls.VersionTLS12 || cfg.InsecureSkipVerify {
					t.Errorf("MinVersion %#x, InsecureSkipVerify %v; want TLS 1.2 and verification", cfg.MinVersion, cfg.InsecureSkipVerify)
				}
				tt.check(t, cfg)
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Config error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("error %q does not say %q", err, tt.wantInErr)
			}
			// No line of a key's PEM ever appears in an error.
			for _, key := range []string{pki.ClientKeyFile, other.ClientKeyFile} {
				for _, line := range strings.Split(read(t, key), "\n") {
					if len(line) > 8 && !strings.HasPrefix(line, "-----") && strings.Contains(err.Error(), line) {
						t.Errorf("error %q quotes the key file %s", err, key)
					}
				}
			}
		})
	}
}

func TestFilesIsZero(t *testing.T) {
	tests := []struct {
		files tlsconfig.Files
		want  bool
	}{
		{tlsconfig.Files{}, true},
		{tlsconfig.Files{CA: "ca.pem"}, false},
		{tlsconfig.Files{ServerName: "broker"}, false},
	}
	for _, tt := range tests {
		if got := tt.files.IsZero(); got != tt.want {
			t.Errorf("%+v.IsZero() = %v, want %v", tt.files, got, tt.want)
		}
	}
}

// TestHandshake checks the configuration against a real TLS server that requires a client
// certificate: the right CA and certificate connect; a wrong CA, a wrong server name, a
// missing or foreign client certificate do not.
func TestHandshake(t *testing.T) {
	pki := tlstest.NewPKI(t, "server")
	other := tlstest.NewPKI(t, "other")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", pki.ServerConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					_, _ = c.Write([]byte("ok"))
				}
			}()
		}
	}()

	tests := []struct {
		name    string
		files   tlsconfig.Files
		wantErr string // "" for success
	}{
		{"CA and client certificate", tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile}, ""},
		{"server name localhost", tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile, ServerName: "localhost"}, ""},
		{"wrong CA", tlsconfig.Files{CA: other.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile}, "certificate signed by unknown authority"},
		{"system roots", tlsconfig.Files{Cert: pki.ClientCertFile, Key: pki.ClientKeyFile}, "certificate signed by unknown authority"},
		{"wrong server name", tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile, ServerName: "broker.example"}, "broker.example"},
		{"no client certificate", tlsconfig.Files{CA: pki.CAFile}, "certificate required"},
		{"client certificate of another CA", tlsconfig.Files{CA: pki.CAFile, Cert: other.ClientCertFile, Key: other.ClientKeyFile}, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.files.Config()
			if err != nil {
				t.Fatal(err)
			}
			err = exchange(ln.Addr().String(), cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("handshake succeeded, want an error saying %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q does not say %q", err, tt.wantErr)
			}
		})
	}
}

// exchange dials addr and reads the server's "ok": with TLS 1.3 a refused client certificate
// shows only on the first read.
func exchange(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil {
		return err
	}
	if string(buf) != "ok" {
		return errors.New("unexpected answer " + string(buf))
	}
	return nil
}

// TestLoadCertPool checks the pool verifies what the CA signed.
func TestLoadCertPool(t *testing.T) {
	pki := tlstest.NewPKI(t, "pool")
	pool, err := tlsconfig.LoadCertPool(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(pki.ServerCertFile, pki.ServerKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"}); err != nil {
		t.Errorf("server certificate not verified by the loaded pool: %v", err)
	}
}
