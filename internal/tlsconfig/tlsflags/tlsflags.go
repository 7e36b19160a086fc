// Package tlsflags defines, once for the worker, the bridge and the starter, the command-line
// flags and environment variables that give the TLS files of the MQTT and Temporal
// connections, and turns them into *tls.Config values with internal/tlsconfig.
//
// The Temporal variables are those of Temporal's own CLI (TEMPORAL_TLS_CA ... as in its
// earlier releases, TEMPORAL_TLS_SERVER_CA_CERT_PATH ... as in the current one), so that one
// environment serves both. PostgreSQL takes its TLS files in DATABASE_URL (sslmode,
// sslrootcert, sslcert, sslkey), not here.
package tlsflags

import (
	"crypto/tls"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/tlsconfig"
)

// Flag names.
const (
	FlagMQTTCA             = "mqtt-ca"
	FlagMQTTCert           = "mqtt-cert"
	FlagMQTTKey            = "mqtt-key"
	FlagMQTTServerName     = "mqtt-server-name"
	FlagTemporalTLS        = "temporal-tls"
	FlagTemporalCA         = "temporal-ca"
	FlagTemporalCert       = "temporal-cert"
	FlagTemporalKey        = "temporal-key"
	FlagTemporalServerName = "temporal-server-name"
)

// Environment variables of the flags. Where a flag has two, the first one set wins.
const (
	EnvMQTTCA             = "MQTT_CA_FILE"
	EnvMQTTCert           = "MQTT_CERT_FILE"
	EnvMQTTKey            = "MQTT_KEY_FILE"
	EnvMQTTServerName     = "MQTT_SERVER_NAME"
	EnvTemporalTLS        = "TEMPORAL_TLS"
	EnvTemporalCA         = "TEMPORAL_TLS_CA"
	EnvTemporalCAPath     = "TEMPORAL_TLS_SERVER_CA_CERT_PATH"
	EnvTemporalCert       = "TEMPORAL_TLS_CERT"
	EnvTemporalCertPath   = "TEMPORAL_TLS_CLIENT_CERT_PATH"
	EnvTemporalKey        = "TEMPORAL_TLS_KEY"
	EnvTemporalKeyPath    = "TEMPORAL_TLS_CLIENT_KEY_PATH"
	EnvTemporalServerName = "TEMPORAL_TLS_SERVER_NAME"
)

// MQTTFlags are the flags of the MQTT connection's TLS files. TLS itself is chosen by the
// MQTT URL's scheme (ssl://, mqtts://, wss://).
func MQTTFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: FlagMQTTCA, EnvVars: []string{EnvMQTTCA},
			Usage: "PEM `FILE` of the CA certificates that sign the MQTT broker's certificate (default: the system's roots); needs an ssl://, mqtts:// or wss:// MQTT URL"},
		&cli.StringFlag{Name: FlagMQTTCert, EnvVars: []string{EnvMQTTCert},
			Usage: "PEM `FILE` of the client certificate for brokers that require mutual TLS (with --" + FlagMQTTKey + ")"},
		&cli.StringFlag{Name: FlagMQTTKey, EnvVars: []string{EnvMQTTKey},
			Usage: "PEM `FILE` of the client certificate's private key"},
		&cli.StringFlag{Name: FlagMQTTServerName, EnvVars: []string{EnvMQTTServerName},
			Usage: "`NAME` the MQTT broker's certificate must carry, when it is not the URL's host"},
	}
}

// TemporalFlags are the flags of the Temporal connection's TLS. Any of the files or the server
// name turns TLS on; --temporal-tls turns it on with none of them (the system's roots).
func TemporalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: FlagTemporalTLS, EnvVars: []string{EnvTemporalTLS},
			Usage: "connect to Temporal over TLS (implied by the other --temporal-* TLS flags)"},
		&cli.StringFlag{Name: FlagTemporalCA, EnvVars: []string{EnvTemporalCA, EnvTemporalCAPath},
			Usage: "PEM `FILE` of the CA certificates that sign the Temporal server's certificate (default: the system's roots)"},
		&cli.StringFlag{Name: FlagTemporalCert, EnvVars: []string{EnvTemporalCert, EnvTemporalCertPath},
			Usage: "PEM `FILE` of the client certificate for mutual TLS with Temporal (with --" + FlagTemporalKey + ")"},
		&cli.StringFlag{Name: FlagTemporalKey, EnvVars: []string{EnvTemporalKey, EnvTemporalKeyPath},
			Usage: "PEM `FILE` of the Temporal client certificate's private key"},
		&cli.StringFlag{Name: FlagTemporalServerName, EnvVars: []string{EnvTemporalServerName},
			Usage: "`NAME` the Temporal server's certificate must carry, when it is not the address's host"},
	}
}

// MQTT returns the TLS configuration the MQTT flags ask for, or nil when none is set (then an
// ssl:// URL trusts the system's roots).
func MQTT(cCtx *cli.Context) (*tls.Config, error) {
	f := tlsconfig.Files{
		CA:         cCtx.String(FlagMQTTCA),
		Cert:       cCtx.String(FlagMQTTCert),
		Key:        cCtx.String(FlagMQTTKey),
		ServerName: cCtx.String(FlagMQTTServerName),
	}
	if f.IsZero() {
		return nil, nil
	}
	cfg, err := f.Config()
	if err != nil {
		return nil, fmt.Errorf("TLS to the MQTT broker (--%s, --%s, --%s): %w", FlagMQTTCA, FlagMQTTCert, FlagMQTTKey, err)
	}
	return cfg, nil
}

// Temporal returns the TLS configuration the Temporal flags ask for, or nil for a connection
// without TLS.
func Temporal(cCtx *cli.Context) (*tls.Config, error) {
	f := tlsconfig.Files{
		CA:         cCtx.String(FlagTemporalCA),
		Cert:       cCtx.String(FlagTemporalCert),
		Key:        cCtx.String(FlagTemporalKey),
		ServerName: cCtx.String(FlagTemporalServerName),
	}
	on := cCtx.Bool(FlagTemporalTLS)
	if cCtx.IsSet(FlagTemporalTLS) && !on && !f.IsZero() {
		return nil, fmt.Errorf("TLS to Temporal: --%s=false contradicts the TLS files or server name given", FlagTemporalTLS)
	}
	if !on && f.IsZero() {
		return nil, nil
	}
	cfg, err := f.Config()
	if err != nil {
		return nil, fmt.Errorf("TLS to Temporal (--%s, --%s, --%s): %w", FlagTemporalCA, FlagTemporalCert, FlagTemporalKey, err)
	}
	return cfg, nil
}

// Services loads the MQTT and the Temporal TLS settings of a service that connects to both
// (the worker, the bridge), so that a bad file stops it before anything is dialled.
func Services(cCtx *cli.Context) (mqtt, temporal *tls.Config, err error) {
	if mqtt, err = MQTT(cCtx); err != nil {
		return nil, nil, err
	}
	if temporal, err = Temporal(cCtx); err != nil {
		return nil, nil, err
	}
	return mqtt, temporal, nil
}
