package bridge_test

import (
	"context"
	"os"
	"testing"

	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

// openStore opens a store on a new database of the test PostgreSQL server.
func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// temporalClient is the test Temporal server's shared client.
func temporalClient(testing.TB) client.Client { return testenv.TemporalClient() }
