// Command healthcheck is the container health check of the worker and mqttbridge images
// (distroless, so there is no shell to run one). It exits 0 when every server the program
// depends on accepts a TCP connection from the container: Temporal (TEMPORAL_ADDRESS),
// PostgreSQL (DATABASE_URL) and the MQTT broker (MQTT_URL), read from the same environment
// variables as the programs. Otherwise it names the server that does not answer and exits 1.
//
// The programs exit when they fail, which stops the container; this check adds whether they
// can reach what they need.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

func main() {
	ts, err := targets(os.Getenv)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = check(ctx, ts)
		cancel()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		os.Exit(1)
	}
}

// target is a server to reach.
type target struct {
	name string // for people: "Temporal (TEMPORAL_ADDRESS)"
	addr string // host:port
}

// targets returns the servers named by the environment; unset variables are skipped.
func targets(getenv func(string) string) ([]target, error) {
	var ts []target
	if v := getenv("TEMPORAL_ADDRESS"); v != "" {
		if _, _, err := net.SplitHostPort(v); err != nil {
			return nil, fmt.Errorf("TEMPORAL_ADDRESS %q is not host:port: %w", v, err)
		}
		ts = append(ts, target{"Temporal (TEMPORAL_ADDRESS)", v})
	}
	if v := getenv("DATABASE_URL"); v != "" {
		addr, err := urlAddr(v, map[string]string{"postgres": "5432", "postgresql": "5432"})
		if err != nil {
			return nil, fmt.Errorf("DATABASE_URL: %w", err)
		}
		ts = append(ts, target{"PostgreSQL (DATABASE_URL)", addr})
	}
	if v := getenv("MQTT_URL"); v != "" {
		addr, err := urlAddr(v, map[string]string{"tcp": "1883", "mqtt": "1883", "ssl": "8883", "tls": "8883",
			"mqtts": "8883", "tcps": "8883", "ws": "80", "wss": "443"})
		if err != nil {
			return nil, fmt.Errorf("MQTT_URL: %w", err)
		}
		ts = append(ts, target{"MQTT broker (MQTT_URL)", addr})
	}
	if len(ts) == 0 {
		return nil, errors.New("none of TEMPORAL_ADDRESS, DATABASE_URL and MQTT_URL is set: nothing to check")
	}
	return ts, nil
}

// urlAddr returns the host:port of a URL, with the default port of its scheme. The error
// never contains the URL, which may hold a password.
func urlAddr(raw string, defaultPorts map[string]string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("not a URL")
	}
	def, ok := defaultPorts[strings.ToLower(u.Scheme)]
	if !ok {
		return "", fmt.Errorf("unsupported scheme %q", u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return "", errors.New("no host")
	}
	if port == "" {
		port = def
	}
	return net.JoinHostPort(host, port), nil
}

// check connects to every target and reports those that do not answer.
func check(ctx context.Context, ts []target) error {
	var errs []error
	var d net.Dialer
	for _, t := range ts {
		c, err := d.DialContext(ctx, "tcp", t.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s at %s: %w", t.name, t.addr, err))
			continue
		}
		c.Close()
	}
	return errors.Join(errs...)
}
