// Package localstack starts the servers OTAflow needs on this machine, without Docker: a
// Temporal development server (`temporal server start-dev`, state in memory or in a SQLite
// file) and a PostgreSQL server on a data directory of its own. The one-command local stack
// (devstack) and the integration tests (through internal/dev/testenv) both use it.
//
// Every server listens on 127.0.0.1 only, on a port given or picked free, and is a child of
// the calling process: Stop ends it, and on Linux it also ends when the caller dies without
// stopping it. A start that fails says why, with the server's last output, and leaves nothing
// running. A port that is taken gives an error wrapping ErrPortInUse that names the port.
//
//	cli, err := localstack.EnsureTemporalCLI(ctx, log.Printf)
//	tp, err := localstack.StartTemporal(ctx, localstack.TemporalOptions{CLIPath: cli, DBFile: "state/temporal.db", EnableUI: true})
//	defer tp.Stop()
//	pg, err := localstack.StartPostgres(ctx, localstack.PostgresOptions{Dir: "state/pg"})
//	defer pg.Stop()
//	// tp.Address(), tp.UIURL(), tp.Client(), pg.URL()
package localstack
