package mqttconn_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/dev/broker"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/tlsconfig"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlstest"
)

const (
	serviceUser = "otaflow-worker"
	servicePass = "s3cret-service-password"
)

// noDevices is a device registry without devices: the tests connect as a service.
type noDevices struct{}

func (noDevices) DeviceCredentials(_ context.Context, id string) (string, bool, error) {
	return "", false, fmt.Errorf("device %s: not registered", id)
}

// startBroker starts the embedded broker on a free port, plain TCP, closed at the test's end;
// its logs go to the returned buffer.
func startBroker(t *testing.T) (*broker.Broker, *testenv.Buffer) {
	t.Helper()
	logs := &testenv.Buffer{}
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Credentials: noDevices{},
		Services: map[string]string{serviceUser: servicePass},
		Logger:   slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	return b, logs
}

func tlsConfig(t *testing.T, f tlsconfig.Files) *tls.Config {
	t.Helper()
	cfg, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestConnectTLS connects through a TLS-terminating proxy that requires a client certificate,
// in front of the real broker.
func TestConnectTLS(t *testing.T) {
	b, _ := startBroker(t)
	pki := tlstest.NewPKI(t, "broker")
	other := tlstest.NewPKI(t, "other")
	tlsAddr := tlstest.Proxy(t, b.Addr(), pki.ServerConfig(t))
	good := tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile}

	tests := []struct {
		name    string
		url     string
		files   tlsconfig.Files
		timeout time.Duration
		wantErr error  // nil: connects and publishes
		wantMsg string // also in the error
	}{
		{name: "CA and client certificate", url: "ssl://%s@" + tlsAddr, files: good},
		{name: "mqtts scheme and localhost", url: "mqtts://%s@" + strings.Replace(tlsAddr, "127.0.0.1", "localhost", 1), files: good},
		{name: "server name override", url: "tls://%s@" + tlsAddr, files: tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile, ServerName: "localhost"}},
		{name: "no client certificate", url: "ssl://%s@" + tlsAddr, files: tlsconfig.Files{CA: pki.CAFile},
			wantErr: mqttconn.ErrTLS, wantMsg: "certificate required"},
		{name: "client certificate of another CA", url: "ssl://%s@" + tlsAddr, files: tlsconfig.Files{CA: pki.CAFile, Cert: other.ClientCertFile, Key: other.ClientKeyFile},
			wantErr: mqttconn.ErrTLS, wantMsg: "remote error: tls"},
		{name: "wrong CA", url: "ssl://%s@" + tlsAddr, files: tlsconfig.Files{CA: other.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile},
			wantErr: mqttconn.ErrTLS, wantMsg: "certificate signed by unknown authority"},
		{name: "system roots", url: "ssl://%s@" + tlsAddr, files: tlsconfig.Files{Cert: pki.ClientCertFile, Key: pki.ClientKeyFile},
			wantErr: mqttconn.ErrTLS, wantMsg: "certificate signed by unknown authority"},
		{name: "server name not in the certificate", url: "ssl://%s@" + tlsAddr, files: tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile, ServerName: "broker.example"},
			wantErr: mqttconn.ErrTLS, wantMsg: "broker.example"},
		{name: "TLS to the plain port", url: "ssl://%s@" + b.Addr(), files: good, timeout: 2 * time.Second,
			wantErr: mqttconn.ErrNotConnected, wantMsg: "last attempt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := mqttconn.Options(fmt.Sprintf(tt.url, serviceUser+":"+servicePass), "tls-test-"+strings.ReplaceAll(tt.name, " ", "-"),
				mqttconn.WithTLS(tlsConfig(t, tt.files)))
			if err != nil {
				t.Fatal(err)
			}
			opts.SetCleanSession(true)
			if tt.timeout == 0 {
				tt.timeout = 30 * time.Second
			}
			ctx, cancel := context.WithTimeout(t.Context(), tt.timeout)
			defer cancel()
			c, err := mqttconn.Connect(ctx, opts)
			if tt.wantErr != nil {
				if err == nil {
					c.Disconnect(0)
					t.Fatalf("connected, want %v", tt.wantErr)
				}
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("error %q, want %v saying %q", err, tt.wantErr, tt.wantMsg)
				}
				if strings.Contains(err.Error(), servicePass) {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Disconnect(50)
			p := &mqttconn.Publisher{Client: c}
			if err := p.Publish(ctx, "otaflow/tls-test", []byte("hello")); err != nil {
				t.Fatalf("publish over TLS: %v", err)
			}
		})
	}
}

// TestConnectWrongPasswordOverTLS: the credentials travel through TLS, and the refusal does not
// show the password.
func TestConnectWrongPasswordOverTLS(t *testing.T) {
	b, logs := startBroker(t)
	pki := tlstest.NewPKI(t, "broker")
	tlsAddr := tlstest.Proxy(t, b.Addr(), pki.ServerConfig(t))
	const wrong = "wrong-s3cret-password"
	opts, err := mqttconn.Options("ssl://"+serviceUser+":"+wrong+"@"+tlsAddr, "tls-test-wrong-password",
		mqttconn.WithTLS(tlsConfig(t, tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	c, err := mqttconn.Connect(ctx, opts)
	if err == nil {
		c.Disconnect(0)
		t.Fatal("connected with a wrong password")
	}
	if !errors.Is(err, mqttconn.ErrNotConnected) || !strings.Contains(err.Error(), "not Authorized") {
		t.Fatalf("error %q, want %v saying the broker refused the client", err, mqttconn.ErrNotConnected)
	}
	if strings.Contains(err.Error(), wrong) {
		t.Errorf("error %q shows the password", err)
	}
	if l := logs.String(); !strings.Contains(l, "wrong service password") || strings.Contains(l, wrong) || strings.Contains(l, servicePass) {
		t.Errorf("broker logs should record the refusal without any password:\n%s", l)
	}
}

// TestOptionsTLS checks which URLs get a TLS configuration, and that errors hide passwords.
func TestOptionsTLS(t *testing.T) {
	custom := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "broker.example"}
	const secret = "s3cret"
	tests := []struct {
		name       string
		url        string
		tls        *tls.Config
		wantTLS    bool   // the options carry a TLS configuration
		wantServer string // its ServerName
		wantErr    string // "" for success
	}{
		{name: "tcp", url: "tcp://u:" + secret + "@localhost:1883"},
		{name: "mqtt", url: "mqtt://localhost:1883"},
		{name: "ws", url: "ws://localhost:8080/mqtt"},
		{name: "ssl with system roots", url: "ssl://localhost:8883", wantTLS: true},
		{name: "mqtts with system roots", url: "mqtts://localhost:8883", wantTLS: true},
		{name: "wss with system roots", url: "wss://localhost:8443/mqtt", wantTLS: true},
		{name: "ssl with settings", url: "ssl://localhost:8883", tls: custom, wantTLS: true, wantServer: "broker.example"},
		{name: "tls with settings", url: "tls://localhost:8883", tls: custom, wantTLS: true, wantServer: "broker.example"},
		{name: "tcp with settings", url: "tcp://u:" + secret + "@localhost:1883", tls: custom, wantErr: "does not use TLS"},
		{name: "ws with settings", url: "ws://u:" + secret + "@localhost:8080", tls: custom, wantErr: "does not use TLS"},
		{name: "bad scheme", url: "http://u:" + secret + "@localhost:1883", wantErr: "scheme must be"},
		{name: "no host", url: "tcp://u:" + secret + "@", wantErr: "no host"},
		{name: "unparsable", url: "tcp://u:" + secret + "@local host:1883", wantErr: "not a valid URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := mqttconn.Options(tt.url, "c", mqttconn.WithTLS(tt.tls))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := opts.TLSConfig
			if tt.wantTLS != (got != nil) {
				t.Fatalf("TLS configuration %v, want one: %v", got, tt.wantTLS)
			}
			if got == nil {
				return
			}
			if got.MinVersion < tls.VersionTLS12 || got.InsecureSkipVerify || got.ServerName != tt.wantServer {
				t.Errorf("TLS MinVersion %#x, InsecureSkipVerify %v, ServerName %q", got.MinVersion, got.InsecureSkipVerify, got.ServerName)
			}
			if got == tt.tls {
				t.Error("Options kept the caller's *tls.Config instead of a copy")
			}
		})
	}
}
