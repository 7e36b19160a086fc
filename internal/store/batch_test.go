package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

// testDB is a store on a new database of the test PostgreSQL server, with the database's URL.
type testDB struct {
	*store.Store
	url string
}

// openStore opens a store on a new database of the test PostgreSQL server.
func openStore(t testing.TB) testDB {
	t.Helper()
	url := testenv.DatabaseURL(t)
	st, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return testDB{Store: st, url: url}
}

// batchFixture registers devices d1..d3 and gives them upgrades, some unfinished, so that
// progress reports have upgrades to move.
func batchFixture(t *testing.T, st testDB, t0 time.Time) {
	t.Helper()
	ctx := context.Background()
	for _, id := range []string{"d1", "d2", "d3"} {
		if err := st.AddDevice(ctx, id, "hash", nil); err != nil {
			t.Fatal(err)
		}
	}
	upgrades := []store.Upgrade{
		{RunID: "r1", DeviceID: "d1", Type: "firmware", Version: "1.1", CommandID: "c1", State: ota.StateSent},
		{RunID: "r2", DeviceID: "d2", Type: "app", Version: "2.0", CommandID: "c2", State: ota.StateSent},
		{RunID: "r3", DeviceID: "d2", Type: "firmware", Version: "9.0", CommandID: "c3", State: ota.StateSent},
		{RunID: "r4", DeviceID: "d3", Type: "firmware", Version: "1.1", CommandID: "c4", State: ota.StateSucceeded},
	}
	for _, u := range upgrades {
		u.WorkflowID, u.URL, u.MD5, u.Size = "ota-"+u.DeviceID, "http://x/p", "00", 1
		if err := st.RecordUpgrade(ctx, u, t0, ""); err != nil {
			t.Fatal(err)
		}
	}
}

// dump returns what the reports of a batch can change, as JSON text per table.
func dump(t *testing.T, db testDB) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var out []string
	for _, q := range []string{
		`SELECT coalesce(json_agg(t ORDER BY id), '[]')::text FROM (SELECT id, reported, reported_at, last_seen FROM devices) t`,
		`SELECT coalesce(json_agg(t ORDER BY n), '[]')::text FROM (SELECT row_number() OVER (ORDER BY id) AS n,
			device_id, command_id, type, version, progress, description, received_at FROM progress_events) t`,
		`SELECT coalesce(json_agg(t ORDER BY run_id), '[]')::text FROM (SELECT run_id, state, progress, updated_at FROM upgrades) t`,
		`SELECT coalesce(json_agg(t ORDER BY id), '[]')::text FROM (SELECT id, run_id, state, attempt, error_code, detail, at FROM upgrade_events) t`,
		`SELECT coalesce(json_agg(t ORDER BY n), '[]')::text FROM (SELECT row_number() OVER (ORDER BY id) AS n,
			topic, device_id, reason, payload, received_at FROM rejected_messages) t`,
	} {
		var s string
		if err := conn.QueryRow(ctx, q).Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// TestRecordBatchMatchesOneByOne checks RecordBatch has the effect of RecordProgress,
// RecordStatus and RecordRejected called in turn, on two databases set up alike, and reports
// unregistered devices without failing the rest of the batch.
func TestRecordBatchMatchesOneByOne(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	progress := func(device, id, typ, version string, p, s int) store.Report {
		return store.Report{DeviceID: device, ReceivedAt: at(s),
			Progress: &protocol.Progress{ID: id, Type: typ, Version: version, Progress: p, Desc: "step"}}
	}
	status := func(device string, s int, kv ...string) store.Report {
		st := protocol.Status{}
		for i := 0; i+1 < len(kv); i += 2 {
			st[kv[i]] = kv[i+1]
		}
		return store.Report{DeviceID: device, Status: st, ReceivedAt: at(s)}
	}
	rejected := func(device, reason string, payload []byte, s int) store.Rejected {
		return store.Rejected{Topic: "devices/" + device + "/ota/progress", DeviceID: device, Reason: reason, Payload: payload, ReceivedAt: at(s)}
	}
	tests := []struct {
		name     string
		reports  []store.Report
		rejected []store.Rejected
	}{
		{name: "empty"},
		{name: "progress of several devices interleaved", reports: []store.Report{
			progress("d1", "c1", "firmware", "1.1", 10, 1),
			progress("d2", "c2", "app", "2.0", 5, 2),
			progress("d1", "c1", "firmware", "1.1", 20, 3),
			progress("d2", "c3", "firmware", "9.0", 40, 4),
			progress("d2", "c2", "app", "2.0", 6, 5),
			progress("d1", "c1", "firmware", "1.1", 30, 6),
		}},
		{name: "progress without command ID matches type and version", reports: []store.Report{
			progress("d2", "", "app", "2.0", 50, 1),
			progress("d2", "", "app", "3.0", 60, 2), // no such upgrade
			progress("d1", "", "firmware", "1.1", 70, 3),
		}},
		{name: "error codes and finished upgrades are not moved", reports: []store.Report{
			progress("d1", "c1", "firmware", "1.1", 40, 1),
			progress("d1", "c1", "firmware", "1.1", -3, 2),
			progress("d3", "c4", "firmware", "1.1", 90, 3),
		}},
		{name: "last status wins, last seen is the latest", reports: []store.Report{
			status("d1", 5, "firmware_ver", "1.0"),
			status("d2", 1, "app_ver", "2.0"),
			status("d1", 3, "firmware_ver", "1.1", "app_ver", "2.0"), // received earlier, reported later
			status("d3", 2, "firmware_ver", "1.1"),
		}},
		{name: "mixed with unknown devices", reports: []store.Report{
			progress("d1", "c1", "firmware", "1.1", 10, 1),
			progress("ghost", "c9", "firmware", "1.1", 10, 2),
			status("ghost", 3, "firmware_ver", "1.0"),
			status("d1", 4, "firmware_ver", "1.1"),
			progress("d2", "c2", "app", "2.0", 15, 5),
			status("d2", 6, "app_ver", "2.0"),
			progress("d1", "c1", "firmware", "1.1", 100, 7),
		}, rejected: []store.Rejected{
			rejected("d1", "malformed JSON", []byte(`{"x`), 2),
			rejected("", "not an OTAflow device topic", []byte{}, 3),
			rejected("d2", "\"progress\" must be an integer", []byte(`{"progress":"x"}`), 4),
		}},
		{name: "only unknown devices", reports: []store.Report{
			progress("ghost", "c9", "firmware", "1.1", 10, 1),
			status("phantom", 2, "app_ver", "1.0"),
		}},
		{name: "only rejected", rejected: []store.Rejected{
			rejected("d3", "empty payload", []byte{}, 1),
			rejected("d1", "trailing data", []byte(`{} {}`), 2),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			batched, oneByOne := openStore(t), openStore(t)
			batchFixture(t, batched, t0)
			batchFixture(t, oneByOne, t0)

			stored, err := batched.RecordBatch(ctx, tt.reports, tt.rejected)
			if err != nil {
				t.Fatalf("RecordBatch: %v", err)
			}
			var want []bool
			for _, r := range tt.reports {
				var err error
				if r.Progress != nil {
					err = oneByOne.RecordProgress(ctx, r.DeviceID, *r.Progress, r.ReceivedAt)
				} else {
					err = oneByOne.RecordStatus(ctx, r.DeviceID, r.Status, r.ReceivedAt)
				}
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					t.Fatal(err)
				}
				want = append(want, err == nil)
			}
			for _, r := range tt.rejected {
				if err := oneByOne.RecordRejected(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(stored, want) && !(len(stored) == 0 && len(want) == 0) {
				t.Errorf("stored %v, want %v", stored, want)
			}
			got, wantRows := dump(t, batched), dump(t, oneByOne)
			for i, table := range []string{"devices", "progress_events", "upgrades", "upgrade_events", "rejected_messages"} {
				if got[i] != wantRows[i] {
					t.Errorf("%s after RecordBatch:\n%s\nafter one call per report:\n%s", table, got[i], wantRows[i])
				}
			}
		})
	}
}

// TestRecordRejectedNilPayload checks a rejected message without payload is stored (empty)
// rather than failing on the column's NOT NULL, by RecordBatch and by RecordRejected.
func TestRecordRejectedNilPayload(t *testing.T) {
	tests := []struct {
		name   string
		record func(ctx context.Context, st *store.Store, r store.Rejected) error
	}{
		{"RecordBatch", func(ctx context.Context, st *store.Store, r store.Rejected) error {
			_, err := st.RecordBatch(ctx, nil, []store.Rejected{r})
			return err
		}},
		{"RecordRejected", func(ctx context.Context, st *store.Store, r store.Rejected) error {
			return st.RecordRejected(ctx, r)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t)
			r := store.Rejected{Topic: "devices/x/ota/progress", DeviceID: "x", Reason: "empty payload", ReceivedAt: time.Now()}
			if err := tt.record(ctx, st.Store, r); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			got, err := st.RejectedMessages(ctx, "x", 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || len(got[0].Payload) != 0 || got[0].Reason != r.Reason {
				t.Errorf("rejected messages %+v", got)
			}
		})
	}
}

// TestRecordBatchFailsWhole checks an error stores nothing: the batch is one transaction.
func TestRecordBatchFailsWhole(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	if err := st.AddDevice(ctx, "d1", "hash", nil); err != nil {
		t.Fatal(err)
	}
	reports := []store.Report{
		{DeviceID: "d1", Progress: &protocol.Progress{Type: "firmware", Version: "1.1", Progress: 10}, ReceivedAt: time.Now()},
		{DeviceID: "d1", Status: protocol.Status{"firmware_ver": "1.1"}, ReceivedAt: time.Now()},
	}
	// NUL is not storable in PostgreSQL text: the rejected message fails the transaction.
	bad := store.Rejected{Topic: "bad\x00topic", Reason: "x", Payload: []byte{}, ReceivedAt: time.Now()}
	if _, err := st.RecordBatch(ctx, reports, []store.Rejected{bad}); err == nil {
		t.Fatal("RecordBatch with an unstorable value succeeded")
	}
	ev, err := st.ProgressEvents(ctx, "d1", 10)
	if err != nil {
		t.Fatal(err)
	}
	d, err := st.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if len(ev) != 0 || len(d.Reported) != 0 || d.LastSeen != nil {
		t.Errorf("a failed batch stored something: progress %+v, device %+v", ev, d)
	}
}

// TestRecordBatchConcurrentBridges: bridges sharing a subscription store batches of the same
// devices at once, in whatever order their messages came; no batch may fail (a deadlock
// between two of them would fail one, and its reports would be redelivered and stored twice).
func TestRecordBatchConcurrentBridges(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	const devices, bridges, rounds = 100, 4, 30
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%03d", i)
		if err := st.AddDevice(ctx, ids[i], "hash", nil); err != nil {
			t.Fatal(err)
		}
	}
	errs := make([]error, bridges)
	var wg sync.WaitGroup
	for b := range bridges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[b] = func() error {
				for r := range rounds {
					var reports []store.Report
					for i := range devices {
						id := ids[i]
						if b%2 == 1 {
							id = ids[devices-1-i] // the other bridges see the devices the other way round
						}
						at := time.Now()
						reports = append(reports,
							store.Report{DeviceID: id, Progress: &protocol.Progress{ID: "c", Type: "firmware", Version: "1.1", Progress: r + 1}, ReceivedAt: at},
							store.Report{DeviceID: id, Status: protocol.Status{"firmware_ver": "1.0"}, ReceivedAt: at})
					}
					if _, err := st.RecordBatch(ctx, reports, nil); err != nil {
						return fmt.Errorf("bridge %d, round %d: %w", b, r, err)
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, st.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM progress_events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if want := devices * bridges * rounds; n != want {
		t.Errorf("%d progress events stored, want %d", n, want)
	}
}
