package bridge_test

import (
	"context"
	"os"
	"testing"

	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
}

// openStore opens a store on a new database of the test PostgreSQL server and returns it
// with the database's URL.
func openStore(t testing.TB) (*store.Store, string) {
	t.Helper()
	url := testenv.DatabaseURL(t)
	st, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st, url
}

// temporalClient is the test Temporal server's shared client.
func temporalClient(testing.TB) client.Client { return testenv.TemporalClient() }
