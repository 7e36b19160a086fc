package broker

import (
	"context"
	"slices"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// A device disabled while it is connected must lose its connection, not only be refused its
// next one. The registry is PostgreSQL, written by `starter devices disable` in another
// process; the broker learns of it by asking, every Options.DisabledInterval, which of its
// connected devices are disabled (one indexed query, skipped when no device is connected).
// A poll rather than LISTEN/NOTIFY: it needs no connection of its own held open, misses
// nothing while the database or the broker restarts (a notification sent meanwhile would be
// lost, and a resynchronising query would be needed anyway), and also catches a device that
// passed its credentials check just before it was disabled. Its price is the delay, at most
// one interval, and one query per interval: about 14 ms with 10,000 devices connected on
// this project's 2-core machine (BenchmarkDisabledAmong in internal/store).

// watchDisabled closes the connections of disabled devices every interval until ctx ends.
func (b *Broker) watchDisabled(ctx context.Context) {
	defer close(b.watchDone)
	t := time.NewTicker(b.opts.DisabledInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := b.closeDisabled(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			// Logged once per outage: the poll goes on, and the log should not fill up.
			b.log.Warn("cannot look up disabled devices; connected devices stay connected until it works again", "error", err)
			failing = true
		case err == nil && failing:
			b.log.Info("looking up disabled devices works again")
			failing = false
		}
	}
}

// closeDisabled closes the connections of the connected devices that are disabled.
func (b *Broker) closeDisabled(ctx context.Context) error {
	connected := map[string]*mqtt.Client{}
	for id, cl := range b.server.Clients.GetAll() {
		username := string(cl.Properties.Username)
		if _, service := b.opts.Services[username]; service || username != id || cl.Closed() {
			continue // only devices connect with client ID = username
		}
		connected[id] = cl
	}
	if len(connected) == 0 {
		return nil
	}
	ids := make([]string, 0, len(connected))
	for id := range connected {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	lctx, cancel := context.WithTimeout(ctx, b.opts.LookupTimeout)
	defer cancel()
	disabled, err := b.opts.Disabled.DisabledAmong(lctx, ids)
	if err != nil {
		return err
	}
	for _, id := range disabled {
		cl, ok := connected[id]
		if !ok {
			continue
		}
		b.log.Warn("connection closed", "device", id, "remote", cl.Net.Remote, "reason", "device disabled")
		// Closing the socket, without a DISCONNECT packet: MQTT 3.1.1 has none from the
		// server, and a client that does not read must not hold the poll up.
		cl.Stop(packets.ErrNotAuthorized)
	}
	return nil
}
