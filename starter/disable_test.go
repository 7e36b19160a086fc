package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"

	"github.com/otaflow/otaflow/internal/dev/simulator"
	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// TestDisableConnectedDeviceMidUpgrade disables a simulated device, connected to the embedded
// broker, in the middle of a download: its upgrade ends canceled with a reason naming the
// disable, the broker closes its connection and refuses its reconnections; once enabled, it
// connects again.
func TestDisableConnectedDeviceMidUpgrade(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dbURL := testenv.DatabaseURL(t)
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const dev = "dis-00001"
	logs := &testenv.Buffer{}
	sys, err := system.Start(ctx, system.Config{
		Client: testenv.TemporalClient(), Store: st, MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		PackageDir: t.TempDir(), PackageSize: 64 << 10, Devices: 1, Prefix: "dis",
		// A slow download (32 s): the device is mid-upgrade when it is disabled.
		Faults: simulator.Faults{Slow: simulator.Fault{Devices: []string{dev}}},
		Timing: simulator.Timing{ReportInterval: 20 * time.Millisecond, InstallDelay: 200 * time.Millisecond,
			RebootDelay: 100 * time.Millisecond, KeepAlive: 5 * time.Second, MaxReconnectInterval: time.Second, SlowRate: 2 << 10},
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	if err := sys.WaitReported(ctx); err != nil {
		t.Fatal(err)
	}
	endUpgrade(t, dev)
	c := testenv.TemporalClient()
	run, err := ota.StartDeviceUpgrade(ctx, c, ota.UpgradeRequest{DeviceID: dev, Type: "firmware", Version: "1.1",
		URL: sys.Package.URL, MD5: sys.Package.MD5, Size: sys.Package.Size})
	if err != nil {
		t.Fatal(err)
	}
	require.Eventually(t, func() bool {
		u, err := st.LatestUpgrade(ctx, dev)
		return err == nil && u.State == ota.StateDownloading
	}, 30*time.Second, 20*time.Millisecond, dev+" downloading")
	if d, _ := sys.Fleet.Device(dev); !d.Connected || d.Working == "" {
		t.Fatalf("%s is %+v, want connected and working on the command", dev, d)
	}

	r := runCLI(t, ctx, servers(dbURL, "devices", "disable", "--device", dev)...)
	r.check(t, 0)
	for _, want := range []string{"Device dis-00001 disabled", "Its running upgrade (workflow ota-dis-00001, run " + run.GetRunID() + ") is canceled"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("devices disable printed %q, want %q", r.stdout, want)
		}
	}

	// The upgrade ends canceled, and its history says why.
	st1, err := ota.UpgradeResult(ctx, run)
	var canceled *temporal.CanceledError
	if !errors.As(err, &canceled) || st1.State != ota.StateCanceled {
		t.Errorf("the upgrade ended %s (%v), want canceled", st1.State, err)
	}
	if u, err := st.LatestUpgrade(ctx, dev); err != nil || u.State != ota.StateCanceled {
		t.Errorf("the upgrade record = %+v (%v), want canceled", u, err)
	}
	cause := ""
	it := c.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		if a := ev.GetWorkflowExecutionCancelRequestedEventAttributes(); a != nil {
			cause = a.GetCause()
		}
	}
	if cause != "device dis-00001 was disabled (starter devices disable)" {
		t.Errorf("the cancel request's cause is %q, want it to name the disable", cause)
	}

	// The broker closed its connection, and refuses it while it tries to come back.
	require.Eventually(t, func() bool {
		d, _ := sys.Fleet.Device(dev)
		return !d.Connected
	}, 10*time.Second, 20*time.Millisecond, dev+" disconnected")
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), `msg="connection refused" component=broker client=dis-00001 username=dis-00001`) &&
			strings.Contains(logs.String(), `reason="device disabled"`)
	}, 10*time.Second, 20*time.Millisecond, "a reconnection refused")
	if d, _ := sys.Fleet.Device(dev); d.Connected {
		t.Error("the disabled device is connected again")
	}
	if info, ok := sys.Broker.Client(dev); !ok || info.Connected {
		t.Errorf("the broker holds %+v (session %v), want the session without a connection", info, ok)
	}

	// Enabled, it connects again by itself.
	r = runCLI(t, ctx, servers(dbURL, "devices", "enable", "--device", dev)...)
	r.check(t, 0)
	require.Eventually(t, func() bool {
		d, _ := sys.Fleet.Device(dev)
		return d.Connected
	}, 20*time.Second, 20*time.Millisecond, dev+" connected again")
}
