package tlsflags_test

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/tlsconfig"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlstest"
)

// parse runs an app with the TLS flags on args and env, and returns what MQTT and Temporal
// made of them.
func parse(t *testing.T, args []string, env map[string]string) (mqttCfg, temporalCfg *tls.Config, mqttErr, temporalErr error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	app := &cli.App{
		Name:  "test",
		Flags: append(tlsflags.MQTTFlags(), tlsflags.TemporalFlags()...),
		Action: func(cCtx *cli.Context) error {
			mqttCfg, mqttErr = tlsflags.MQTT(cCtx)
			temporalCfg, temporalErr = tlsflags.Temporal(cCtx)
			return nil
		},
	}
	if err := app.Run(append([]string{"test"}, args...)); err != nil {
		t.Fatalf("run: %v", err)
	}
	return mqttCfg, temporalCfg, mqttErr, temporalErr
}

func TestFlags(t *testing.T) {
	pki := tlstest.NewPKI(t, "flags")
	other := tlstest.NewPKI(t, "other")

	tests := []struct {
		name                   string
		args                   []string
		env                    map[string]string
		wantMQTT, wantTemporal bool   // a TLS configuration is returned
		wantMQTTCert           bool   // with a client certificate
		wantTemporalCert       bool   // with a client certificate
		wantServerName         string // the Temporal server name
		wantMQTTErr            error
		wantTemporalErr        error
		wantErrText            string // in every error
	}{
		{name: "nothing set"},
		{name: "MQTT flags", args: []string{"--mqtt-ca", pki.CAFile, "--mqtt-cert", pki.ClientCertFile, "--mqtt-key", pki.ClientKeyFile},
			wantMQTT: true, wantMQTTCert: true},
		{name: "MQTT environment", env: map[string]string{tlsflags.EnvMQTTCA: pki.CAFile, tlsflags.EnvMQTTCert: pki.ClientCertFile, tlsflags.EnvMQTTKey: pki.ClientKeyFile},
			wantMQTT: true, wantMQTTCert: true},
		{name: "MQTT server name alone", args: []string{"--mqtt-server-name", "broker"}, wantMQTT: true},
		{name: "Temporal flags", args: []string{"--temporal-ca", pki.CAFile, "--temporal-cert", pki.ClientCertFile, "--temporal-key", pki.ClientKeyFile, "--temporal-server-name", "temporal.example"},
			wantTemporal: true, wantTemporalCert: true, wantServerName: "temporal.example"},
		{name: "Temporal environment, earlier CLI names", env: map[string]string{tlsflags.EnvTemporalCA: pki.CAFile, tlsflags.EnvTemporalCert: pki.ClientCertFile, tlsflags.EnvTemporalKey: pki.ClientKeyFile},
			wantTemporal: true, wantTemporalCert: true},
		{name: "Temporal environment, current CLI names", env: map[string]string{tlsflags.EnvTemporalCAPath: pki.CAFile, tlsflags.EnvTemporalCertPath: pki.ClientCertFile, tlsflags.EnvTemporalKeyPath: pki.ClientKeyFile, tlsflags.EnvTemporalServerName: "t"},
			wantTemporal: true, wantTemporalCert: true, wantServerName: "t"},
		{name: "TEMPORAL_TLS alone", env: map[string]string{tlsflags.EnvTemporalTLS: "true"}, wantTemporal: true},
		{name: "--temporal-tls alone", args: []string{"--temporal-tls"}, wantTemporal: true},
		{name: "--temporal-tls=false with files", args: []string{"--temporal-tls=false", "--temporal-ca", pki.CAFile},
			wantTemporalErr: errContradiction, wantErrText: "--temporal-tls=false"},
		{name: "MQTT certificate without key", args: []string{"--mqtt-cert", pki.ClientCertFile},
			wantMQTTErr: tlsconfig.ErrIncomplete, wantErrText: "--mqtt-key"},
		{name: "Temporal key of another certificate", args: []string{"--temporal-cert", pki.ClientCertFile, "--temporal-key", other.ClientKeyFile},
			wantTemporalErr: tlsconfig.ErrKeyMismatch, wantErrText: other.ClientKeyFile},
		{name: "Temporal CA without certificates", env: map[string]string{tlsflags.EnvTemporalCAPath: pki.ClientKeyFile},
			wantTemporalErr: tlsconfig.ErrNoCertificates, wantErrText: "--temporal-ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, tc, merr, terr := parse(t, tt.args, tt.env)
			checkErr(t, "MQTT", merr, tt.wantMQTTErr, tt.wantErrText)
			checkErr(t, "Temporal", terr, tt.wantTemporalErr, tt.wantErrText)
			if (m != nil) != tt.wantMQTT || (tc != nil) != tt.wantTemporal {
				t.Fatalf("MQTT TLS %v, Temporal TLS %v; want %v, %v", m != nil, tc != nil, tt.wantMQTT, tt.wantTemporal)
			}
			if m != nil && (len(m.Certificates) == 1) != tt.wantMQTTCert {
				t.Errorf("MQTT client certificates: %d", len(m.Certificates))
			}
			if tc != nil {
				if (len(tc.Certificates) == 1) != tt.wantTemporalCert {
					t.Errorf("Temporal client certificates: %d", len(tc.Certificates))
				}
				if tc.ServerName != tt.wantServerName {
					t.Errorf("Temporal server name %q, want %q", tc.ServerName, tt.wantServerName)
				}
			}
		})
	}
}

// errContradiction stands for the error of --temporal-tls=false with files, which has no
// sentinel.
var errContradiction = errors.New("contradiction")

func checkErr(t *testing.T, what string, got, want error, text string) {
	t.Helper()
	switch {
	case want == nil && got != nil:
		t.Fatalf("%s: unexpected error %v", what, got)
	case want != nil && got == nil:
		t.Fatalf("%s: no error, want %v", what, want)
	case want == nil:
	case want != errContradiction && !errors.Is(got, want):
		t.Fatalf("%s: error %v, want %v", what, got, want)
	case !strings.Contains(got.Error(), text):
		t.Fatalf("%s: error %q does not say %q", what, got, text)
	}
}
