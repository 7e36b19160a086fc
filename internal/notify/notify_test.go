package notify_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Start(m, testenv.Needs{Postgres: true}))
}

func TestSignVerify(t *testing.T) {
	body := []byte(`{"id":"x"}`)
	sig := notify.Sign([]byte("s3cret"), body)
	if !strings.HasPrefix(sig, "sha256=") || len(sig) != len("sha256=")+64 {
		t.Fatalf("signature %q", sig)
	}
	tests := []struct {
		name   string
		secret string
		body   string
		header string
		want   bool
	}{
		{"matches", "s3cret", `{"id":"x"}`, sig, true},
		{"other secret", "other", `{"id":"x"}`, sig, false},
		{"other body", "s3cret", `{"id":"y"}`, sig, false},
		{"no header", "s3cret", `{"id":"x"}`, "", false},
		{"bare hex", "s3cret", `{"id":"x"}`, strings.TrimPrefix(sig, "sha256="), false},
	}
	for _, tt := range tests {
		if got := notify.Verify([]byte(tt.secret), []byte(tt.body), tt.header); got != tt.want {
			t.Errorf("%s: Verify = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(v string) func(string) string { return func(string) string { return v } }
	tests := []struct {
		name, file, env, want string
		wantErr               bool
	}{
		{"file wins", file, "from-env", "from-file", false},
		{"environment", "", "from-env", "from-env", false},
		{"neither", "", "", "", true},
		{"empty file", empty, "from-env", "", true},
		{"missing file", filepath.Join(dir, "none"), "", "", true},
	}
	for _, tt := range tests {
		got, err := notify.ReadSecret(tt.file, env(tt.env))
		if (err != nil) != tt.wantErr || string(got) != tt.want {
			t.Errorf("%s: ReadSecret = %q, %v", tt.name, got, err)
		}
	}
}

// hook is a receiver that answers each event's first fail[id] deliveries 503.
type hook struct {
	secret []byte
	fail   map[string]int

	mu    sync.Mutex
	got   []string // accepted event IDs, in order
	tries map[string]int
	bad   int
}

func (h *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id := r.Header.Get(notify.HeaderIdempotencyKey)
	h.mu.Lock()
	defer h.mu.Unlock()
	if !notify.Verify(h.secret, body, r.Header.Get(notify.HeaderSignature)) {
		h.bad++
	}
	h.tries[id]++
	if h.tries[id] <= h.fail[id] {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	h.got = append(h.got, id)
}

func event(device, id string) ota.Event {
	return ota.Event{Schema: ota.EventSchema, ID: id, Type: ota.EventUpgradeFinished, OccurredAt: time.Now(),
		Upgrade: &ota.UpgradeEvent{DeviceID: device, State: ota.StateSucceeded}}
}

// deliverer is a Deliverer of st to h with fast retries, and the outbox's rows.
func setup(t *testing.T, h *hook, retryFor time.Duration) (*notify.Deliverer, *store.Store, func() map[string]string) {
	t.Helper()
	ctx := context.Background()
	url := testenv.DatabaseURL(t)
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	d := &notify.Deliverer{Store: st, Deployment: &notify.Receiver{URL: srv.URL, Secret: h.secret},
		Settings: notify.Settings{MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, RetryFor: retryFor, Poll: 20 * time.Millisecond}}
	rows := func() map[string]string {
		db, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(ctx)
		r, err := db.Query(ctx, `SELECT event_id, CASE WHEN delivered_at IS NOT NULL THEN 'delivered' WHEN failed_at IS NOT NULL THEN 'failed' ELSE 'pending' END FROM notify_outbox`)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for r.Next() {
			var id, state string
			if err := r.Scan(&id, &state); err != nil {
				t.Fatal(err)
			}
			out[id] = state
		}
		return out
	}
	return d, st, rows
}

// TestDeliverInOrderWithRetries: a device's events arrive in order, the one the receiver
// refuses twice holds the device's later ones back, not another device's.
func TestDeliverInOrderWithRetries(t *testing.T) {
	ctx := context.Background()
	h := &hook{secret: []byte("k"), fail: map[string]int{"a1": 2}, tries: map[string]int{}}
	d, st, rows := setup(t, h, time.Hour)
	for _, ev := range []ota.Event{event("a", "a1"), event("a", "a2"), event("b", "b1"), event("a", "a3")} {
		if err := st.AddEvent(ctx, ev, true); err != nil {
			t.Fatal(err)
		}
	}
	// The same event again is stored once.
	if err := st.AddEvent(ctx, event("a", "a1"), true); err != nil {
		t.Fatal(err)
	}
	res, err := d.Run(ctx, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	got, tries, bad := strings.Join(h.got, ","), h.tries["a1"], h.bad
	h.mu.Unlock()
	if got != "b1,a1,a2,a3" || tries != 3 || bad != 0 {
		t.Errorf("accepted %s (a1 tried %d times, %d bad signatures); want b1 first, then a1, a2, a3, a1 tried 3 times", got, tries, bad)
	}
	if res.Delivered != 4 || res.Failed != 2 || res.GivenUp != 0 {
		t.Errorf("result %+v", res)
	}
	for id, state := range rows() {
		if state != "delivered" {
			t.Errorf("%s is %s", id, state)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.Collector())
	if n := testutil.ToFloat64(collectorOf(t, reg, "otaflow_notifications_delivered_total")); n != 4 {
		t.Errorf("delivered counter %v, want 4", n)
	}
}

// TestDeliverGivesUpAfterBudget: an event its receiver never takes is given up after the
// retry budget, recorded and counted, and the device's next event goes on.
func TestDeliverGivesUpAfterBudget(t *testing.T) {
	ctx := context.Background()
	h := &hook{secret: []byte("k"), fail: map[string]int{"x1": 1 << 30}, tries: map[string]int{}}
	d, st, rows := setup(t, h, 300*time.Millisecond)
	for _, ev := range []ota.Event{event("x", "x1"), event("x", "x2")} {
		if err := st.AddEvent(ctx, ev, true); err != nil {
			t.Fatal(err)
		}
	}
	res, err := d.Run(ctx, 2*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := rows(); r["x1"] != "failed" || r["x2"] != "delivered" {
		t.Errorf("outbox %v, want x1 failed and x2 delivered", r)
	}
	if res.GivenUp != 1 || res.Delivered != 1 {
		t.Errorf("result %+v", res)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.Collector())
	if n := testutil.ToFloat64(collectorOf(t, reg, "otaflow_notifications_failed_total")); n != 1 {
		t.Errorf("given-up counter %v, want 1", n)
	}
}

// TestDeliverStopsWithContext: Run returns at once when its context ends.
func TestDeliverStopsWithContext(t *testing.T) {
	h := &hook{secret: []byte("k"), tries: map[string]int{}}
	d, _, _ := setup(t, h, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Run(ctx, time.Hour, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Run after cancel: %v", err)
	}
}

// collectorOf returns the one series of a metric family of reg, summed over labels.
func collectorOf(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			sum := 0.0
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: name})
			c.Add(sum)
			return c
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}
