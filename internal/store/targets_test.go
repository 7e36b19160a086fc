package store_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// addDevices registers devices with these IDs.
func addDevices(t *testing.T, st *store.Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := st.AddDevice(context.Background(), id, "hash", nil); err != nil {
			t.Fatal(err)
		}
	}
}

// listed returns the IDs of the devices of the target list with this key.
func listed(t *testing.T, st *store.Store, key string) []string {
	t.Helper()
	devs, err := st.ListDevices(context.Background(), ota.DeviceFilter{List: key})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	return ids
}

func TestCreateTargetList(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	addDevices(t, st.Store, "a1", "a2", "b1", "b2")

	keyA, unknown, err := st.CreateTargetList(ctx, "fw", []string{"a2", "a1", "ghost"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(keyA, "fw"+store.TargetListSeparator) || !slices.Equal(unknown, []string{"ghost"}) {
		t.Errorf("CreateTargetList = %q, unknown %v; want a key fw/..., unknown [ghost]", keyA, unknown)
	}
	// A second list of the same rollout name neither replaces nor joins the first.
	keyB, unknown, err := st.CreateTargetList(ctx, "fw", []string{"b1", "b2"})
	if err != nil || len(unknown) != 0 {
		t.Fatalf("CreateTargetList = %v, unknown %v", err, unknown)
	}
	if keyB == keyA {
		t.Fatalf("two lists got the same key %s", keyA)
	}
	if got := listed(t, st.Store, keyA); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("list %s = %v, want [a1 a2]", keyA, got)
	}
	if got := listed(t, st.Store, keyB); !slices.Equal(got, []string{"b1", "b2"}) {
		t.Errorf("list %s = %v, want [b1 b2]", keyB, got)
	}
	if n, err := st.CountDevices(ctx, ota.DeviceFilter{List: keyB}); err != nil || n != 2 {
		t.Errorf("CountDevices(list %s) = %d, %v; want 2", keyB, n, err)
	}

	// None registered: nothing stored.
	key, unknown, err := st.CreateTargetList(ctx, "fw", []string{"ghost-1", "ghost-2"})
	if err != nil || key != "" || !slices.Equal(unknown, []string{"ghost-1", "ghost-2"}) {
		t.Errorf("CreateTargetList of unknown devices = %q, %v, %v; want no key, both unknown", key, unknown, err)
	}
	lists, err := st.TargetLists(ctx, "fw")
	if err != nil {
		t.Fatal(err)
	}
	if len(lists) != 2 || lists[0].Key != keyA || lists[1].Key != keyB || lists[0].Rollout != "fw" {
		t.Errorf("TargetLists = %+v, want %s then %s", lists, keyA, keyB)
	}

	// Deleting one leaves the other; deleting twice is no error.
	for range 2 {
		if err := st.DeleteTargetLists(ctx, []string{keyA}); err != nil {
			t.Fatal(err)
		}
	}
	if got := listed(t, st.Store, keyA); len(got) != 0 {
		t.Errorf("deleted list %s still selects %v", keyA, got)
	}
	if got := listed(t, st.Store, keyB); len(got) != 2 {
		t.Errorf("list %s = %v after another was deleted", keyB, got)
	}
}

func TestCreateTargetListConcurrent(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	const starts, size = 8, 20
	lists := make([][]string, starts)
	for i := range lists {
		for j := range size {
			lists[i] = append(lists[i], fmt.Sprintf("d%d-%02d", i, j))
		}
		addDevices(t, st.Store, lists[i]...)
	}
	keys := make([]string, starts)
	errs := make([]error, starts)
	var wg sync.WaitGroup
	for i := range lists {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], _, errs[i] = st.CreateTargetList(ctx, "same", lists[i])
		}()
	}
	wg.Wait()
	for i, key := range keys {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got := listed(t, st.Store, key); !slices.Equal(got, lists[i]) {
			t.Errorf("list %d (%s) = %v, want its own %d devices", i, key, got, size)
		}
	}
}

func TestPruneTargetLists(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	addDevices(t, st.Store, "p1")
	var keys []string
	for range 3 {
		key, _, err := st.CreateTargetList(ctx, "pr", []string{"p1"})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
	}
	other, _, err := st.CreateTargetList(ctx, "pr2", []string{"p1"})
	if err != nil {
		t.Fatal(err)
	}

	// Too young: nothing goes.
	if deleted, err := st.PruneTargetLists(ctx, "pr", nil, time.Hour); err != nil || len(deleted) != 0 {
		t.Errorf("PruneTargetLists(1h) = %v, %v; want nothing deleted", deleted, err)
	}
	deleted, err := st.PruneTargetLists(ctx, "pr", []string{keys[1]}, 0)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(deleted)
	want := []string{keys[0], keys[2]}
	slices.Sort(want)
	if !slices.Equal(deleted, want) {
		t.Errorf("PruneTargetLists deleted %v, want %v", deleted, want)
	}
	for key, n := range map[string]int{keys[0]: 0, keys[1]: 1, keys[2]: 0, other: 1} {
		if got := listed(t, st.Store, key); len(got) != n {
			t.Errorf("list %s selects %v after the prune, want %d devices", key, got, n)
		}
	}
}

// TestTargetListsOfEarlierVersions applies the migrations before target lists had keys of
// their own, stores a list as those versions did (under the rollout name), then opens the
// store: the list is still found under its name, and can be pruned.
func TestTargetListsOfEarlierVersions(t *testing.T) {
	ctx := context.Background()
	url := testenv.DatabaseURL(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, name := range []string{"001_init.sql", "002_rollout_targets.sql"} {
		sql, err := os.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, string(sql)); err != nil {
			t.Fatalf("apply %s: %v", name, err)
		}
	}
	for _, q := range []string{
		`CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
		`INSERT INTO schema_migrations (name) VALUES ('migrations/001_init.sql'), ('migrations/002_rollout_targets.sql')`,
		`INSERT INTO devices (id) VALUES ('old-1'), ('old-2'), ('old-3')`,
		`INSERT INTO rollout_targets (rollout, device_id) VALUES ('legacy', 'old-1'), ('legacy', 'old-3')`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := listed(t, st, "legacy"); !slices.Equal(got, []string{"old-1", "old-3"}) {
		t.Errorf("the list stored under the name = %v, want [old-1 old-3]", got)
	}
	lists, err := st.TargetLists(ctx, "legacy")
	if err != nil || len(lists) != 1 || lists[0].Key != "legacy" {
		t.Fatalf("TargetLists = %+v, %v; want the one list keyed legacy", lists, err)
	}
	if deleted, err := st.PruneTargetLists(ctx, "legacy", nil, 0); err != nil || !slices.Equal(deleted, []string{"legacy"}) {
		t.Errorf("PruneTargetLists = %v, %v; want [legacy]", deleted, err)
	}
	if got := listed(t, st, "legacy"); len(got) != 0 {
		t.Errorf("the pruned list still selects %v", got)
	}
}

func TestDisabledAmong(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	addDevices(t, st.Store, "on-1", "off-1", "off-2")
	for _, id := range []string{"off-1", "off-2"} {
		if err := st.SetDisabled(ctx, id, true); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.DisabledAmong(ctx, []string{"off-2", "on-1", "ghost", "off-1"})
	if err != nil || !slices.Equal(got, []string{"off-1", "off-2"}) {
		t.Errorf("DisabledAmong = %v, %v; want [off-1 off-2]", got, err)
	}
	if got, err := st.DisabledAmong(ctx, []string{"on-1"}); err != nil || len(got) != 0 {
		t.Errorf("DisabledAmong(on-1) = %v, %v; want none", got, err)
	}
}

// BenchmarkDisabledAmong measures the embedded broker's poll for disabled devices with 10,000
// devices connected (the benchmark fleet), 10 of them disabled.
func BenchmarkDisabledAmong(b *testing.B) {
	ctx := context.Background()
	url := testenv.DatabaseURL(b)
	st, err := store.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const n = 10000
	devices := make([]store.NewDevice, n)
	ids := make([]string, n)
	for i := range devices {
		ids[i] = fmt.Sprintf("sim-%05d", i+1)
		devices[i] = store.NewDevice{ID: ids[i], SecretHash: "hash"}
	}
	if err := st.AddDevices(ctx, devices); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i += n / 10 {
		if err := st.SetDisabled(ctx, ids[i], true); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		got, err := st.DisabledAmong(ctx, ids)
		if err != nil || len(got) != 10 {
			b.Fatalf("DisabledAmong = %d devices, %v; want 10", len(got), err)
		}
	}
}
