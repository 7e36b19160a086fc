package bridge_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/protocol"
)

// TestOverloadLosesNothing makes PostgreSQL stall (a transaction holds a lock that the
// bridge's writes wait for) or Temporal unreachable (the bridge's client points at a closed
// port) while devices publish a burst many times larger than the bridge's queues. During the
// outage the bridge must acknowledge nothing and stop reading from the broker once its
// queues and batches are full, so that what it holds stays bounded by its configuration
// whatever the burst (the broker keeps the rest). Once the outage is over, every message
// must be stored exactly once and the counters must agree.
func TestOverloadLosesNothing(t *testing.T) {
	tests := []struct {
		name                       string
		outage                     string // "database" or "temporal"
		shards, queueSize, batch   int
		devices, messagesPerDevice int
	}{
		{"database, one message per batch", "database", 2, 4, 1, 4, 150},
		{"database, batches", "database", 3, 8, 16, 8, 150},
		{"temporal, batches", "temporal", 3, 8, 16, 8, 150},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := newStack(t)
			var devices []string
			for i := range tt.devices {
				devices = append(devices, s.device(fmt.Sprintf("burst%d", i)))
			}
			cfg := s.bridgeConfig("bridge-overload-" + randomHex(4))
			cfg.Shards, cfg.QueueSize, cfg.BatchSize = tt.shards, tt.queueSize, tt.batch
			cfg.AttemptTimeout = 300 * time.Millisecond // stalled attempts time out and are retried
			// Forwarded progress signalled at once, so that a Temporal outage holds messages
			// back: a report held in its merge window is acknowledged once stored.
			cfg.ProgressMerge = -1
			sig := &switchSignaler{to: s.temporal}
			b, _ := s.runBridgeWith(cfg, sig, nil)

			db, err := pgx.Connect(ctx, s.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = db.Close(ctx) }()
			var end func()
			switch tt.outage {
			case "database":
				// A transaction holding progress_events in EXCLUSIVE mode, which every INSERT
				// waits for. Reads (the broker's device logins) go on.
				tx, err := db.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, `LOCK TABLE progress_events IN EXCLUSIVE MODE`); err != nil {
					t.Fatal(err)
				}
				end = func() {
					if err := tx.Rollback(ctx); err != nil {
						t.Fatal(err)
					}
				}
			case "temporal":
				// A real Temporal client whose server is not there.
				dead, err := client.NewLazyClient(client.Options{HostPort: "127.0.0.1:1", Logger: log.NewStructuredLogger(quietLogger())})
				if err != nil {
					t.Fatal(err)
				}
				defer dead.Close()
				sig.set(dead)
				end = func() { sig.set(s.temporal) }
			}

			// Each device publishes its burst; the broker acknowledges every message.
			total := tt.devices * tt.messagesPerDevice
			var wg sync.WaitGroup
			for _, d := range devices {
				c := s.connectDevice(d)
				wg.Go(func() {
					for i := range tt.messagesPerDevice {
						tok := c.Publish(protocol.ProgressTopic(d), 1, false, progressJSON(fmt.Sprintf("c%d", i/99), 1+i%99))
						if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
							t.Errorf("publish %d of %s: %v", i, d, tok.Error())
							return
						}
					}
				})
			}
			wg.Wait()
			require.Eventually(t, func() bool { return b.Stats().Retries >= 2 },
				30*time.Second, 20*time.Millisecond, "the bridge retrying during the outage")

			// Held: at most a queue and a batch per shard, and the message the MQTT handler is
			// blocked queueing.
			limit := int64(tt.shards*(tt.queueSize+tt.batch) + 1)
			st := b.Stats()
			t.Logf("outage: %d published, %d taken by the bridge (limit %d), %d retries", total, st.Received, limit, st.Retries)
			if st.Received > limit || st.Acked != 0 || (tt.outage == "database" && st.Stored != 0) {
				t.Errorf("during the outage: %+v; want at most %d received of %d published, none acknowledged",
					st, limit, total)
			}
			end()

			require.Eventually(t, func() bool { return b.Stats().Acked >= int64(total) },
				30*time.Second, 20*time.Millisecond, "every message acknowledged")
			var rows, distinct int
			if err := db.QueryRow(ctx, `SELECT count(*), count(DISTINCT (device_id, command_id, progress))
				FROM progress_events`).Scan(&rows, &distinct); err != nil {
				t.Fatal(err)
			}
			if rows != total || distinct != total {
				t.Errorf("stored %d progress reports (%d distinct), want each of the %d published once", rows, distinct, total)
			}
			for _, d := range devices {
				if n := len(s.progressEvents(d)); n != tt.messagesPerDevice {
					t.Errorf("device %s: %d reports stored, want %d", d, n, tt.messagesPerDevice)
				}
			}
			st = b.Stats()
			n := int64(total)
			if st.Received != n+st.Duplicates || st.Stored != n || st.Acked != n || st.Rejected != 0 ||
				st.Unfinished != 0 || st.Signalled+st.Coalesced != n {
				t.Errorf("stats %+v after %d messages", st, total)
			}
		})
	}
}

// switchSignaler signals through the Signaler it is set to.
type switchSignaler struct {
	mu sync.Mutex
	to bridge.Signaler
}

func (s *switchSignaler) set(to bridge.Signaler) {
	s.mu.Lock()
	s.to = to
	s.mu.Unlock()
}

func (s *switchSignaler) SignalWorkflow(ctx context.Context, workflowID, runID, name string, arg any) error {
	s.mu.Lock()
	to := s.to
	s.mu.Unlock()
	return to.SignalWorkflow(ctx, workflowID, runID, name, arg)
}
