package main

import (
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/ota"
)

// A slow-download fleet (bench --download-time D --report-every R): every simulated device
// takes D over each download and reports progress every R on the way, as devices on a poor
// network do. The benchmark then runs the rollout alone: the floors measure fast round trips
// (they send a command again after rawRetry without an answer), which a download of minutes
// makes meaningless. What it shows is what the slow downloads cost the workflows: history
// events per upgrade, and how many of the devices' progress reports became signals.

// slowFleet is the pace of a slow-download fleet; the zero value is the ordinary fast fleet.
type slowFleet struct {
	download, reportEvery time.Duration
}

// on reports whether the fleet is slow.
func (f slowFleet) on() bool { return f.download > 0 }

// slowFlags are the bench flags that make the fleet slow, as given.
type slowFlags struct {
	download, reportEvery       time.Duration
	downloadSet, reportEverySet bool
	// floorsSet: --floors was given explicitly (true).
	floorsSet bool
}

// defaultReportEvery is the devices' progress interval in a slow fleet, unless --report-every.
const defaultReportEvery = 10 * time.Second

// slowFleetFrom checks the slow-fleet flags; its errors are for the person at the terminal.
func slowFleetFrom(f slowFlags) (slowFleet, error) {
	if !f.downloadSet {
		if f.reportEverySet {
			return slowFleet{}, fmt.Errorf("--report-every needs --download-time: it paces the progress of a slow-download fleet")
		}
		return slowFleet{}, nil
	}
	report := defaultReportEvery
	if f.reportEverySet {
		report = f.reportEvery
	}
	maxDownload := simulator.DefaultTiming().DownloadTimeout
	switch {
	case f.download <= 0:
		return slowFleet{}, fmt.Errorf("--download-time must be positive, not %s", f.download)
	case f.download >= maxDownload:
		return slowFleet{}, fmt.Errorf("--download-time %s is too long: the simulated devices give a download up after %s", f.download, maxDownload)
	case report <= 0:
		return slowFleet{}, fmt.Errorf("--report-every must be positive, not %s", report)
	case report > f.download:
		return slowFleet{}, fmt.Errorf("--report-every %s is longer than --download-time %s: the devices would report nothing but 100", report, f.download)
	case f.floorsSet:
		return slowFleet{}, fmt.Errorf("--floors measure fast round trips (a command is sent again after %s without an answer); with --download-time the benchmark runs the rollout alone", rawRetry)
	}
	return slowFleet{download: f.download, reportEvery: report}, nil
}

// timing is the simulated devices' timing for the fleet.
func (f slowFleet) timing() simulator.Timing {
	return simulator.Timing{DownloadTime: f.download, ReportInterval: f.reportEvery}
}

// devicesimArgs are devicesim's flags for the fleet.
func (f slowFleet) devicesimArgs() []string {
	if !f.on() {
		return nil
	}
	return []string{"--download-time", f.download.String(), "--report-interval", f.reportEvery.String()}
}

// rolloutTimeouts are the device upgrades' start and silence timeouts (0: the default). A fast
// fleet answers within seconds, so the start timeout is rawRetry, as the floors wait. A slow
// device's first report comes once a percent of its download is in; then the bridge forwards
// no intermediate progress by default, and the workflow reads the stored reports when its
// silence deadline passes: the default silence timeout applies, or two report intervals when
// that is longer.
func (f slowFleet) rolloutTimeouts() (start, silence time.Duration) {
	if !f.on() {
		return rawRetry, 0
	}
	start = rawRetry + f.download/100
	silence = max(ota.DefaultSilenceTimeout, 2*f.reportEvery)
	return start, silence
}

// signalCounts counts the signals a history received, by name.
func signalCounts(events []*historypb.HistoryEvent) map[string]int {
	c := map[string]int{}
	for _, e := range events {
		if e.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED {
			c[e.GetWorkflowExecutionSignaledEventAttributes().GetSignalName()]++
		}
	}
	return c
}

// slowSample is what the sampled successful upgrades of a slow fleet's rollout received: the
// progress reports the bridge stored for them and the signals their workflows got, by name.
type slowSample struct {
	upgrades int
	reports  int
	signals  map[string]int
	// avg and max are the history events per upgrade of the whole sample.
	avg float64
	max int64
}

// eventBound is the most history events a device upgrade may take in a slow-download fleet
// (issue 14: a 5-minute download reporting every 10 s stays within it).
const eventBound = 20

// lines formats the slow fleet's part of the summary.
func (f slowFleet) lines(s slowSample) []string {
	within := "within"
	if s.max > eventBound {
		within = "ABOVE"
	}
	others := 0
	for name, n := range s.signals {
		if name != ota.SignalProgress && name != ota.SignalStatus {
			others += n
		}
	}
	return []string{
		fmt.Sprintf("  slow-download fleet: every download takes %s, progress reported every %s (the rollout alone, no floors)",
			f.download, f.reportEvery),
		fmt.Sprintf("  history events per upgrade        %8.1f avg, %d max: %s the bound of %d", s.avg, s.max, within, eventBound),
		fmt.Sprintf("  progress reports per upgrade      %8.1f stored by the bridge", per(s.reports, s.upgrades)),
		fmt.Sprintf("  signals per upgrade               %8.1f reached the workflow: %.1f progress, %.1f status, %.1f other",
			per(s.signals[ota.SignalProgress]+s.signals[ota.SignalStatus]+others, s.upgrades),
			per(s.signals[ota.SignalProgress], s.upgrades), per(s.signals[ota.SignalStatus], s.upgrades), per(others, s.upgrades)),
		fmt.Sprintf("  (reports and signals: the %d successful upgrades of the sample; the bridge holds the first report and 100 for %s, "+
			"a later report or a status with the version folding them in, and forwards no other progress)",
			s.upgrades, bridge.DefaultProgressMerge),
	}
}
