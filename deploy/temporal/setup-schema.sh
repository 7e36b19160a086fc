#!/bin/sh
# Creates the Temporal server's two PostgreSQL databases, unless they exist, and brings their
# schemas to the version of the SQL tool's server release. Safe to run again: an up-to-date
# database is left as it is. Run before the server starts, by
#   - docker-compose.yml's temporal-schema service (temporalio/admin-tools, same version as
#     the server), with the defaults below;
#   - internal/dev/localstack (StartTemporalServer), with the tool built by
#     `go install go.temporal.io/server/cmd/tools/sql@v1.29.1` and the schemas of the module
#     cache.
#
# Environment (the connection variables are production.yaml's):
#   POSTGRES_SEEDS (127.0.0.1), DB_PORT (5432), POSTGRES_USER (temporal), POSTGRES_PWD,
#   DBNAME (temporal), VISIBILITY_DBNAME (temporal_visibility);
#   TEMPORAL_SQL_TOOL: the SQL tool (temporal-sql-tool, as admin-tools names it);
#   TEMPORAL_SCHEMA_DIR: go.temporal.io/server's schema/postgresql/v12 directory
#     (/etc/temporal/schema/postgresql/v12 in admin-tools).
set -eu

tool=${TEMPORAL_SQL_TOOL:-temporal-sql-tool}
schema_dir=${TEMPORAL_SCHEMA_DIR:-/etc/temporal/schema/postgresql/v12}
# The tool reads the password from the environment, which keeps it off the command line.
SQL_PASSWORD=${POSTGRES_PWD:-}
export SQL_PASSWORD

sql() { # sql DATABASE COMMAND ARGS...: the SQL tool on one database; output only on failure
	db=$1
	shift
	if ! out=$("$tool" --plugin postgres12 --endpoint "${POSTGRES_SEEDS:-127.0.0.1}" --port "${DB_PORT:-5432}" \
		--user "${POSTGRES_USER:-temporal}" --database "$db" "$@" 2>&1); then
		printf '%s\n' "$out" >&2
		return 1
	fi
	printf '%s\n' "$out"
}

setup() { # setup DATABASE SCHEMA (temporal or visibility)
	db=$1
	versioned=$schema_dir/$2/versioned
	if [ ! -d "$versioned" ]; then
		echo "setup-schema: no schema directory $versioned (set TEMPORAL_SCHEMA_DIR)" >&2
		exit 1
	fi
	# Each command does only what is missing: `create` leaves an existing database alone,
	# `setup-schema -v 0.0` adds version 0.0 to a new database only, and `update-schema`
	# applies the versioned changes not applied yet, in order.
	sql "$db" create >/dev/null
	sql "$db" setup-schema -v 0.0 >/dev/null
	out=$(sql "$db" update-schema -d "$versioned")
	# Say what happened, from the tool's log lines.
	now=$(printf '%s\n' "$out" | sed -n 's/.*found zero updates from current version \([0-9.]*\).*/\1/p' | tail -n 1)
	if [ -n "$now" ]; then
		echo "setup-schema: database $db: schema $now, up to date"
		return
	fi
	from=$(printf '%s\n' "$out" | sed -n 's/.*Schema updated from \([0-9.]*\) to .*/\1/p' | head -n 1)
	to=$(printf '%s\n' "$out" | sed -n 's/.*Schema updated from [0-9.]* to \([0-9.]*\).*/\1/p' | tail -n 1)
	echo "setup-schema: database $db: schema updated from ${from:-?} to ${to:-the latest version}"
}

setup "${DBNAME:-temporal}" temporal
setup "${VISIBILITY_DBNAME:-temporal_visibility}" visibility
