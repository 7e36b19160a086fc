// Package deploy holds what running OTAflow on real servers with Docker Compose needs
// (../docker-compose.yml and ../Dockerfile use the files here):
//
//   - mosquitto/: the production MQTT broker's configuration, Mosquitto 2.0.11 with its
//     dynamic-security plugin: mosquitto.conf, the devices' topic rules (acl) and the start
//     script that creates the broker administrator on the first start (start.sh). The native
//     topology (internal/dev/localstack) runs the same files, embedded by the Go package there;
//   - temporal/: the Temporal server's configuration (production.yaml, dynamicconfig.yaml) and
//     its schema job (setup-schema.sh), which the native topology (internal/dev/localstack) runs
//     too, embedded by the Go package there;
//   - healthcheck/: the container health check of the worker and mqttbridge images;
//   - prometheus/: Prometheus's configuration (prometheus.yml), OTAflow's alert rules
//     (alerts.yml) and their unit tests (alerts_test.yml), run with promtool;
//   - grafana/: OTAflow's dashboard (otaflow.json) and Grafana's provisioning of it and of the
//     Prometheus datasource.
//
// Its tests check the compose file (schema, interpolation, dependencies, pinned images, files
// it mounts and builds, the broker's and the Temporal server's files and versions against the
// native topology's) and that these files agree with the code: the topics of package
// protocol, the queue limits the protocol's report rate needs. Docker itself is not needed.
package deploy
