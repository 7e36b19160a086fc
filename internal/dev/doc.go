// Package dev groups OTAflow's development harness: what `go run ./devstack`, devicesim and
// the tests run, and nothing the shipped programs (worker, mqttbridge, starter) link.
//
//   - broker: the embedded MQTT broker (mochi-mqtt) with the registry's device auth, the
//     protocol's ACL and a session store;
//   - simulator: the simulated fleet, with fault injection;
//   - localstack: PostgreSQL, the Temporal dev server and real server, and Mosquitto, started
//     natively from deploy/'s configuration;
//   - testenv: the servers the tests share, stopped when they end;
//   - system: the local stack's wiring of broker, worker, bridge and fleet in one process;
//   - prodstack: the production topology (real Temporal server, Mosquitto, two workers and
//     two bridges as processes) on one machine.
//
// TestShippedProgramsLeaveTheHarnessOut checks that the shipped programs import none of it.
package dev
