// Package deploy holds what running OTAflow on real servers with Docker Compose needs
// (../docker-compose.yml and ../Dockerfile use the files here):
//
//   - mosquitto/: the broker's configuration (mosquitto.conf), the service accounts' topics
//     (acl) and the one-shot script that writes their password file (init-auth.sh);
//   - postgres/: the broker's database role and functions (mqtt-auth.sql) and the script that
//     installs them when the database is created (10-mqtt-auth.sh);
//   - temporal/: the Temporal server's configuration (production.yaml, dynamicconfig.yaml) and
//     its schema job (setup-schema.sh), which the native topology (internal/localstack) runs
//     too, embedded by the Go package there;
//   - healthcheck/: the container health check of the worker and mqttbridge images;
//   - prometheus/: Prometheus's configuration (prometheus.yml), OTAflow's alert rules
//     (alerts.yml) and their unit tests (alerts_test.yml), run with promtool;
//   - grafana/: OTAflow's dashboard (otaflow.json) and Grafana's provisioning of it and of the
//     Prometheus datasource.
//
// Its tests check the compose file (schema, interpolation, dependencies, pinned images, files
// it mounts and builds, the Temporal files and versions of the native topology) and that these
// files agree with the code: the topics of package protocol, and the broker's SQL run against
// a real PostgreSQL with the store's schema and internal/credential's hashes. Docker itself is
// not needed.
package deploy
