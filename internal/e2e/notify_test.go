package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
)

// delivery is one request a test receiver got.
type delivery struct {
	key, typ, attempt string
	signed            bool
	event             ota.Event
	accepted          bool
}

// receiver is a webhook receiver that refuses the first refuse requests, and any while down.
// It checks every body against the event schema, docs/events-v1.schema.json.
type receiver struct {
	t      *testing.T
	secret []byte
	refuse int
	down   atomic.Bool
	schema *jsonschema.Schema

	mu  sync.Mutex
	got []delivery
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	d := delivery{key: req.Header.Get(notify.HeaderIdempotencyKey), typ: req.Header.Get(notify.HeaderEvent),
		attempt: req.Header.Get(notify.HeaderAttempt), signed: notify.Verify(r.secret, body, req.Header.Get(notify.HeaderSignature))}
	if err := json.Unmarshal(body, &d.event); err != nil {
		r.t.Errorf("a delivery that is not an event: %v: %s", err, body)
	}
	if inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body)); err != nil {
		r.t.Errorf("a delivery that is not JSON: %v", err)
	} else if err := r.schema.Validate(inst); err != nil {
		r.t.Errorf("a delivery that does not follow the event schema: %v\n%s", err, body)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	d.accepted = len(r.got) >= r.refuse && !r.down.Load()
	r.got = append(r.got, d)
	if !d.accepted {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

// notifyEnv is a system whose worker notifies rec.
func notifyEnv(t *testing.T, prefix string, devices int, rec *receiver, faults simulator.Faults) *env {
	sch, err := jsonschema.NewCompiler().Compile(filepath.Join("..", "..", "docs", "events-v1.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	rec.schema = sch
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	e := newEnv(t, system.Config{Devices: devices, Prefix: prefix, Faults: faults, Notify: &system.Notify{
		Deployment: &notify.Receiver{URL: srv.URL + "/hooks/otaflow", Secret: rec.secret},
		Settings:   notify.Settings{MinBackoff: 200 * time.Millisecond, MaxBackoff: time.Second, Poll: 100 * time.Millisecond},
	}})
	// The notifier outlives the test's worker: end it, so that the next test starts its own.
	t.Cleanup(func() { _ = e.c.TerminateWorkflow(e.ctx, ota.NotifierWorkflowID, "", "test over") })
	return e
}

// outbox counts the test database's notifications: all, and those delivered.
func (e *env) outbox() (all, delivered int) {
	e.t.Helper()
	db, err := pgx.Connect(e.ctx, e.dbURL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close(e.ctx)
	if err := db.QueryRow(e.ctx, `SELECT count(*), count(delivered_at) FROM notify_outbox`).Scan(&all, &delivered); err != nil {
		e.t.Fatal(err)
	}
	return all, delivered
}

// TestWebhooksDeliverEveryEvent: a receiver that refuses the first two deliveries, then
// accepts, gets every event of a rollout (each upgrade's end, each wave's, the pause, the
// rollout's end), signed, each device's and the rollout's in order; the deliveries it refused
// come again with the same idempotency key.
func TestWebhooksDeliverEveryEvent(t *testing.T) {
	rec := &receiver{t: t, secret: []byte("webhook-test-secret"), refuse: 2}
	faults := simulator.Faults{InstallFail: simulator.Fault{Devices: []string{simID("hook", 2)}}}
	e := notifyEnv(t, "hook", 6, rec, faults)
	req := e.rollout("hooks", "hook", ota.Wave{Count: 2}, ota.Wave{Percent: 100})
	req.Upgrade.MaxAttempts = 1
	req.MaxInFlight = 2
	run := e.startRollout(req)
	require.Eventually(t, func() bool { return e.progress(run).Counts.Started >= 3 }, time.Minute, 50*time.Millisecond, "wave 2 started")
	if err := e.update(run, ota.UpdatePause, "webhook test"); err != nil {
		t.Fatal(err)
	}
	if err := e.update(run, ota.UpdateResume); err != nil {
		t.Fatal(err)
	}
	p, err := e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted || p.Counts.Succeeded != 5 || p.Counts.Failed != 1 {
		t.Fatalf("rollout %+v, %v", p, err)
	}
	require.Eventually(t, func() bool {
		all, delivered := e.outbox()
		return all > 0 && all == delivered
	}, time.Minute, 50*time.Millisecond, "every notification delivered")

	got := rec.deliveries()
	accepted := map[string]delivery{}
	var order []string // event IDs in the order first accepted
	for i, d := range got {
		if !d.signed {
			t.Errorf("delivery %d (%s) does not verify with the secret", i, d.key)
		}
		if d.key == "" || d.key != d.event.ID || d.typ != d.event.Type || d.event.Schema != ota.EventSchema {
			t.Errorf("delivery %d: key %q, type %q, event %+v", i, d.key, d.typ, d.event)
		}
		if i < 2 && d.accepted {
			t.Errorf("delivery %d was accepted; the receiver refuses the first two", i)
		}
		if _, seen := accepted[d.key]; d.accepted && !seen {
			accepted[d.key] = d
			order = append(order, d.key)
		}
	}
	// The two refused deliveries came again, with the same key, a later attempt.
	for _, refused := range got[:2] {
		again := false
		for _, d := range got[2:] {
			if d.key == refused.key && d.accepted && d.attempt > refused.attempt {
				again = true
			}
		}
		if !again {
			t.Errorf("refused delivery %s (attempt %s) was not delivered again", refused.key, refused.attempt)
		}
	}
	// Every event: one upgrade.finished per device, two waves, the pause, the completion.
	want := map[string]int{ota.EventUpgradeFinished: 6, ota.EventRolloutWaveFinished: 2, ota.EventRolloutPaused: 1, ota.EventRolloutCompleted: 1}
	n := map[string]int{}
	states := map[string]ota.State{}
	for _, d := range accepted {
		n[d.typ]++
		if u := d.event.Upgrade; u != nil {
			states[u.DeviceID] = u.State
		}
	}
	for typ, w := range want {
		if n[typ] != w {
			t.Errorf("%d %s events arrived, want %d (all: %v)", n[typ], typ, w, n)
		}
	}
	if states[simID("hook", 2)] != ota.StateFailed || states[simID("hook", 1)] != ota.StateSucceeded {
		t.Errorf("upgrade states told: %v", states)
	}
	// The rollout's events in the order they happened.
	var rollout []string
	for _, id := range order {
		if d := accepted[id]; d.event.Rollout != nil {
			rollout = append(rollout, d.typ)
		}
	}
	if len(rollout) != 4 || rollout[0] != ota.EventRolloutWaveFinished || rollout[3] != ota.EventRolloutCompleted {
		t.Errorf("rollout events in the order %v", rollout)
	}
	t.Logf("%d deliveries for %d events", len(got), len(accepted))
}

// TestWebhookReceiverDownDoesNotHoldUpRollout: with the receiver down for the whole rollout,
// the rollout completes while every notification waits; once the receiver is back, it gets
// them all.
func TestWebhookReceiverDownDoesNotHoldUpRollout(t *testing.T) {
	rec := &receiver{t: t, secret: []byte("webhook-down-secret")}
	rec.down.Store(true)
	e := notifyEnv(t, "down", 6, rec, simulator.Faults{})
	run := e.startRollout(e.rollout("down", "down", ota.Wave{Count: 3}, ota.Wave{Percent: 100}))
	p, err := e.finish(run)
	if err != nil || p.State != ota.RolloutCompleted || p.Counts.Succeeded != 6 {
		t.Fatalf("rollout %+v, %v", p, err)
	}
	all, delivered := e.outbox()
	if all != 6+3 || delivered != 0 {
		t.Fatalf("with the receiver down: %d notifications stored, %d delivered; want 9 waiting", all, delivered)
	}
	if len(rec.deliveries()) == 0 {
		t.Error("no delivery was attempted while the receiver was down")
	}
	rec.down.Store(false)
	require.Eventually(t, func() bool {
		all, delivered := e.outbox()
		return all == delivered
	}, time.Minute, 50*time.Millisecond, "every notification delivered once the receiver is back")
}
