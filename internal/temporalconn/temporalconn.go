// Package temporalconn dials the Temporal server the same way for every OTAflow program, with
// an error that says what to check when the server cannot be reached.
package temporalconn

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"
)

// Options say where Temporal is.
type Options struct {
	// Address is host:port of the Temporal frontend (TEMPORAL_ADDRESS).
	Address string
	// Namespace is the Temporal namespace (TEMPORAL_NAMESPACE); "" means "default".
	Namespace string
	// Logger receives the SDK's logs; nil keeps only warnings and errors on stderr.
	Logger *slog.Logger
	// TLS, when set, secures the connection (see tlsconfig.Files.Config: a CA bundle, a client
	// certificate for mutual TLS, a server name); nil connects without TLS.
	TLS *tls.Config
	// MetricsHandler receives the SDK's client and worker metrics, and those of the
	// workflows the client's workers run (metrics.TemporalHandler); nil records none.
	MetricsHandler client.MetricsHandler
}

// Dial connects to Temporal and checks the server answers within 10 seconds.
func Dial(ctx context.Context, o Options) (client.Client, error) {
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(logWriter{}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	opts := client.Options{
		HostPort:  o.Address,
		Namespace: o.Namespace,
		Logger:    log.NewStructuredLogger(logger),

		MetricsHandler: o.MetricsHandler,
	}
	if o.TLS != nil {
		opts.ConnectionOptions.TLS = o.TLS.Clone()
	}
	c, err := client.DialContext(dctx, opts)
	if err != nil {
		if o.TLS != nil {
			return nil, fmt.Errorf("cannot reach Temporal at %s over TLS (namespace %s): %w; is the server running, "+
				"does it speak TLS on that port, and do the CA, client certificate and server name match it?", o.Address, o.Namespace, err)
		}
		return nil, fmt.Errorf("cannot reach Temporal at %s (namespace %s): %w; is the server running? "+
			"Start the local stack with `go run ./devstack` or set TEMPORAL_ADDRESS", o.Address, o.Namespace, err)
	}
	return c, nil
}
