// Command starter is the OTAflow command line for business systems and operators: it starts,
// follows and cancels device upgrades, rolls upgrades out to fleets in waves (and steers and
// schedules those rollouts), shows a device's upgrade status, manages the device registry and
// inspects, signs and verifies packages.
//
//	starter upgrade --device sensor-1 --type firmware --version 1.1 \
//	    --url https://files.example.com/fw/1.1.bin --md5 9e107d9d372bb6826bd81d3542a419d6 --size 1048576 --wait
//	starter status --device sensor-1
//	starter cancel --device sensor-1
//	starter devices add --device sensor-1 --label site=lab
//	starter devices list --prefix sensor-
//	starter devices import --file devices.csv --out secrets.csv
//	starter package inspect --url ./fw-1.1.bin
//	starter package keygen --out keys --key-id release-2026
//	starter package sign --key keys/release-2026.key --type firmware --version 1.1 --file fw-1.1.bin --sidecar fw-1.1.json
//	starter package verify --file fw-1.1.bin --sidecar fw-1.1.json --trusted-keys trusted-keys/
//	starter rollout start --name fw-1.1 --type firmware --version 1.1 --url U --md5 M --size S \
//	    --prefix sensor- --waves 1%,10%,50%,100% --wave-success 95 --bake 10m --failure-threshold 10
//	starter rollout status fw-1.1 --watch
//	starter rollout pause fw-1.1 --reason "checking the canaries"
//	starter rollout schedule --name fw-1.1 ... --at 2026-11-27T01:00:00Z
//
// Global flags come before the command and are also read from the environment
// (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, DATABASE_URL, TEMPORAL_UI_URL). Exit codes: 0 success,
// 1 failure (including an upgrade that ended failed, timed out or canceled, and a rollout that
// did not complete), 2 bad usage or input, 3 the device already has an upgrade running (or the
// rollout already runs or has a schedule), 130 interrupted while waiting.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
