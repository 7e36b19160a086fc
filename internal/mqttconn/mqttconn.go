// Package mqttconn builds paho MQTT client options for OTAflow's services from one URL, so the
// worker, the bridge and the tools configure connections the same way.
//
// TLS: an ssl://, mqtts://, tls:// or wss:// URL connects over TLS, verifying the broker's
// certificate against the system's roots unless WithTLS gives another configuration (a CA
// bundle, a client certificate for mutual TLS; see internal/tlsconfig).
package mqttconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/otaflow/otaflow/internal/credential"
)

// Option changes the client options Options builds.
type Option func(*settings)

type settings struct {
	tls *tls.Config
}

// WithTLS secures the connection with cfg (a copy of it is used), typically built by
// tlsconfig.Files.Config. The URL must then be a TLS one (ssl, mqtts, tls or wss): Options
// refuses a plain tcp:// or ws:// URL with TLS settings rather than silently ignoring them. A
// nil cfg changes nothing.
func WithTLS(cfg *tls.Config) Option {
	return func(s *settings) { s.tls = cfg }
}

// Options turns an MQTT URL such as tcp://user:password@localhost:1883 (schemes tcp, mqtt,
// ssl, tls, mqtts, ws, wss) into paho client options with the given client ID: persistent
// session, auto-reconnect, credentials from the URL, and TLS (TLS 1.2 or later, the server
// verified) for the TLS schemes.
func Options(rawURL, clientID string, options ...Option) (*mqtt.ClientOptions, error) {
	var set settings
	for _, o := range options {
		o(&set)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url's errors quote the URL, password included.
		return nil, errors.New("parse MQTT URL: not a valid URL (not shown: it may hold a password)")
	}
	switch u.Scheme {
	case "mqtt":
		u.Scheme = "tcp"
	case "mqtts", "tls":
		u.Scheme = "ssl"
	case "tcp", "ssl", "ws", "wss":
	default:
		return nil, fmt.Errorf("MQTT URL %q: scheme must be tcp, mqtt, ssl, mqtts, ws or wss", credential.RedactURL(rawURL))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("MQTT URL %q has no host", credential.RedactURL(rawURL))
	}
	opts := mqtt.NewClientOptions()
	switch secure := u.Scheme == "ssl" || u.Scheme == "wss"; {
	case secure && set.tls != nil:
		opts.SetTLSConfig(set.tls.Clone())
	case secure:
		opts.SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12})
	case set.tls != nil:
		return nil, fmt.Errorf("MQTT URL %q does not use TLS but TLS settings (CA, client certificate) are given: "+
			"use an ssl://, mqtts:// or wss:// URL with the broker's TLS port", credential.RedactURL(rawURL))
	}
	if u.User != nil {
		opts.SetUsername(u.User.Username())
		if p, ok := u.User.Password(); ok {
			opts.SetPassword(p)
		}
		u.User = nil
	}
	opts.AddBroker(u.String())
	opts.SetClientID(clientID)
	opts.SetCleanSession(false)
	opts.SetAutoReconnect(true)
	opts.SetConnectRetry(true)
	opts.SetConnectRetryInterval(time.Second)
	opts.SetMaxReconnectInterval(10 * time.Second)
	opts.SetConnectTimeout(10 * time.Second)
	opts.SetKeepAlive(30 * time.Second)
	opts.SetOrderMatters(false)
	return opts, nil
}

// ErrNotConnected is returned when the broker cannot be reached in time.
var ErrNotConnected = errors.New("MQTT broker not reachable")

// ErrTLS is wrapped by Connect's error when the TLS handshake with the broker fails: its
// certificate is not trusted or not for the host, or it refused the client's certificate.
// Retrying does not help.
var ErrTLS = errors.New("TLS handshake with the MQTT broker failed")

// Connect connects a client and waits until the first connection succeeds or ctx ends. With
// opts' ConnectRetry (as Options sets it) unreachable brokers are retried; a failed TLS
// handshake ends Connect at once with ErrTLS, and when ctx ends the error says why the last
// attempt failed.
func Connect(ctx context.Context, opts *mqtt.ClientOptions) (mqtt.Client, error) {
	var (
		mu      sync.Mutex
		lastErr error
	)
	tlsFailed := make(chan error, 1)
	o := *opts
	next := o.OnConnectionNotification
	o.SetConnectionNotificationHandler(func(c mqtt.Client, n mqtt.ConnectionNotification) {
		if f, ok := n.(mqtt.ConnectionNotificationFailed); ok {
			mu.Lock()
			lastErr = f.Reason
			mu.Unlock()
			if IsTLSFailure(f.Reason) {
				select {
				case tlsFailed <- f.Reason:
				default:
				}
			}
		}
		if next != nil {
			next(c, n)
		}
	})
	c := mqtt.NewClient(&o)
	tok := c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			if IsTLSFailure(err) {
				return nil, fmt.Errorf("connect to MQTT broker: %w: %w", ErrTLS, err)
			}
			return nil, fmt.Errorf("connect to MQTT broker: %w", err)
		}
	case err := <-tlsFailed:
		c.Disconnect(0)
		return nil, fmt.Errorf("connect to MQTT broker: %w: %w", ErrTLS, err)
	case <-ctx.Done():
		c.Disconnect(0)
		mu.Lock()
		defer mu.Unlock()
		if lastErr != nil {
			return nil, fmt.Errorf("%w: %w (last attempt: %w)", ErrNotConnected, ctx.Err(), lastErr)
		}
		return nil, fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
	}
	return c, nil
}

// IsTLSFailure reports whether err is a failed TLS handshake that retrying cannot mend: the
// server's certificate did not verify, the server sent a TLS alert (it refused the client's
// certificate, or none was sent), or the server does not speak TLS.
func IsTLSFailure(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		alert    tls.AlertError
		op       *net.OpError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid),
		errors.As(err, &record), errors.As(err, &alert):
		return true
	case errors.As(err, &op):
		// crypto/tls reports an alert received from the server as a *net.OpError "remote error".
		return op.Op == "remote error"
	}
	return false
}

// Publisher publishes QoS 1 messages and waits for the broker's acknowledgement.
type Publisher struct {
	Client mqtt.Client
}

// Publish sends payload to topic at QoS 1 and returns once the broker acknowledged it.
func (p *Publisher) Publish(ctx context.Context, topic string, payload []byte) error {
	if !p.Client.IsConnectionOpen() {
		return fmt.Errorf("publish to %s: %w", topic, ErrNotConnected)
	}
	tok := p.Client.Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("publish to %s: %w", topic, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publish to %s: %w", topic, ctx.Err())
	}
}
