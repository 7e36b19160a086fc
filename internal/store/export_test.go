package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// OpenTraced is Open with a tracer of every statement the store runs.
func OpenTraced(ctx context.Context, url string, tracer pgx.QueryTracer) (*Store, error) {
	return open(ctx, url, tracer)
}
