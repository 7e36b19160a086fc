package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
	historypb "go.temporal.io/api/history/v1"

	"github.com/otaflow/otaflow/internal/bridge"
	"github.com/otaflow/otaflow/internal/ota"
)

func TestSlowFleetFrom(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   slowFlags
		want    slowFleet
		wantErr string
	}{
		{name: "no slow flags: the fast fleet", flags: slowFlags{reportEvery: defaultReportEvery}},
		{name: "download time, the default report interval",
			flags: slowFlags{download: 5 * time.Minute, downloadSet: true, reportEvery: defaultReportEvery},
			want:  slowFleet{download: 5 * time.Minute, reportEvery: 10 * time.Second}},
		{name: "both given",
			flags: slowFlags{download: time.Minute, downloadSet: true, reportEvery: 5 * time.Second, reportEverySet: true},
			want:  slowFleet{download: time.Minute, reportEvery: 5 * time.Second}},
		{name: "report interval equal to the download time",
			flags: slowFlags{download: time.Minute, downloadSet: true, reportEvery: time.Minute, reportEverySet: true},
			want:  slowFleet{download: time.Minute, reportEvery: time.Minute}},
		{name: "zero download time", flags: slowFlags{downloadSet: true, reportEvery: defaultReportEvery},
			wantErr: "--download-time must be positive, not 0s"},
		{name: "negative download time", flags: slowFlags{download: -time.Minute, downloadSet: true, reportEvery: defaultReportEvery},
			wantErr: "--download-time must be positive, not -1m0s"},
		{name: "download time the devices give up", flags: slowFlags{download: 10 * time.Minute, downloadSet: true, reportEvery: defaultReportEvery},
			wantErr: "--download-time 10m0s is too long: the simulated devices give a download up after 10m0s"},
		{name: "zero report interval",
			flags:   slowFlags{download: time.Minute, downloadSet: true, reportEverySet: true},
			wantErr: "--report-every must be positive, not 0s"},
		{name: "negative report interval",
			flags:   slowFlags{download: time.Minute, downloadSet: true, reportEvery: -time.Second, reportEverySet: true},
			wantErr: "--report-every must be positive, not -1s"},
		{name: "report interval longer than the download",
			flags:   slowFlags{download: time.Minute, downloadSet: true, reportEvery: 2 * time.Minute, reportEverySet: true},
			wantErr: "--report-every 2m0s is longer than --download-time 1m0s"},
		{name: "report interval alone", flags: slowFlags{reportEvery: time.Second, reportEverySet: true},
			wantErr: "--report-every needs --download-time"},
		{name: "floors asked for with a slow fleet",
			flags:   slowFlags{download: time.Minute, downloadSet: true, reportEvery: defaultReportEvery, floorsSet: true},
			wantErr: "with --download-time the benchmark runs the rollout alone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := slowFleetFrom(tc.flags)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.want.download > 0, got.on())
		})
	}
}

// TestBenchSlowFlagsExit: bad slow-fleet flags end the bench command with exit code 2 and the
// reason, before anything starts.
func TestBenchSlowFlagsExit(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--download-time", "0s"}, "--download-time must be positive"},
		{[]string{"--download-time", "1m", "--report-every", "0s"}, "--report-every must be positive"},
		{[]string{"--report-every", "5s"}, "--report-every needs --download-time"},
		{[]string{"--download-time", "1m", "--floors"}, "the rollout alone"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			app := newApp()
			app.Writer, app.ErrWriter = io.Discard, io.Discard
			app.ExitErrHandler = func(*cli.Context, error) {} // keep the test process alive
			args := append([]string{"devstack", "bench", "--data-dir", t.TempDir()}, tc.args...)
			err := app.Run(args)
			var exit cli.ExitCoder
			require.True(t, errors.As(err, &exit), "error %v is no exit code", err)
			assert.Equal(t, 2, exit.ExitCode())
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestSlowFleetDevices(t *testing.T) {
	fast := slowFleet{}
	assert.Nil(t, fast.devicesimArgs())
	assert.Zero(t, fast.timing())
	start, silence := fast.rolloutTimeouts()
	assert.Equal(t, rawRetry, start, "a fast fleet's rollout waits as the floors do")
	assert.Zero(t, silence, "a fast fleet's rollout keeps the default silence timeout")

	slow := slowFleet{download: 5 * time.Minute, reportEvery: 10 * time.Second}
	assert.Equal(t, []string{"--download-time", "5m0s", "--report-interval", "10s"}, slow.devicesimArgs())
	tm := slow.timing()
	assert.Equal(t, 5*time.Minute, tm.DownloadTime)
	assert.Equal(t, 10*time.Second, tm.ReportInterval)
	start, silence = slow.rolloutTimeouts()
	assert.Equal(t, rawRetry+3*time.Second, start, "the first report comes once 1% of the download is in")
	assert.Equal(t, ota.DefaultSilenceTimeout, silence)
	assert.Greater(t, silence, slow.reportEvery+bridge.DefaultProgressInterval, "the longest silence between two signals")

	// A device reporting every 4 minutes is silent longer than the default allows.
	_, silence = slowFleet{download: 9 * time.Minute, reportEvery: 4 * time.Minute}.rolloutTimeouts()
	assert.Equal(t, 2*(4*time.Minute+bridge.DefaultProgressInterval), silence)
}

func signalEvent(name string) *historypb.HistoryEvent {
	return &historypb.HistoryEvent{EventType: signaled, Attributes: &historypb.HistoryEvent_WorkflowExecutionSignaledEventAttributes{
		WorkflowExecutionSignaledEventAttributes: &historypb.WorkflowExecutionSignaledEventAttributes{SignalName: name}}}
}

func TestSignalCounts(t *testing.T) {
	h := append(events(started, scheduled, wtStarted, wtDone), signalEvent(ota.SignalProgress), signalEvent(ota.SignalProgress),
		signalEvent(ota.SignalStatus), &historypb.HistoryEvent{EventType: completed})
	assert.Equal(t, map[string]int{ota.SignalProgress: 2, ota.SignalStatus: 1}, signalCounts(h))
	assert.Empty(t, signalCounts(events(started, completed)))
}

func TestSlowFleetLines(t *testing.T) {
	f := slowFleet{download: 5 * time.Minute, reportEvery: 10 * time.Second}
	lines := f.lines(slowSample{upgrades: 4, reports: 124, avg: 17.5, max: 19,
		signals: map[string]int{ota.SignalProgress: 22, ota.SignalStatus: 4, "cancel": 2}})
	text := strings.Join(lines, "\n")
	field := func(prefix string) string {
		for _, l := range lines {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(l), prefix); ok {
				return strings.Join(strings.Fields(rest), " ")
			}
		}
		t.Fatalf("no line %q in\n%s", prefix, text)
		return ""
	}
	assert.Contains(t, lines[0], "every download takes 5m0s, progress reported every 10s")
	assert.Equal(t, "17.5 avg, 19 max: within the bound of 20", field("history events per upgrade"))
	assert.Equal(t, "31.0 stored by the bridge", field("progress reports per upgrade"))
	assert.Equal(t, "7.0 reached the workflow: 5.5 progress, 1.0 status, 0.5 other", field("signals per upgrade"))
	assert.Contains(t, text, "the 4 successful upgrades of the sample")

	over := f.lines(slowSample{upgrades: 1, avg: 21, max: 23, signals: map[string]int{}})
	assert.Contains(t, strings.Join(over, "\n"), "23 max: ABOVE the bound of 20")
	// Nothing sampled divides by nothing.
	for _, l := range f.lines(slowSample{signals: map[string]int{}}) {
		assert.NotContains(t, l, "NaN")
	}
}
