package temporalconn_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/temporalconn"
	"github.com/otaflow/otaflow/internal/tlsconfig"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlstest"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true}))
}

// TestDialTLS dials the test Temporal server through a TLS-terminating proxy that requires a
// client certificate.
func TestDialTLS(t *testing.T) {
	t.Parallel()
	pki := tlstest.NewPKI(t, "temporal")
	other := tlstest.NewPKI(t, "other")
	plain := testenv.TemporalAddress()
	tlsAddr := tlstest.Proxy(t, plain, pki.ServerConfig(t))
	good := tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile}

	tests := []struct {
		name    string
		addr    string
		files   *tlsconfig.Files // nil: no TLS
		wantErr []string         // nil: success
	}{
		{name: "plain", addr: plain},
		{name: "CA and client certificate", addr: tlsAddr, files: &good},
		{name: "server name override", addr: tlsAddr, files: &tlsconfig.Files{CA: pki.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile, ServerName: "localhost"}},
		{name: "wrong CA", addr: tlsAddr, files: &tlsconfig.Files{CA: other.CAFile, Cert: pki.ClientCertFile, Key: pki.ClientKeyFile},
			wantErr: []string{"over TLS", "certificate signed by unknown authority"}},
		{name: "no client certificate", addr: tlsAddr, files: &tlsconfig.Files{CA: pki.CAFile},
			wantErr: []string{"over TLS", "certificate required"}},
		{name: "TLS to the plain port", addr: plain, files: &good,
			wantErr: []string{"over TLS", "does it speak TLS"}},
		{name: "plain to the TLS port", addr: tlsAddr,
			wantErr: []string{"cannot reach Temporal at " + tlsAddr}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := temporalconn.Options{Address: tt.addr, Namespace: testenv.TemporalNamespace()}
			if tt.files != nil {
				var err error
				if o.TLS, err = tt.files.Config(); err != nil {
					t.Fatal(err)
				}
			}
			c, err := temporalconn.Dial(context.Background(), o)
			if tt.wantErr != nil {
				if err == nil {
					c.Close()
					t.Fatalf("dialled, want an error saying %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.CheckHealth(context.Background(), nil); err != nil {
				t.Fatalf("health check: %v", err)
			}
		})
	}
}
