package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/urfave/cli/v2"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/otaflow/otaflow/activities"
	"github.com/otaflow/otaflow/internal/dev/localstack"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
)

// The benchmark measures, on one stack with the worker and the bridge in processes of their
// own: (1) the raw MQTT command -> status round trip of the simulated fleet without Temporal,
// (2) a minimal Temporal workflow per device (publish, wait for one status signal, complete),
// (3) a minimal rollout: a parent workflow fanning those out as child workflows, and (4) a real
// rollout; then it prints rates, latencies, history sizes (by event type too) and peak memory.

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "benchmark a rollout over simulated devices on the local stack, against three floors",
		Flags: append(stackFlags(10000),
			&cli.IntFlag{Name: "max-in-flight", Value: 1000, Usage: "device upgrades in flight, for the rollout and floors 2 and 3"},
			&cli.IntFlag{Name: "continue-after", Value: ota.DefaultContinueAfter, Usage: "device upgrades per rollout run (and floor 3 run) before it continues as new"},
			&cli.BoolFlag{Name: "metrics", Usage: "the worker and the bridge serve metrics, scraped every 15 s during the rollout"},
			&cli.BoolFlag{Name: "webhooks", Usage: "the worker sends every event notification to a receiver the benchmark runs"},
			&cli.BoolFlag{Name: "floors", Value: true, Usage: "measure the three floors too (--floors=false: the rollout alone; not with --download-time)"},
			&cli.DurationFlag{Name: "download-time", Usage: "a slow-download fleet: every device takes this long over each download (e.g. 5m), " +
				"and the rollout runs alone, without the floors"},
			&cli.DurationFlag{Name: "report-every", Value: defaultReportEvery, Usage: "with --download-time: how often the devices report progress"},
			&cli.StringFlag{Name: "pprof", Usage: "`DIR`: take a CPU profile of the Temporal server for 30 s, from 10 s after the rollout starts, " +
				"write it there and print its top functions (needs --real-servers: the dev server cannot serve pprof)"},
		),
		Action: func(cCtx *cli.Context) error {
			cfg, err := configFrom(cCtx)
			if err != nil {
				return err
			}
			if cfg.Devices < 1 {
				return cli.Exit("--devices must be at least 1", 2)
			}
			// On the dev server the worker, the bridge and the fleet run as processes of their
			// own; on the real servers the workers and the bridges do (two each), and the fleet
			// runs in this process.
			cfg.External = !cfg.RealServers
			slow, err := slowFleetFrom(slowFlags{download: cCtx.Duration("download-time"), downloadSet: cCtx.IsSet("download-time"),
				reportEvery: cCtx.Duration("report-every"), reportEverySet: cCtx.IsSet("report-every"),
				floorsSet: cCtx.IsSet("floors") && cCtx.Bool("floors")})
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			cfg.SimTiming = slow.timing()
			profiles, err := pprofDir(cCtx.String("pprof"), cfg.RealServers)
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			if profiles != "" {
				if cfg.TemporalPProfPort, err = localstack.FreePort(); err != nil {
					return err
				}
			}
			cfg.PackageName = "bench-64k.bin"
			cfg.PackageSize = 64 << 10
			return runBench(cCtx.Context, cfg, benchOptions{inFlight: cCtx.Int("max-in-flight"), continueAfter: cCtx.Int("continue-after"),
				metrics: cCtx.Bool("metrics"), webhooks: cCtx.Bool("webhooks"), floors: cCtx.Bool("floors") && !slow.on(), slow: slow, pprofDir: profiles})
		},
	}
}

type benchResult struct {
	name    string
	devices int
	elapsed time.Duration
}

func (r benchResult) perMinute() float64 { return float64(r.devices) / r.elapsed.Minutes() }

func runBench(ctx context.Context, cfg Config, opts benchOptions) error {
	inFlight, continueAfter := opts.inFlight, opts.continueAfter
	obs, err := newBenchObserver(opts)
	if err != nil {
		return err
	}
	if cfg.RealServers {
		if opts.metrics || opts.webhooks {
			return cli.Exit("--metrics and --webhooks are not measured with --real-servers yet", 2)
		}
		// Every run starts from the initial versions, as devicesim --keep-versions=false does.
		if err := os.Remove(filepath.Join(cfg.DataDir, "real", "devicesim", simulator.VersionsFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	var workerPID, bridgePID, fleetPID int
	if r := s.real; r != nil {
		workerPID, bridgePID, fleetPID = r.Workers[0].PID(), r.Bridges[0].PID(), os.Getpid()
		s.say("%d simulated devices connected and reported (in this process); %d workers and %d bridges run apart.",
			cfg.Devices, len(r.Workers), len(r.Bridges))
	} else {
		procs, err := s.startProcesses(ctx, cfg.Devices, obs, opts.slow.devicesimArgs()...)
		if err != nil {
			return err
		}
		defer procs.stop()
		s.say("Connecting %d simulated devices (devicesim, pid %d) ...", cfg.Devices, procs.fleet.Process.Pid)
		wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
		defer cancel()
		if err := system.WaitReported(wctx, s.Store, "sim", protocol.Status{"firmware_ver": "1.0"}, cfg.Devices); err != nil {
			return err
		}
		workerPID, bridgePID, fleetPID = procs.worker.Process.Pid, procs.bridge.Process.Pid, procs.fleet.Process.Pid
		s.say("%d simulated devices connected and reported; the worker (pid %d) and the bridge (pid %d) run apart.",
			cfg.Devices, workerPID, bridgePID)
	}

	ids := make([]string, cfg.Devices)
	for i := range ids {
		ids[i] = simulator.DeviceID("sim", i+1)
	}
	var floor1, floor2, floor3 benchResult
	if opts.floors {
		if floor1, err = s.benchRawMQTT(ctx, ids, "1.1", inFlight); err != nil {
			return fmt.Errorf("floor 1: %w", err)
		}
		s.say("Floor 1, MQTT round trip without Temporal: %d devices in %s = %.0f/min", floor1.devices, floor1.elapsed.Round(time.Millisecond), floor1.perMinute())
		if floor2, err = s.benchMinimalWorkflow(ctx, ids, "1.2", inFlight); err != nil {
			return fmt.Errorf("floor 2: %w", err)
		}
		s.say("Floor 2, minimal workflow per device: %d devices in %s = %.0f/min", floor2.devices, floor2.elapsed.Round(time.Millisecond), floor2.perMinute())
		if floor3, err = s.benchMinimalRollout(ctx, ids, "1.3", inFlight, continueAfter); err != nil {
			return fmt.Errorf("floor 3: %w", err)
		}
		s.say("Floor 3, minimal rollout of minimal workflows: %d devices in %s = %.0f/min", floor3.devices, floor3.elapsed.Round(time.Millisecond), floor3.perMinute())
	}

	name := "bench-" + time.Now().UTC().Format("20060102-150405")
	startTimeout, silenceTimeout := opts.slow.rolloutTimeouts()
	req := ota.RolloutRequest{Name: name,
		Upgrade: ota.UpgradeRequest{Type: "firmware", Version: rolloutVersion, URL: s.Package.URL, MD5: s.Package.MD5, Size: s.Package.Size,
			StartTimeout: ota.Duration(startTimeout), SilenceTimeout: ota.Duration(silenceTimeout),
			MaxAttempts: rawTries + 1, RetryBackoff: ota.Duration(time.Second)},
		Targets:     ota.Targets{Prefix: "sim-"},
		MaxInFlight: inFlight, ContinueAfter: continueAfter, PageSize: 1000,
	}
	start := time.Now()
	obs.startScraping()
	run, err := ota.StartRollout(ctx, s.Client, req)
	if err != nil {
		return err
	}
	var profile *cpuCapture
	if opts.pprofDir != "" {
		profile = captureCPU(ctx, fmt.Sprintf("http://127.0.0.1:%d", cfg.TemporalPProfPort),
			filepath.Join(opts.pprofDir, "temporal-server-cpu-"+name+".pprof"), pprofDelay, pprofLength)
	}
	p, err := s.watchRollout(ctx, run)
	if err != nil {
		return err
	}
	rollout := benchResult{name: "rollout", devices: p.Counts.Succeeded, elapsed: time.Since(start)}
	if profile != nil {
		if rollout.elapsed < pprofDelay+pprofLength {
			s.say("(the rollout took %s: the CPU profile of the Temporal server runs on to %s after its start)",
				rollout.elapsed.Round(time.Second), pprofDelay+pprofLength)
		}
		if err := profile.wait(); err != nil {
			return err
		}
	}
	lost := cfg.Devices - p.Counts.Finished()

	lat, err := s.latencies(ctx, name)
	if err != nil {
		return err
	}
	var reportsSince time.Time
	if opts.slow.on() {
		reportsSince = start
	}
	hist, err := s.deviceHistories(ctx, ids, 200, reportsSince)
	if err != nil {
		return err
	}
	runs, maxRollout, rolloutEvents, err := s.rolloutHistories(ctx, run.GetID())
	if err != nil {
		return err
	}
	wMem, bMem, fMem := peakRSS(workerPID), peakRSS(bridgePID), peakRSS(fleetPID)

	servers := "the dev server on its WAL SQLite file, the embedded broker"
	if s.real != nil {
		servers = fmt.Sprintf("the Temporal server %s on PostgreSQL (4 history shards), Mosquitto, %d workers and %d bridges",
			localstack.TemporalServerVersion, len(s.real.Workers), len(s.real.Bridges))
	}
	s.say("\nOTAflow benchmark: %d simulated devices, max %d in flight, one 2-core machine, %s", cfg.Devices, inFlight, servers)
	s.say("  metrics %s, webhooks %s", onOff(opts.metrics), onOff(opts.webhooks))
	s.say("  rollout %s: %s, %d succeeded, %d failed, %d timed out, %d lost", name, p.State, p.Counts.Succeeded, p.Counts.Failed, p.Counts.TimedOut, lost)
	s.say("  device upgrades per minute        %8.0f   (%s for %d devices)", rollout.perMinute(), rollout.elapsed.Round(time.Second), rollout.devices)
	if opts.floors {
		s.say("  floor 1: raw MQTT round trips/min %8.0f", floor1.perMinute())
		s.say("  floor 2: minimal workflows/min    %8.0f   (rollout at %.0f%% of it)", floor2.perMinute(), 100*rollout.perMinute()/floor2.perMinute())
		s.say("  floor 3: minimal rollout/min      %8.0f   (rollout at %.0f%% of it)", floor3.perMinute(), 100*rollout.perMinute()/floor3.perMinute())
	}
	s.say("  time per device p50 / p99         %8s / %s", lat.p50.Round(time.Millisecond), lat.p99.Round(time.Millisecond))
	if opts.slow.on() {
		for _, l := range opts.slow.lines(slowSample{upgrades: hist.upgrades, reports: hist.reports, signals: hist.signals, avg: hist.avg, max: hist.max}) {
			s.say("%s", l)
		}
	}
	s.say("  history events per device upgrade %8.1f avg, %d max (sample of %d)", hist.avg, hist.max, hist.n)
	s.say("  largest rollout execution history %8d events (%d runs, continue-as-new every %d devices)", maxRollout, runs, continueAfter)
	for _, l := range (eventBreakdown{device: hist.events, upgrades: hist.upgrades, rollout: rolloutEvents, devices: p.Counts.Started}).lines() {
		s.say("%s", l)
	}
	s.say("  peak memory: worker %s, bridge %s (simulated fleet %s)", mib(wMem), mib(bMem), mib(fMem))
	obs.finish(s, p.Counts.Finished())
	if profile != nil {
		flat, err := pprofTop(ctx, profile.file, pprofTopN)
		if err != nil {
			return err
		}
		cum, err := pprofTop(ctx, profile.file, pprofTopN, "-cum", "-show="+pprofServerCode)
		if err != nil {
			return err
		}
		s.say("  CPU profile of the Temporal server (pid %d), %s from %s after the rollout started (it took %s): %s",
			s.real.Temporal.PID(), pprofLength, pprofDelay, rollout.elapsed.Round(time.Second), profile.file)
		s.say("  top %d functions by CPU time of their own (flat; cum: with what they call):", pprofTopN)
		for _, l := range flat {
			s.say("%s", l)
		}
		s.say("  top %d of the server's own functions (go.temporal.io/server) by CPU time with what they call (cum):", pprofTopN)
		for _, l := range cum {
			if !strings.HasPrefix(strings.TrimSpace(l), "Duration:") {
				s.say("%s", l)
			}
		}
	}
	return nil
}

// benchRawMQTT sends every device a command over MQTT, inFlight outstanding at a time (a new
// one as each device reports the version), with no Temporal in the path: the round-trip rate
// of the simulated fleet itself.
func (s *Stack) benchRawMQTT(ctx context.Context, ids []string, version string, inFlight int) (benchResult, error) {
	reported := make(chan string, len(ids))
	opts, err := mqttconn.Options(s.BridgeMQTTURL, "bench-observer")
	if err != nil {
		return benchResult{}, err
	}
	opts.SetCleanSession(true)
	opts.SetOnConnectHandler(func(c paho.Client) {
		c.Subscribe(protocol.StatusFilter, 1, func(_ paho.Client, m paho.Message) {
			id, _, err := protocol.ParseTopic(m.Topic())
			st, perr := protocol.ParseStatus(m.Payload())
			if err == nil && perr == nil && st["firmware_ver"] == version {
				reported <- id
			}
		}).Wait()
	})
	obs, err := mqttconn.Connect(ctx, opts)
	if err != nil {
		return benchResult{}, err
	}
	defer obs.Disconnect(100)
	pubOpts, err := mqttconn.Options(s.WorkerMQTTURL, "bench-publisher")
	if err != nil {
		return benchResult{}, err
	}
	pubOpts.SetCleanSession(true)
	pc, err := mqttconn.Connect(ctx, pubOpts)
	if err != nil {
		return benchResult{}, err
	}
	defer pc.Disconnect(100)
	pub := &mqttconn.Publisher{Client: pc}
	start := time.Now()
	sentAt := make([]time.Time, len(ids))
	tries := make([]int, len(ids))
	resent, lost := 0, 0
	var lostIDs []string
	send := func(i int) error {
		sentAt[i] = time.Now()
		cmd := protocol.UpgradeCommand{ID: fmt.Sprintf("raw-%d-%d", i, sentAt[i].UnixNano()), Type: "firmware", Version: version, URL: s.Package.URL,
			MD5: s.Package.MD5, Size: s.Package.Size, IssuedAt: sentAt[i], ExpiresAt: sentAt[i].Add(time.Hour)}
		b, _ := json.Marshal(cmd)
		return pub.Publish(ctx, protocol.CommandTopic(ids[i]), b)
	}
	next := 0
	for ; next < min(inFlight, len(ids)); next++ {
		if err := send(next); err != nil {
			return benchResult{}, err
		}
	}
	done := map[string]bool{}
	timeout := time.After(30 * time.Minute)
	// A command with no answer after rawRetry is sent again, as a workflow would after its
	// start timeout.
	check := time.NewTicker(5 * time.Second)
	defer check.Stop()
	for len(done) < len(ids) {
		select {
		case <-check.C:
			for i := 0; i < next; i++ {
				if done[ids[i]] || time.Since(sentAt[i]) <= rawRetry {
					continue
				}
				if tries[i] == rawTries {
					// Give the device up, as a workflow ends timed out after its attempts.
					done[ids[i]], lost = true, lost+1
					lostIDs = append(lostIDs, ids[i])
					if next < len(ids) {
						if err := send(next); err != nil {
							return benchResult{}, err
						}
						next++
					}
					continue
				}
				if err := send(i); err != nil {
					return benchResult{}, err
				}
				tries[i]++
				resent++
			}
		case id := <-reported:
			if done[id] {
				continue
			}
			done[id] = true
			if next < len(ids) {
				if err := send(next); err != nil {
					return benchResult{}, err
				}
				next++
			}
		case <-timeout:
			return benchResult{}, fmt.Errorf("%d devices never reported %s", len(ids)-len(done), version)
		case <-ctx.Done():
			return benchResult{}, ctx.Err()
		}
	}
	if resent > 0 {
		s.say("  (floor 1 sent %d commands again after %s without an answer; %d devices never answered)", resent, rawRetry, lost)
	}
	for _, id := range lostIDs[:min(len(lostIDs), 5)] {
		if s.System.Broker == nil {
			s.say("  (never answered: %s)", id)
			continue
		}
		info, ok := s.System.Broker.Client(id)
		s.say("  (never answered: %s; broker session: found %v, %+v)", id, ok, info)
	}
	return benchResult{name: "raw", devices: len(ids) - lost, elapsed: time.Since(start)}, nil
}

// rawRetry is how long the floors wait for a device's answer before sending its command
// again, and the rollout's start timeout: a few simulated devices in ten thousand stop
// answering under this load, and each measure gives them up the same way.
const rawRetry = 20 * time.Second

// rolloutVersion is the firmware version the benchmark's rollout installs (the floors install
// 1.1 to 1.3 before it).
const rolloutVersion = "1.4"

// rawTries is how many times floor 1 sends a command again before it gives the device up.
const rawTries = 2

// minimalTaskQueue is the task queue of the floor-2 workflow, served by the bench itself.
const minimalTaskQueue = "otaflow-bench-minimal"

// minimalUpgrade is the least a Temporal device upgrade can do: publish the command (a local
// activity), wait for a status signal with the version, complete.
func minimalUpgrade(ctx workflow.Context, req ota.UpgradeRequest) error {
	now := workflow.Now(ctx)
	info := workflow.GetInfo(ctx)
	cmd := protocol.UpgradeCommand{ID: info.WorkflowExecution.RunID, Type: req.Type, Version: req.Version, URL: req.URL,
		MD5: req.MD5, Size: req.Size, IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	var a *minimalActivities
	lctx := workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{StartToCloseTimeout: 30 * time.Second})
	if err := workflow.ExecuteLocalActivity(lctx, a.Publish, cmd, req.DeviceID).Get(ctx, nil); err != nil {
		return err
	}
	ch := workflow.GetSignalChannel(ctx, ota.SignalStatus)
	for {
		var sig ota.StatusSignal
		ok, _ := ch.ReceiveWithTimeout(ctx, rawRetry, &sig)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !ok { // no answer: send the command again, as the real workflow's retry would
			cmd.IssuedAt = workflow.Now(ctx)
			cmd.ID = fmt.Sprintf("%s-%d", info.WorkflowExecution.RunID, cmd.IssuedAt.UnixNano())
			if err := workflow.ExecuteLocalActivity(lctx, a.Publish, cmd, req.DeviceID).Get(ctx, nil); err != nil {
				return err
			}
			continue
		}
		if sig.Status["firmware_ver"] == req.Version {
			return nil
		}
	}
}

// minimalTimeout bounds a minimal upgrade: its attempts, each waiting rawRetry for an answer.
const minimalTimeout = (rawTries+1)*rawRetry + 5*time.Second

// minimalUpgradeName is the floor-2 workflow's type name.
const minimalUpgradeName = "BenchMinimalUpgrade"

type minimalActivities struct {
	pub    activities.Publisher
	client client.Client
}

// Publish sends a command to a device.
func (m *minimalActivities) Publish(ctx context.Context, cmd protocol.UpgradeCommand, device string) error {
	b, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	return m.pub.Publish(ctx, protocol.CommandTopic(device), b)
}

// startMinimalWorker starts a worker, on its own MQTT connection, for the floor workflows
// on minimalTaskQueue; stop stops it.
func (s *Stack) startMinimalWorker(ctx context.Context, clientID string) (stop func(), err error) {
	opts, err := mqttconn.Options(s.WorkerMQTTURL, clientID)
	if err != nil {
		return nil, err
	}
	opts.SetCleanSession(true)
	mc, err := mqttconn.Connect(ctx, opts)
	if err != nil {
		return nil, err
	}
	w := worker.New(s.Client, minimalTaskQueue, worker.Options{MaxConcurrentLocalActivityExecutionSize: 200, MaxConcurrentWorkflowTaskExecutionSize: 200})
	w.RegisterWorkflowWithOptions(minimalUpgrade, workflow.RegisterOptions{Name: minimalUpgradeName})
	w.RegisterWorkflowWithOptions(minimalRollout, workflow.RegisterOptions{Name: minimalRolloutName})
	w.RegisterActivity(&minimalActivities{pub: &mqttconn.Publisher{Client: mc}, client: s.Client})
	if err := w.Start(); err != nil {
		mc.Disconnect(100)
		return nil, err
	}
	return func() {
		w.Stop()
		mc.Disconnect(100)
	}, nil
}

// benchMinimalWorkflow runs floor 2: a minimal workflow per device, inFlight at a time.
func (s *Stack) benchMinimalWorkflow(ctx context.Context, ids []string, version string, inFlight int) (benchResult, error) {
	stop, err := s.startMinimalWorker(ctx, "bench-minimal-worker")
	if err != nil {
		return benchResult{}, err
	}
	defer stop()
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	for _, id := range ids {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return benchResult{}, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req := ota.UpgradeRequest{DeviceID: id, Type: "firmware", Version: version, URL: s.Package.URL, MD5: s.Package.MD5, Size: s.Package.Size}
			run, err := s.Client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: ota.DeviceWorkflowID(id), TaskQueue: minimalTaskQueue,
				WorkflowExecutionTimeout: minimalTimeout}, minimalUpgradeName, req)
			if err == nil {
				err = run.Get(ctx, nil)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	n := int(failed.Load())
	if n > 0 {
		s.say("  (floor 2: %d devices never answered; the first error: %v)", n, firstErr.Load())
	}
	if n == len(ids) {
		return benchResult{}, fmt.Errorf("every minimal workflow failed, the first: %v", firstErr.Load())
	}
	return benchResult{name: "minimal", devices: len(ids) - n, elapsed: time.Since(start)}, nil
}

type latency struct{ p50, p99 time.Duration }

// latencies are the per-device upgrade times of a rollout, from its PostgreSQL records.
func (s *Stack) latencies(ctx context.Context, rollout string) (latency, error) {
	var d []time.Duration
	after := ""
	for {
		devs, err := s.Store.ListDevices(ctx, ota.DeviceFilter{Prefix: "sim-", After: after, Limit: 1000})
		if err != nil {
			return latency{}, err
		}
		if len(devs) == 0 {
			break
		}
		for _, dev := range devs {
			up, err := s.Store.LatestUpgrade(ctx, dev.ID)
			if err == nil && up.Rollout == rollout && up.FinishedAt != nil {
				d = append(d, up.FinishedAt.Sub(up.CreatedAt))
			}
		}
		after = devs[len(devs)-1].ID
	}
	if len(d) == 0 {
		return latency{}, errors.New("no finished device upgrade recorded")
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return latency{p50: d[len(d)/2], p99: d[min(len(d)-1, len(d)*99/100)]}, nil
}

type histories struct {
	n   int
	avg float64
	max int64
	// events are the sampled successful upgrades' events by type, and how many they are.
	events   eventCounts
	upgrades int
	// signals are the signals the sampled successful upgrades received, by name; reports the
	// progress reports stored for them (counted only when asked).
	signals map[string]int
	reports int
}

// deviceHistories samples the histories of n device upgrades of a rollout: their length, and
// the events and signals of the successful ones by type; when reportsSince is not zero, also
// the progress reports of rolloutVersion the bridge stored for them since then.
func (s *Stack) deviceHistories(ctx context.Context, ids []string, n int, reportsSince time.Time) (histories, error) {
	h := histories{events: eventCounts{}, signals: map[string]int{}}
	var sum int64
	for i := 0; i < len(ids) && h.n < n; i += max(1, len(ids)/n) {
		events, err := s.history(ctx, ota.DeviceWorkflowID(ids[i]), "")
		if err != nil {
			return h, err
		}
		l := int64(len(events))
		sum += l
		h.max = max(h.max, l)
		h.n++
		if upgradeSucceeded(events) {
			h.events.add(countEvents(events))
			h.upgrades++
			for name, c := range signalCounts(events) {
				h.signals[name] += c
			}
			if !reportsSince.IsZero() {
				reports, err := s.Store.ProgressEvents(ctx, ids[i], 10000)
				if err != nil {
					return h, err
				}
				for _, r := range reports {
					if r.Version == rolloutVersion && !r.ReceivedAt.Before(reportsSince) {
						h.reports++
					}
				}
			}
		}
	}
	if h.n > 0 {
		h.avg = float64(sum) / float64(h.n)
	}
	return h, nil
}

// rolloutHistories returns how many runs a rollout took, the largest history among them and
// the events of all of them by type.
func (s *Stack) rolloutHistories(ctx context.Context, workflowID string) (runs int, largest int64, events eventCounts, err error) {
	events = eventCounts{}
	var token []byte
	for {
		resp, err := s.Client.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Query: fmt.Sprintf("WorkflowId = '%s'", workflowID), NextPageToken: token})
		if err != nil {
			return 0, 0, nil, err
		}
		for _, e := range resp.GetExecutions() {
			runs++
			largest = max(largest, e.GetHistoryLength())
			h, err := s.history(ctx, workflowID, e.GetExecution().GetRunId())
			if err != nil {
				return 0, 0, nil, err
			}
			events.add(countEvents(h))
		}
		if token = resp.GetNextPageToken(); len(token) == 0 {
			return runs, largest, events, nil
		}
	}
}

type benchProcs struct{ worker, bridge, fleet *exec.Cmd }

func (p *benchProcs) stop() {
	for _, c := range []*exec.Cmd{p.fleet, p.worker, p.bridge} {
		if c == nil || c.Process == nil {
			continue
		}
		_ = c.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() {
			_ = c.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(procStopTimeout):
			// A process left behind would keep polling the next run's task queue.
			_ = c.Process.Kill()
			<-done
		}
	}
}

// procStopTimeout is how long a benchmark process may take to stop after Ctrl-C.
const procStopTimeout = 20 * time.Second

// startProcesses builds and starts the worker, the bridge and the simulated fleet as
// processes of their own.
func (s *Stack) startProcesses(ctx context.Context, devices int, obs *benchObserver, simArgs ...string) (*benchProcs, error) {
	bin := filepath.Join(s.cfg.DataDir, "bin")
	for _, pkg := range []string{"worker", "mqttbridge", "devicesim"} {
		s.say("Building ./%s ...", pkg)
		out, err := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, pkg), "./"+pkg).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("build %s: %w\n%s", pkg, err, out)
		}
	}
	logFile, err := os.OpenFile(filepath.Join(s.cfg.DataDir, "otaflow.log"), os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(), "TEMPORAL_ADDRESS="+s.temporal.Address(), "DATABASE_URL="+s.DatabaseURL)
	start := func(name, mqttURL string, args ...string) (*exec.Cmd, error) {
		c := exec.Command(filepath.Join(bin, name), args...)
		c.Env = append(append(env, "MQTT_URL="+mqttURL), obs.env(name)...)
		c.Stdout, c.Stderr = logFile, logFile
		return c, c.Start()
	}
	p := &benchProcs{}
	if p.worker, err = start("worker", s.WorkerMQTTURL); err != nil {
		return nil, err
	}
	if p.bridge, err = start("mqttbridge", s.BridgeMQTTURL); err != nil {
		p.stop()
		return nil, err
	}
	// The bridge records the devices' boot reports once it is subscribed.
	time.Sleep(2 * time.Second)
	args := append([]string{"--devices", strconv.Itoa(devices), "--prefix", "sim",
		// Every run starts the fleet from firmware 1.0, whatever an earlier run installed.
		"--status", "firmware_ver=1.0", "--state-dir", filepath.Join(s.cfg.DataDir, "devicesim"), "--keep-versions=false",
		"--summary-interval", "0"}, simArgs...)
	if p.fleet, err = start("devicesim", s.MQTTURL, args...); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// peakRSS reads a process's peak resident memory (VmHWM) in bytes.
func peakRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
