// Package mqttconn builds paho MQTT client options for OTAflow's services from one URL, so the
// worker, the bridge and the tools configure connections the same way.
package mqttconn

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Options turns an MQTT URL such as tcp://user:password@localhost:1883 (schemes tcp, mqtt,
// ssl, tls, mqtts, ws, wss) into paho client options with the given client ID: persistent
// session, auto-reconnect, credentials from the URL.
func Options(rawURL, clientID string) (*mqtt.ClientOptions, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse MQTT URL: %w", err)
	}
	switch u.Scheme {
	case "mqtt":
		u.Scheme = "tcp"
	case "mqtts", "tls":
		u.Scheme = "ssl"
	case "tcp", "ssl", "ws", "wss":
	default:
		return nil, fmt.Errorf("MQTT URL %q: scheme must be tcp, mqtt, ssl, mqtts, ws or wss", Redact(rawURL))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("MQTT URL %q has no host", Redact(rawURL))
	}
	opts := mqtt.NewClientOptions()
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

// Redact returns an MQTT URL with its password hidden, for logs and errors.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// ErrNotConnected is returned when the broker cannot be reached in time.
var ErrNotConnected = errors.New("MQTT broker not reachable")

// Connect connects a client and waits until the first connection succeeds or ctx ends.
func Connect(ctx context.Context, opts *mqtt.ClientOptions) (mqtt.Client, error) {
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("connect to MQTT broker: %w", err)
		}
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
	}
	return c, nil
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
