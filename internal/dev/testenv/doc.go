// Package testenv gives integration tests real servers: a Temporal development server and a
// PostgreSQL server, started once per test binary by TestMain in a temporary directory and
// stopped when the tests end. Tests never mock Temporal or PostgreSQL.
//
// Use it from TestMain, naming the servers the package needs:
//
//	func TestMain(m *testing.M) {
//		os.Exit(testenv.Start(m, testenv.Needs{Temporal: true, Postgres: true}))
//	}
//
// and in tests:
//
//	url := testenv.DatabaseURL(t)     // a new, empty database for this test alone
//	c := testenv.TemporalClient()     // connected to TemporalNamespace() at TemporalAddress()
//
// Every test gets its own database, so tests do not see each other's rows and may run in
// parallel. All tests of a binary share the Temporal server: give workflows IDs, and workers
// task queues, that no other test uses (for example built from t.Name()). The custom search
// attributes of ota.SearchAttributeNames are registered.
//
// The Temporal CLI comes from $OTAFLOW_TEST_TEMPORAL_CLI, else PATH, else the Go bin directory,
// else it is built with `go install` (2-3 minutes, once; ./scripts/test does this before the
// tests run). PostgreSQL comes from /usr/lib/postgresql/*/bin or PATH
// (`apt-get install -y postgresql`).
//
// Environment variables:
//
//	OTAFLOW_TEST_TEMPORAL_CLI        path of the Temporal CLI to run
//	OTAFLOW_TEST_TEMPORAL_ADDRESS    use this Temporal server (host:port) instead of starting one
//	OTAFLOW_TEST_TEMPORAL_NAMESPACE  its namespace (default "default")
//	OTAFLOW_TEST_DATABASE_URL        use this PostgreSQL server instead of starting one; its role
//	                                 must be allowed to create databases, and each test's
//	                                 database is dropped when the test ends
//
// The servers are stopped when the tests end, pass or fail, and when the binary gets SIGINT or
// SIGTERM; on Linux they also die with the test binary if it is killed or crashes (a test that
// panics, or -timeout). Their logs are in the temporary directory, and their last lines are
// printed when a test failed. Directories left by killed test binaries are removed by the next
// run.
package testenv
