// Package ota is OTAflow's shared contract: the names that cross process boundaries (task
// queue, workflow IDs and types, signals, queries, updates, search attributes), the upgrade
// and rollout requests and statuses that travel in workflow histories, and the helpers that
// start those workflows with a Temporal client. The worker, the bridge and the starter import
// it; it imports nothing of OTAflow's but the device protocol.
package ota
