package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
)

// benchOptions choose what the benchmark's worker and bridge do besides upgrading: serve
// metrics (scraped every 15 s, as Prometheus would) and send event notifications to a
// receiver the benchmark runs.
type benchOptions struct {
	inFlight, continueAfter int
	metrics, webhooks       bool
	floors                  bool
	// slow is the fleet's pace: a slow-download fleet, or the zero value.
	slow slowFleet
	// pprofDir, when set, receives a CPU profile of the Temporal server taken during the rollout.
	pprofDir string
}

// benchObserver scrapes the processes' metrics and receives their webhooks.
type benchObserver struct {
	opts       benchOptions
	workerAddr string
	bridgeAddr string
	secret     string
	hookURL    string
	hooks      *http.Server

	mu         sync.Mutex
	scrapes    int
	scrapeErrs int
	pageBytes  map[string]int
	events     map[string]int // by type
	badSigs    int
	delays     []time.Duration
	lastEvent  time.Time
	stopScrape context.CancelFunc
	scraping   sync.WaitGroup
}

// newBenchObserver picks the metrics ports and starts the webhook receiver, as opts ask.
func newBenchObserver(opts benchOptions) (*benchObserver, error) {
	o := &benchObserver{opts: opts, pageBytes: map[string]int{}, events: map[string]int{}}
	if opts.metrics {
		for _, addr := range []*string{&o.workerAddr, &o.bridgeAddr} {
			p, err := localstack.FreePort()
			if err != nil {
				return nil, err
			}
			*addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(p))
		}
	}
	if opts.webhooks {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		o.secret = hex.EncodeToString(b)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		o.hooks = &http.Server{Handler: http.HandlerFunc(o.receive), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = o.hooks.Serve(ln) }()
		o.hookURL = "http://" + ln.Addr().String() + "/otaflow"
	}
	return o, nil
}

// env is what the worker's and the bridge's environments gain.
func (o *benchObserver) env(part string) []string {
	var env []string
	switch {
	case part == "worker" && o.opts.metrics:
		env = append(env, "METRICS_LISTEN="+o.workerAddr)
	case part == "mqttbridge" && o.opts.metrics:
		env = append(env, "METRICS_LISTEN="+o.bridgeAddr)
	}
	if part == "worker" && o.opts.webhooks {
		env = append(env, "NOTIFY_URL="+o.hookURL, notify.SecretEnv+"="+o.secret)
	}
	return env
}

func (o *benchObserver) receive(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	var ev ota.Event
	_ = json.Unmarshal(body, &ev)
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if !notify.Verify([]byte(o.secret), body, r.Header.Get(notify.HeaderSignature)) {
		o.badSigs++
	}
	if r.Header.Get(notify.HeaderAttempt) == "1" || o.events[ev.Type] == 0 {
		o.delays = append(o.delays, now.Sub(ev.OccurredAt))
	}
	o.events[ev.Type]++
	o.lastEvent = now
	w.WriteHeader(http.StatusNoContent)
}

// startScraping scrapes both metrics pages every 15 s until stopScraping.
func (o *benchObserver) startScraping() {
	if !o.opts.metrics {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	o.stopScrape = cancel
	o.scraping.Go(func() {
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			for part, addr := range map[string]string{"worker": o.workerAddr, "bridge": o.bridgeAddr} {
				n, err := scrapeSize(ctx, "http://"+addr+"/metrics")
				o.mu.Lock()
				o.scrapes++
				if err != nil {
					o.scrapeErrs++
				} else {
					o.pageBytes[part] = n
				}
				o.mu.Unlock()
			}
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	})
}

func scrapeSize(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return len(b), err
}

// finish stops scraping and waits (at most a minute) for the upgrade.finished events of
// want upgrades; it says what it saw.
func (o *benchObserver) finish(s *Stack, want int) {
	if o.stopScrape != nil {
		o.stopScrape()
		o.scraping.Wait()
		o.mu.Lock()
		s.say("  metrics: %d scrapes (%d failed), pages of %.0f KiB (worker) and %.0f KiB (bridge)", o.scrapes, o.scrapeErrs,
			float64(o.pageBytes["worker"])/1024, float64(o.pageBytes["bridge"])/1024)
		o.mu.Unlock()
	}
	if o.hooks == nil {
		return
	}
	ended := time.Now()
	deadline := ended.Add(time.Minute)
	for {
		o.mu.Lock()
		got := o.events[ota.EventUpgradeFinished]
		o.mu.Unlock()
		if got >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = o.hooks.Close()
	o.mu.Lock()
	defer o.mu.Unlock()
	sort.Slice(o.delays, func(i, j int) bool { return o.delays[i] < o.delays[j] })
	var p50, p99 time.Duration
	if n := len(o.delays); n > 0 {
		p50, p99 = o.delays[n/2], o.delays[min(n-1, n*99/100)]
	}
	after := time.Duration(0)
	if o.lastEvent.After(ended) {
		after = o.lastEvent.Sub(ended)
	}
	s.say("  webhooks: %d upgrade.finished of %d upgrades, %d rollout events, %d bad signatures; event to delivery p50 %s, p99 %s; the last %s after the rollout ended",
		o.events[ota.EventUpgradeFinished], want, sumOthers(o.events), o.badSigs, p50.Round(time.Millisecond), p99.Round(time.Millisecond), after.Round(time.Millisecond))
}

func sumOthers(events map[string]int) int {
	n := 0
	for typ, c := range events {
		if typ != ota.EventUpgradeFinished {
			n += c
		}
	}
	return n
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
