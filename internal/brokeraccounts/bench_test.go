package brokeraccounts_test

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/errgroup"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/store"
)

// benchSizes are the registry sizes of BenchmarkAccounts: OTAFLOW_BENCH_ACCOUNTS, a
// comma-separated list (default 1000,10000; README's figures add 100000).
func benchSizes(b *testing.B) []int {
	v := os.Getenv("OTAFLOW_BENCH_ACCOUNTS")
	if v == "" {
		v = "1000,10000"
	}
	var sizes []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("OTAFLOW_BENCH_ACCOUNTS=%q: want sizes like 1000,10000", v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// BenchmarkAccounts measures the production broker with a registry of N device accounts: the
// plugin's file and the broker's memory, how long the broker takes to load them, how long
// `devices add`, `disable` and `rotate-secret` take to act on the broker (the command's
// round trip, which includes the plugin rewriting its file, then the device connecting or
// being disconnected), and how many devices connect per second.
//
//	OTAFLOW_BENCH_ACCOUNTS=1000,10000,100000 go test -run '^$' -bench BenchmarkAccounts -benchtime 1x ./internal/brokeraccounts/
func BenchmarkAccounts(b *testing.B) {
	for _, n := range benchSizes(b) {
		b.Run(fmt.Sprintf("accounts=%d", n), func(b *testing.B) { benchmarkAccounts(b, n) })
	}
}

func benchmarkAccounts(b *testing.B, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	dir := filepath.Join(b.TempDir(), "mosquitto")
	seedStart := time.Now()
	if err := seedAccounts(dir, n); err != nil {
		b.Fatal(err)
	}
	seeded := time.Since(seedStart)
	fi, err := os.Stat(filepath.Join(dir, "dynamic-security.json"))
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	m, err := localstack.StartMosquitto(ctx, localstack.MosquittoOptions{Dir: dir, AdminPassword: benchAdminPassword, StartTimeout: 10 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Stop()
	loaded := time.Since(start)
	rssLoaded := rss(b, m)
	admin, err := brokeraccounts.Dial(ctx, m.AdminURL(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	b.Logf("%d accounts: file %.1f MB (written in %s), broker up in %s, RSS %.0f MB",
		n, float64(fi.Size())/1e6, seeded.Round(time.Millisecond), loaded.Round(time.Millisecond), rssLoaded)
	b.ReportMetric(float64(fi.Size())/1e6, "file-MB")
	b.ReportMetric(rssLoaded, "rss-MB")
	b.ReportMetric(loaded.Seconds(), "load-s")

	// The setup step with every device registered: it reads the registry and the accounts.
	reg, err := store.Open(ctx, testenv.DatabaseURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	devices := make([]store.NewDevice, n)
	for i := range devices {
		devices[i] = store.NewDevice{ID: fmt.Sprintf("dev-%d", i), SecretHash: "unused"}
	}
	if err := reg.AddDevices(ctx, devices); err != nil {
		b.Fatal(err)
	}
	setup := brokeraccounts.Setup{WorkerPassword: "w", BridgePassword: "b", Registry: reg}
	var steps []time.Duration
	for range 2 {
		t0 := time.Now()
		rep, err := brokeraccounts.Provision(ctx, admin, setup)
		if err != nil {
			b.Fatal(err)
		}
		if rep.WithAccount != n {
			b.Fatalf("the setup found %d of %d devices with an account", rep.WithAccount, n)
		}
		steps = append(steps, time.Since(t0).Round(time.Millisecond))
	}
	b.Logf("the setup step: %s the first time, %s again", steps[0], steps[1])
	b.ReportMetric(steps[1].Seconds(), "setup-s")

	// devices add: the account's creation, then the first successful connection.
	var adds, addToConnect []time.Duration
	for i := range 5 {
		id := fmt.Sprintf("new-%d", i)
		t0 := time.Now()
		if err := admin.AddDevice(ctx, id, "s-"+id); err != nil {
			b.Fatal(err)
		}
		adds = append(adds, time.Since(t0))
		if _, err := dialDevice(m, id, "s-"+id, nil); err != nil {
			b.Fatalf("%s cannot connect after its account was made: %v", id, err)
		}
		addToConnect = append(addToConnect, time.Since(t0))
	}
	// disable: the command until the broker closed the device's connection.
	var disables []time.Duration
	for i := range 5 {
		id := fmt.Sprintf("new-%d", i)
		lost := make(chan struct{})
		c, err := dialDevice(m, id, "s-"+id, lost)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := admin.SetDeviceDisabled(ctx, id, true); err != nil {
			b.Fatal(err)
		}
		<-lost
		disables = append(disables, time.Since(t0))
		c.Disconnect(0)
	}
	// rotate-secret: the command until the new secret connects (the old connection closed).
	var rotates []time.Duration
	for i := range 5 {
		id := fmt.Sprintf("dev-%d", i*(n/5))
		lost := make(chan struct{})
		if _, err := dialDevice(m, id, "secret-"+id, lost); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if _, err := admin.SetDeviceSecret(ctx, id, "rotated-"+id); err != nil {
			b.Fatal(err)
		}
		<-lost
		c, err := dialDevice(m, id, "rotated-"+id, nil)
		if err != nil {
			b.Fatalf("%s with its new secret: %v", id, err)
		}
		rotates = append(rotates, time.Since(t0))
		c.Disconnect(0)
	}
	b.Logf("add (command) %s, add until it connects %s, disable until disconnected %s, rotate-secret until the new secret connects %s (medians of 5)",
		median(adds), median(addToConnect), median(disables), median(rotates))
	b.ReportMetric(median(addToConnect).Seconds(), "add-s")
	b.ReportMetric(median(disables).Seconds(), "disable-s")
	b.ReportMetric(median(rotates).Seconds(), "rotate-s")

	// Connects per second: up to 10,000 devices, 100 connecting at a time, staying connected.
	connects := min(n-5, 10000)
	var clients sync.Map
	var ok atomic.Int64
	var g errgroup.Group
	g.SetLimit(100)
	t0 := time.Now()
	for i := range connects {
		id := fmt.Sprintf("dev-%d", i)
		if i%(n/5) == 0 && i/(n/5) < 5 {
			continue // rotated above
		}
		g.Go(func() error {
			c, err := dialDevice(m, id, "secret-"+id, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
			clients.Store(id, c)
			ok.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(t0)
	rssConnected := rss(b, m)
	b.Logf("%d devices connected in %s: %.0f connects/s; RSS with them connected %.0f MB (client and broker share %d CPUs)",
		ok.Load(), elapsed.Round(time.Millisecond), float64(ok.Load())/elapsed.Seconds(), rssConnected, runtime.NumCPU())
	b.ReportMetric(float64(ok.Load())/elapsed.Seconds(), "connects/s")
	clients.Range(func(_, c any) bool { c.(paho.Client).Disconnect(0); return true })
}

// BenchmarkProvisionFromEmpty creates N device accounts one after the other on an empty
// broker, as `devices import` does, and reports how long they took (each change rewrites the
// plugin's whole file, so the time grows with the square of N).
//
//	OTAFLOW_BENCH_PROVISION=10000 go test -run '^$' -bench BenchmarkProvisionFromEmpty -benchtime 1x ./internal/brokeraccounts/
func BenchmarkProvisionFromEmpty(b *testing.B) {
	n := 1000
	if v := os.Getenv("OTAFLOW_BENCH_PROVISION"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("OTAFLOW_BENCH_PROVISION=%q: want a number of accounts", v)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Hour)
	defer cancel()
	m, err := localstack.StartMosquitto(ctx, localstack.MosquittoOptions{Dir: filepath.Join(b.TempDir(), "mosquitto"), AdminPassword: benchAdminPassword})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Stop()
	admin, err := brokeraccounts.Dial(ctx, m.AdminURL(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	start, last := time.Now(), time.Now()
	step := max(n/10, 1)
	for i := range n {
		id := fmt.Sprintf("dev-%d", i)
		if err := admin.AddDevice(ctx, id, "secret-"+id); err != nil {
			b.Fatal(err)
		}
		if (i+1)%step == 0 {
			b.Logf("%d accounts after %s (the last %d: %.1f ms each)", i+1, time.Since(start).Round(time.Millisecond),
				step, float64(time.Since(last).Milliseconds())/float64(step))
			last = time.Now()
		}
	}
	b.ReportMetric(time.Since(start).Seconds(), "total-s")
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "accounts/s")
}

const benchAdminPassword = "bench-admin"

// seedAccounts writes, for a broker not started yet on dir, the dynamic-security plugin's file
// with the administrator (as start.sh makes it) and n device accounts dev-I with the secret
// secret-dev-I, as the plugin itself would save them: PBKDF2-SHA512, 101 iterations, a 12-byte
// salt (Mosquitto 2.0.11's src/password_mosq.h).
func seedAccounts(dir string, n int) error {
	type role struct {
		Name string `json:"rolename"`
		ACLs []any  `json:"acls"`
	}
	type roleRef struct {
		Name string `json:"rolename"`
	}
	type client struct {
		Username   string    `json:"username"`
		ClientID   string    `json:"clientid,omitempty"`
		Roles      []roleRef `json:"roles"`
		Password   string    `json:"password"`
		Salt       string    `json:"salt"`
		Iterations int       `json:"iterations"`
	}
	account := func(username, clientID, password string, roles ...roleRef) (client, error) {
		salt := make([]byte, 12)
		if _, err := rand.Read(salt); err != nil {
			return client{}, err
		}
		key, err := pbkdf2.Key(sha512.New, password, salt, 101, 64)
		if err != nil {
			return client{}, err
		}
		if roles == nil {
			roles = []roleRef{}
		}
		return client{Username: username, ClientID: clientID, Roles: roles, Iterations: 101,
			Password: base64.StdEncoding.EncodeToString(key), Salt: base64.StdEncoding.EncodeToString(salt)}, nil
	}
	clients := make([]client, n+1)
	var err error
	if clients[0], err = account(localstack.DefaultMosquittoAdmin, "", benchAdminPassword, roleRef{"admin"}); err != nil {
		return err
	}
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for i := range n {
		g.Go(func() error {
			id := fmt.Sprintf("dev-%d", i)
			c, err := account(id, id, "secret-"+id)
			clients[i+1] = c
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	allow := func(typ, topic string) map[string]any {
		return map[string]any{"acltype": typ, "topic": topic, "priority": 0, "allow": true}
	}
	file := map[string]any{
		"defaultACLAccess": brokeraccounts.DefaultACLAccess,
		"clients":          clients,
		"roles": []role{{Name: "admin", ACLs: []any{
			allow("publishClientSend", "$CONTROL/dynamic-security/#"),
			allow("publishClientReceive", "$CONTROL/dynamic-security/#"),
			allow("subscribePattern", "$CONTROL/dynamic-security/#"),
			allow("publishClientReceive", "$SYS/#"),
			allow("subscribePattern", "$SYS/#"),
		}}},
	}
	data, err := json.MarshalIndent(file, "", "\t")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "dynamic-security.json"), data, 0o600)
}

func dialDevice(m *localstack.Mosquitto, id, secret string, lost chan struct{}) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID(id).SetUsername(id).SetPassword(secret).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(time.Minute).SetKeepAlive(5 * time.Minute)
	if lost != nil {
		opts.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(2 * time.Minute) {
		return nil, fmt.Errorf("%s: no CONNACK", id)
	}
	return c, tok.Error()
}

// rss is the broker's resident memory in MB.
func rss(b *testing.B, m *localstack.Mosquitto) float64 {
	n, err := m.ResidentMemory()
	if err != nil {
		b.Fatal(err)
	}
	return float64(n) / (1 << 20)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}
