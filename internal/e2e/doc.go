// Package e2e holds OTAflow's end-to-end tests: device upgrades and rollouts on real servers
// (the Temporal dev server, PostgreSQL, the embedded MQTT broker) with the real worker, bridge
// and simulated devices, started by the tests themselves. It has no code besides its tests.
package e2e
