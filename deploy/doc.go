// Package deploy holds what running OTAflow on real servers with Docker Compose needs
// (../docker-compose.yml and ../Dockerfile use the files here):
//
//   - mosquitto/: the production MQTT broker's configuration, Mosquitto 2.0.11 with its
//     dynamic-security plugin: mosquitto.conf, the devices' topic rules (acl) and the start
//     script that creates the broker administrator on the first start (start.sh). The native
//     topology (internal/localstack) runs the same files, embedded by the Go package there;
//   - temporal/: the one-shot script that registers OTAflow's search attributes;
//   - healthcheck/: the container health check of the worker and mqttbridge images.
//
// Its tests check the compose file (schema, interpolation, dependencies, pinned images, files
// it mounts and builds, the broker's files and version against the native topology's) and
// that these files agree with the code: the search attributes of package workflows, the
// topics of package protocol, the queue limits the protocol's report rate needs. Docker itself
// is not needed.
package deploy
