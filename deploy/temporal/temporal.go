// Package temporal holds the configuration of OTAflow's Temporal server, the files
// docker-compose.yml mounts into the temporal and temporal-schema services, embedded so that
// the native topology (internal/dev/localstack) runs the very same bytes:
//
//   - production.yaml: the server's configuration, a template the server renders with the
//     environment (PostgreSQL persistence and visibility, 4 history shards, every port);
//   - dynamicconfig.yaml: its dynamic configuration;
//   - setup-schema.sh: the schema job, which creates the two databases and brings their
//     schemas up to date with the server's SQL tool.
package temporal

import "embed"

// File names in Files.
const (
	ConfigFile        = "production.yaml"
	DynamicConfigFile = "dynamicconfig.yaml"
	SchemaScript      = "setup-schema.sh"
)

// Environment is the server's environment name (--env): the name of ConfigFile without
// its extension.
const Environment = "production"

// HealthPath is the path of the frontend's HTTP API (port FRONTEND_HTTP_PORT, 7243 by
// default) that docker-compose.yml's health check asks: it answers once the server serves.
const HealthPath = "/api/v1/system-info"

// Files holds ConfigFile, DynamicConfigFile and SchemaScript.
//
//go:embed production.yaml dynamicconfig.yaml setup-schema.sh
var Files embed.FS
