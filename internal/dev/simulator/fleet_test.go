package simulator

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
)

const pkgSize = 128 * 1024 // eight 16 KiB reads: progress 12, 25, ... 100

func TestUpgrade(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	f := e.startFleet([]string{"dev-1"}, Faults{})

	boot := e.watcher.waitFor(t, "dev-1", "boot status", hasStatus("firmware_ver", "1.0"))
	if st := statusesOf(boot)[0]; st["app_ver"] != "2.0" || len(st) != 2 {
		t.Errorf("boot status = %v, want the initial status", st)
	}

	cmd := e.command("cmd-1", "/fw/1.1.bin")
	e.send("dev-1", cmd)
	evs := e.watcher.waitFor(t, "dev-1", "status with the new version", hasStatus("firmware_ver", "1.1"))

	progress := progressOf(evs, "cmd-1")
	if len(progress) < 2 {
		t.Fatalf("got %d progress reports, want several: %v", len(progress), progress)
	}
	for i, p := range progress {
		// Every report says downloading but the last, 100, which says the download is done
		// (a succeeded upgrade's last report and its history read "downloaded").
		desc := "downloading"
		if p.Progress == 100 {
			desc = "downloaded"
		}
		if p.Type != "firmware" || p.Version != "1.1" || p.Desc != desc {
			t.Errorf("report %d = %+v, want type firmware, version 1.1, desc %s", i, p, desc)
		}
		if i > 0 && p.Progress <= progress[i-1].Progress {
			t.Errorf("progress not increasing: %d after %d", p.Progress, progress[i-1].Progress)
		}
	}
	if last := progress[len(progress)-1].Progress; last != 100 {
		t.Errorf("last progress = %d, want 100", last)
	}
	// The new version comes after the download, in a status that keeps the other versions.
	last := evs[len(evs)-1]
	if last.kind != protocol.KindStatus || last.status["app_ver"] != "2.0" {
		t.Errorf("last report = %v, want the status after reboot", last)
	}

	st := waitState(t, f, "dev-1", "idle after the upgrade", func(s DeviceState) bool { return s.Working == "" && s.Connected })
	if st.Upgrades != 1 || st.Attempts != 1 || st.Status["firmware_ver"] != "1.1" || !slices.Equal(st.Received, []string{"cmd-1"}) {
		t.Errorf("state = %+v", st)
	}
	if s := f.Stats(); s.Upgraded != 1 || s.Connected != 1 || s.Commands != 1 || s.Failed != 0 {
		t.Errorf("stats = %v", s)
	}
}

// TestDownloadTime: a fleet with a download time takes that long over every download and
// reports progress at its report interval on the way, increasing, ending with 100.
func TestDownloadTime(t *testing.T) {
	const downloadTime, interval = 200 * time.Millisecond, 50 * time.Millisecond
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	e.startFleetWith([]string{"dev-1"}, func(c *Config) {
		c.Timing.DownloadTime, c.Timing.ReportInterval = downloadTime, interval
	})
	e.watcher.waitFor(t, "dev-1", "boot status", hasStatus("firmware_ver", "1.0"))

	sent := time.Now()
	e.send("dev-1", e.command("cmd-1", "/fw/1.1.bin"))
	evs := e.watcher.waitFor(t, "dev-1", "download done", func(evs []event) bool {
		p := progressOf(evs, "cmd-1")
		return len(p) > 0 && p[len(p)-1].Progress == 100
	})
	took := time.Since(sent)
	if took < downloadTime {
		t.Errorf("the download took %s, less than the download time %s", took, downloadTime)
	}
	progress := progressOf(evs, "cmd-1")
	// One report at the first percent, then one an interval, then 100: at least the download
	// time over the interval, and no more than the time it really took allows.
	if least, most := int(downloadTime/interval), int(took/interval)+2; len(progress) < least || len(progress) > most {
		t.Errorf("%d progress reports in %s, want %d to %d: %v", len(progress), took, least, most, progress)
	}
	for i, p := range progress {
		if i > 0 && p.Progress <= progress[i-1].Progress {
			t.Errorf("progress not increasing: %d after %d: %v", p.Progress, progress[i-1].Progress, progress)
		}
	}
	if first := progress[0].Progress; first >= 25 {
		t.Errorf("first progress = %d, want an early one (the bytes arrive about 1%% at a time)", first)
	}
	e.watcher.waitFor(t, "dev-1", "new version", hasStatus("firmware_ver", "1.1"))
}

func TestFaults(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)

	type check func(t *testing.T, f *Fleet, id string)
	// failsWith waits for an error report and checks its text.
	failsWith := func(code int, desc string) check {
		return func(t *testing.T, f *Fleet, id string) {
			evs := e.watcher.waitFor(t, id, fmt.Sprintf("error %d", code), hasCode(code))
			p := progressOf(evs, id+"-cmd")
			if last := p[len(p)-1]; !strings.Contains(last.Desc, desc) {
				t.Errorf("error desc = %q, want it to mention %q", last.Desc, desc)
			}
			st := waitState(t, f, id, "idle", func(s DeviceState) bool { return s.Working == "" })
			if st.LastCode != code || st.Failures != 1 || st.Status["firmware_ver"] != "1.0" {
				t.Errorf("state = %+v", st)
			}
		}
	}
	upgrades := func(t *testing.T, f *Fleet, id string) {
		e.watcher.waitFor(t, id, "new version", hasStatus("firmware_ver", "1.1"))
	}
	// quietAfter waits for the attempt to end with a last progress report that satisfies
	// lastOK, and checks that the device reported no status after its boot: a sentinel status
	// published by the service afterwards is the next status the watcher sees.
	quietAfter := func(lastOK func(int) bool) check {
		return func(t *testing.T, f *Fleet, id string) {
			waitState(t, f, id, "attempt over", func(s DeviceState) bool { return s.Attempts == 1 && s.Working == "" })
			e.publish(protocol.StatusTopic(id), []byte(`{"sentinel":"yes"}`))
			evs := e.watcher.waitFor(t, id, "sentinel", func(evs []event) bool {
				st := statusesOf(evs)
				return len(st) > 0 && st[len(st)-1]["sentinel"] == "yes"
			})
			if st := statusesOf(evs); len(st) != 2 {
				t.Errorf("status reports %v, want only the boot one before the sentinel", st)
			}
			p := progressOf(evs, id+"-cmd")
			last := 0
			if len(p) > 0 {
				last = p[len(p)-1].Progress
			}
			if !lastOK(last) {
				t.Errorf("last progress = %d; reports %v", last, p)
			}
		}
	}

	tests := []struct {
		name   string
		faults func(id string) Faults
		cmd    func(c *protocol.UpgradeCommand)
		check  check
	}{
		{"md5 in command differs", nil, func(c *protocol.UpgradeCommand) { c.MD5 = strings.Repeat("a", 32) },
			failsWith(protocol.CodeMD5Mismatch, "md5 mismatch")},
		{"size in command differs", nil, func(c *protocol.UpgradeCommand) { c.Size-- },
			failsWith(protocol.CodeMD5Mismatch, "size mismatch")},
		{"package missing", nil, func(c *protocol.UpgradeCommand) { c.URL += ".missing" },
			failsWith(protocol.CodeDownloadFailed, "404")},
		{"corrupted download", func(id string) Faults { return Faults{Corrupt: Fault{Devices: []string{id}}} }, nil,
			failsWith(protocol.CodeMD5Mismatch, "md5 mismatch")},
		{"download fails", func(id string) Faults { return Faults{DownloadFail: Fault{Devices: []string{id}}} }, nil,
			failsWith(protocol.CodeDownloadFailed, "download failed")},
		{"install fails", func(id string) Faults { return Faults{InstallFail: Fault{Devices: []string{id}}} }, nil,
			failsWith(protocol.CodeInstallFailed, "install failed")},
		{"goes silent", func(id string) Faults { return Faults{Silent: Fault{Devices: []string{id}}} }, nil,
			quietAfter(func(last int) bool { return last < silentAtPercent })},
		{"never reports the new version", func(id string) Faults { return Faults{NoReport: Fault{Devices: []string{id}}} }, nil,
			quietAfter(func(last int) bool { return last == 100 })},
		{"comes back on the old version", func(id string) Faults { return Faults{OldVersion: Fault{Devices: []string{id}}} }, nil,
			func(t *testing.T, f *Fleet, id string) {
				evs := e.watcher.waitFor(t, id, "status after reboot", func(evs []event) bool { return len(statusesOf(evs)) == 2 })
				if st := statusesOf(evs)[1]; st["firmware_ver"] != "1.0" {
					t.Errorf("status after reboot = %v, want the old version", st)
				}
				if p := progressOf(evs, id+"-cmd"); p[len(p)-1].Progress != 100 {
					t.Errorf("download not reported complete: %v", p)
				}
			}},
		{"slow download", func(id string) Faults { return Faults{Slow: Fault{Devices: []string{id}}} }, nil, upgrades},
		{"drops off mid-download", func(id string) Faults { return Faults{DropOff: Fault{Devices: []string{id}}} }, nil,
			func(t *testing.T, f *Fleet, id string) {
				evs := e.watcher.waitFor(t, id, "new version", hasStatus("firmware_ver", "1.1"))
				st := waitState(t, f, id, "idle", func(s DeviceState) bool { return s.Working == "" })
				if st.Drops != 1 || st.Attempts != 1 || st.Upgrades != 1 {
					t.Errorf("state = %+v, want one drop in one attempt that upgraded", st)
				}
				// The download went on after the reconnection, and the reconnection was no
				// boot: the only statuses are the boot one and the new version.
				p := progressOf(evs, id+"-cmd")
				if len(p) == 0 || p[len(p)-1].Progress != 100 {
					t.Errorf("download not reported complete: %v", p)
				}
				if st := statusesOf(evs); len(st) != 2 {
					t.Errorf("status reports %v, want the boot one and the new version", st)
				}
			}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := e.with(t)
			id := fmt.Sprintf("dev-%d", i)
			var faults Faults
			if tt.faults != nil {
				faults = tt.faults(id)
			}
			f := e.startFleet([]string{id}, faults)
			cmd := e.command(id+"-cmd", "/fw/1.1.bin")
			if tt.cmd != nil {
				tt.cmd(&cmd)
			}
			e.send(id, cmd)
			tt.check(t, f, id)
		})
	}
}

func TestFaultOnFirstAttemptOnly(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	f := e.startFleet([]string{"dev-1"}, Faults{DownloadFail: Fault{Devices: []string{"dev-1"}, Attempts: 1}})

	e.send("dev-1", e.command("attempt-1", "/fw/1.1.bin"))
	e.watcher.waitFor(t, "dev-1", "first attempt fails", hasCode(protocol.CodeDownloadFailed))
	e.send("dev-1", e.command("attempt-2", "/fw/1.1.bin"))
	evs := e.watcher.waitFor(t, "dev-1", "retry succeeds", hasStatus("firmware_ver", "1.1"))
	if p := progressOf(evs, "attempt-2"); p[len(p)-1].Progress != 100 {
		t.Errorf("retry progress = %v", p)
	}
	st := waitState(t, f, "dev-1", "idle", func(s DeviceState) bool { return s.Working == "" && s.Upgrades == 1 })
	if st.Attempts != 2 || st.Failures != 1 || st.LastCode != 0 {
		t.Errorf("state = %+v", st)
	}
}

func TestExpiredCommandIgnored(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	f := e.startFleet([]string{"dev-1"}, Faults{})

	expired := e.command("expired", "/fw/1.1.bin")
	expired.IssuedAt = time.Now().Add(-2 * time.Hour)
	expired.ExpiresAt = time.Now().Add(-time.Hour)
	e.send("dev-1", expired)
	st := waitState(t, f, "dev-1", "expired command received", func(s DeviceState) bool { return len(s.Received) == 1 })
	if st.Attempts != 0 || st.Ignored != 1 {
		t.Errorf("state = %+v, want the command ignored", st)
	}

	// A valid command afterwards is the first the device works on.
	e.send("dev-1", e.command("valid", "/fw/1.1.bin"))
	evs := e.watcher.waitFor(t, "dev-1", "upgrade", hasStatus("firmware_ver", "1.1"))
	if p := progressOf(evs, "expired"); len(p) != 0 {
		t.Errorf("device reported progress for the expired command: %v", p)
	}
}

func TestRepeatedCommandIgnored(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	f := e.startFleet([]string{"dev-1"}, Faults{})

	cmd := e.command("cmd-1", "/fw/1.1.bin")
	e.send("dev-1", cmd)
	e.send("dev-1", cmd) // while in progress
	e.watcher.waitFor(t, "dev-1", "upgrade", hasStatus("firmware_ver", "1.1"))
	// The broker may deliver a copy once more after the reboot (QoS 1 is at least once).
	st := waitState(t, f, "dev-1", "idle", func(s DeviceState) bool { return s.Working == "" && len(s.Received) >= 2 })
	e.send("dev-1", cmd) // after it is done
	n := len(st.Received)
	st = waitState(t, f, "dev-1", "third copy received", func(s DeviceState) bool { return len(s.Received) > n })
	if st.Attempts != 1 || st.Ignored != len(st.Received)-1 || st.Upgrades != 1 {
		t.Errorf("state = %+v, want one attempt and every other copy ignored", st)
	}
	for _, id := range st.Received {
		if id != "cmd-1" {
			t.Errorf("received %q", id)
		}
	}
	hundred := 0
	for _, p := range progressOf(e.watcher.of("dev-1"), "cmd-1") {
		if p.Progress == 100 {
			hundred++
		}
	}
	if hundred != 1 {
		t.Errorf("download completed %d times, want 1", hundred)
	}
}

// TestCommandForInstalledVersion: a new command for the version the device already runs (its
// status report was lost, so the upgrade sent the command again) gets a status report, not a
// second install.
func TestCommandForInstalledVersion(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	f := e.startFleet([]string{"dev-1"}, Faults{})

	e.send("dev-1", e.command("cmd-1", "/fw/1.1.bin"))
	e.watcher.waitFor(t, "dev-1", "upgrade", hasStatus("firmware_ver", "1.1"))
	waitState(t, f, "dev-1", "idle after the upgrade", func(s DeviceState) bool { return s.Working == "" && s.Connected })
	before := len(statusesOf(e.watcher.of("dev-1")))

	e.send("dev-1", e.command("cmd-2", "/fw/1.1.bin"))
	evs := e.watcher.waitFor(t, "dev-1", "status answering the second command", func(evs []event) bool {
		return len(statusesOf(evs)) > before
	})
	if st := statusesOf(evs); st[len(st)-1]["firmware_ver"] != "1.1" {
		t.Errorf("status after the second command = %v, want firmware 1.1", st[len(st)-1])
	}
	if p := progressOf(evs, "cmd-2"); len(p) != 0 {
		t.Errorf("the second command was downloaded: %v", p)
	}
	st := waitState(t, f, "dev-1", "both commands received", func(s DeviceState) bool { return len(s.Received) >= 2 })
	if st.Upgrades != 1 || st.Attempts != 1 {
		t.Errorf("state = %+v, want one install", st)
	}
}

func TestOfflineDeviceGetsQueuedCommand(t *testing.T) {
	e := newEnv(t)
	e.files.add("/fw/1.1.bin", pkgSize)
	f := e.startFleet([]string{"dev-1"}, Faults{Offline: Fault{Devices: []string{"dev-1"}}})

	waitState(t, f, "dev-1", "offline", func(s DeviceState) bool { return !s.Connected })
	e.send("dev-1", e.command("while-offline", "/fw/1.1.bin"))
	if st, _ := f.Device("dev-1"); st.Connected || len(st.Received) != 0 {
		t.Fatalf("device came back before the command was queued (state %+v); lengthen OfflineFor", st)
	}
	e.watcher.waitFor(t, "dev-1", "upgrade after reconnecting", hasStatus("firmware_ver", "1.1"))
	st := waitState(t, f, "dev-1", "idle", func(s DeviceState) bool { return s.Working == "" })
	if !slices.Equal(st.Received, []string{"while-offline"}) || st.Upgrades != 1 {
		t.Errorf("state = %+v", st)
	}
}

func TestInvalidCommandIgnored(t *testing.T) {
	e := newEnv(t)
	f := e.startFleet([]string{"dev-1"}, Faults{})
	e.publish(protocol.CommandTopic("dev-1"), []byte(`{"id":"x","type":"firmware"}`))
	st := waitState(t, f, "dev-1", "invalid command counted", func(s DeviceState) bool { return s.Ignored == 1 })
	if st.Attempts != 0 || !st.Connected {
		t.Errorf("state = %+v", st)
	}
}

func TestConfigErrors(t *testing.T) {
	valid := func() Config {
		return Config{
			BrokerURL:   "tcp://localhost:1883",
			Prefix:      "sim",
			Count:       3,
			Initial:     protocol.Status{"firmware_ver": "1.0"},
			Credentials: map[string]string{},
		}
	}
	tests := []struct {
		name    string
		edit    func(c *Config)
		wantErr string
	}{
		{"no broker", func(c *Config) { c.BrokerURL = "" }, "broker URL is empty"},
		{"bad scheme", func(c *Config) { c.BrokerURL = "http://localhost" }, "scheme"},
		{"no host", func(c *Config) { c.BrokerURL = "tcp://" }, "no host"},
		{"no devices", func(c *Config) { c.Count = 0 }, "no devices"},
		{"negative count", func(c *Config) { c.Count = -1 }, "negative"},
		{"count without prefix", func(c *Config) { c.Prefix = "" }, "needs a prefix"},
		{"ids and count", func(c *Config) { c.DeviceIDs = []string{"a"} }, "not both"},
		{"invalid ID", func(c *Config) { c.Prefix, c.Count, c.DeviceIDs = "", 0, []string{"a/b"} }, "device ID"},
		{"duplicate ID", func(c *Config) { c.Prefix, c.Count, c.DeviceIDs = "", 0, []string{"a", "a"} }, "twice"},
		{"empty status", func(c *Config) { c.Initial = nil }, "initial status is empty"},
		{"no secrets", func(c *Config) { c.Credentials = nil }, "Credentials or a Registrar"},
		{"rate above 1", func(c *Config) { c.Faults.Corrupt.Rate = 1.5 }, "between 0 and 1"},
		{"negative attempts", func(c *Config) { c.Faults.Slow.Attempts = -1 }, "negative"},
		{"unknown fault device", func(c *Config) { c.Faults.Silent.Devices = []string{"sim-00009"} }, "not in the fleet"},
		{"negative delay", func(c *Config) { c.Timing.InstallDelay = -time.Second }, "negative"},
		{"negative download time", func(c *Config) { c.Timing.DownloadTime = -time.Second }, "download time -1s is negative"},
		{"download time beyond the download timeout", func(c *Config) { c.Timing.DownloadTime = 10 * time.Minute },
			"download time 10m0s is not shorter than the download timeout 10m0s"},
		{"unknown protocol", func(c *Config) { c.Protocol = "2" }, `protocol "2": want 1 or 1.1`},
		{"protocol 1 with trusted keys", func(c *Config) { c.Protocol, c.TrustedKeys = ProtocolV1, &pkgsig.TrustedKeys{} }, "protocol 1 devices verify no signatures"},
		{"protocol 1 requiring signatures", func(c *Config) { c.Protocol, c.RequireSignatures = ProtocolV1, true }, "protocol 1 devices verify no signatures"},
		{"signatures required without keys", func(c *Config) { c.RequireSignatures = true }, "no trusted keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			_, err := New(c)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
	if _, err := New(valid()); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

func TestStartWithoutSecrets(t *testing.T) {
	f, err := New(Config{BrokerURL: "tcp://127.0.0.1:1", Prefix: "sim", Count: 2,
		Initial: protocol.Status{"firmware_ver": "1.0"}, Credentials: map[string]string{"sim-00001": "s"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "sim-00002") {
		t.Fatalf("Start() error = %v, want the device without a secret named", err)
	}
}

func TestFaultSelection(t *testing.T) {
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = DeviceID("sim", i+1)
	}
	pick := func(seed int64, rate float64) []string {
		faults := Faults{Seed: seed, Corrupt: Fault{Rate: rate}}
		var out []string
		for _, id := range ids {
			if faults.forDevice(id).any(faultCorrupt) {
				out = append(out, id)
			}
		}
		return out
	}
	tests := []struct {
		rate     float64
		min, max int
	}{
		{0, 0, 0},
		{0.01, 70, 130},
		{0.1, 900, 1100},
		{0.5, 4800, 5200},
		{1, 10000, 10000},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.rate), func(t *testing.T) {
			got := pick(1, tt.rate)
			if len(got) < tt.min || len(got) > tt.max {
				t.Errorf("rate %v picked %d of 10000 devices, want %d..%d", tt.rate, len(got), tt.min, tt.max)
			}
			if again := pick(1, tt.rate); !slices.Equal(got, again) {
				t.Error("the same seed picked different devices")
			}
		})
	}
	if slices.Equal(pick(1, 0.1), pick(2, 0.1)) {
		t.Error("different seeds picked the same devices")
	}
	// Different faults pick different devices at the same rate.
	f := Faults{Seed: 1, Corrupt: Fault{Rate: 0.1}, Slow: Fault{Rate: 0.1}}
	same := 0
	for _, id := range ids {
		df := f.forDevice(id)
		if df.any(faultCorrupt) && df.any(faultSlow) {
			same++
		}
	}
	if same > 200 { // independent picks overlap on about 1%
		t.Errorf("%d devices have both faults; picks are not independent", same)
	}

	df := (&Faults{InstallFail: Fault{Devices: []string{"a"}, Attempts: 2}}).forDevice("a")
	for attempt, want := range map[int]bool{1: true, 2: true, 3: false} {
		if got := df.strikes(faultInstallFail, attempt); got != want {
			t.Errorf("attempt %d: strikes = %v, want %v", attempt, got, want)
		}
	}
}

// BenchmarkFleetMemory measures what a simulated device costs, and what its connection costs
// the broker: 1,000 devices connect to a broker in a child process (so each process is
// measured alone) and report their status.
// Run: go test -run '^$' -bench FleetMemory -benchtime 1x ./internal/dev/simulator
// ($OTAFLOW_BENCH_DEVICES changes the number of devices).
func BenchmarkFleetMemory(b *testing.B) {
	n := 1000
	if v := os.Getenv("OTAFLOW_BENCH_DEVICES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("OTAFLOW_BENCH_DEVICES=%q is not a positive number", v)
		}
	}
	helper := startHelperBroker(b)
	secrets := make(map[string]string, n)
	for i := range n {
		secrets[DeviceID("mem", i+1)] = helperSecret
	}
	for b.Loop() {
		before, brokerBefore := memInUse(), helper.mem(b)
		goroutines := runtime.NumGoroutine()
		start := time.Now()

		f, err := New(Config{
			BrokerURL: helper.url, Prefix: "mem", Count: n, Initial: protocol.Status{"firmware_ver": "1.0"},
			Credentials: secrets, Logger: testLogger(),
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := f.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if err := f.WaitConnected(ctx); err != nil {
			b.Fatal(err)
		}
		connected := time.Since(start)
		perDevice := float64(memInUse()-before) / float64(n)
		perClient := float64(helper.mem(b)-brokerBefore) / float64(n)
		b.ReportMetric(perDevice, "simulator-bytes/device")
		b.ReportMetric(perClient, "broker-bytes/device")
		b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/float64(n), "goroutines/device")
		b.Logf("%d devices connected and reported in %v: simulator %.0f bytes/device (%d goroutines), broker %.0f bytes/device",
			n, connected.Round(time.Millisecond), perDevice, runtime.NumGoroutine()-goroutines, perClient)
		f.Stop()
		cancel()
	}
}
