// Package simulator simulates a fleet of OTAflow devices that speak PROTOCOL.md over MQTT:
// each connects with its own credentials and a persistent session, reports its status at
// boot, and on an upgrade command really downloads the package over HTTP (streamed, hashed as
// it goes), reports progress, verifies size and md5, "installs", reboots and reports its new
// version. Devices implement PROTOCOL.md 1.1 unless configured as version 1: they check the
// package's sha256 and, with trusted keys, its signature, and they honour a cancel until they
// begin installing. Faults (failed, corrupted or tampered downloads, failed installs, devices
// that go silent, never report, come back on the old version, go offline or download slowly)
// are injected on chosen devices, deterministically. The demo, the integration tests and the
// 10,000-device benchmark all use it.
package simulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
)

// Timing sets the pace of the simulated devices. Zero fields take the DefaultTiming values;
// tests set small positive values (time.Millisecond) to run fast.
type Timing struct {
	// ReportInterval is the least time between two progress reports of a download (the
	// protocol asks for about a second). The final 100 is always reported.
	ReportInterval time.Duration
	// InstallDelay is how long installing takes after a verified download.
	InstallDelay time.Duration
	// RebootDelay is how long a device stays disconnected while it reboots.
	RebootDelay time.Duration
	// SlowRate is the download speed, in bytes per second, of a device with the slow fault.
	SlowRate int64
	// DownloadTime, when positive, makes every download of every device take that long
	// (a slow-download fleet): the bytes arrive evenly over it, about one percent at a time,
	// and progress is reported every ReportInterval as usual. Zero downloads as fast as the
	// network allows. It must be shorter than DownloadTimeout. (The slow fault's SlowRate,
	// when slower, still applies on top.)
	DownloadTime time.Duration
	// OfflineAfter is when, after its first boot, a device with the offline fault disconnects;
	// zero means right after its first boot status.
	OfflineAfter time.Duration
	// OfflineFor is how long a device with the offline fault stays offline, and one with the
	// drop-off fault without network.
	OfflineFor time.Duration
	// ConnectTimeout bounds one connection attempt; failed attempts are retried with backoff
	// up to MaxReconnectInterval.
	ConnectTimeout       time.Duration
	MaxReconnectInterval time.Duration
	// KeepAlive is the MQTT keep-alive of each device.
	KeepAlive time.Duration
	// PublishTimeout bounds the wait for the broker to acknowledge one report.
	PublishTimeout time.Duration
	// DownloadTimeout bounds one download, slow ones included; a download that takes longer
	// fails with -1.
	DownloadTimeout time.Duration
}

// DefaultTiming returns the timing of a device that follows the protocol at a realistic pace.
func DefaultTiming() Timing {
	return Timing{
		ReportInterval:       time.Second,
		InstallDelay:         2 * time.Second,
		RebootDelay:          time.Second,
		SlowRate:             64 * 1024,
		OfflineFor:           30 * time.Second,
		ConnectTimeout:       30 * time.Second,
		MaxReconnectInterval: 10 * time.Second,
		KeepAlive:            60 * time.Second,
		PublishTimeout:       30 * time.Second,
		DownloadTimeout:      10 * time.Minute,
	}
}

func (t *Timing) setDefaults() error {
	d := DefaultTiming()
	for _, f := range []struct {
		name      string
		v, dflt   *time.Duration
		zeroValid bool
	}{
		{"report interval", &t.ReportInterval, &d.ReportInterval, false},
		{"install delay", &t.InstallDelay, &d.InstallDelay, false},
		{"reboot delay", &t.RebootDelay, &d.RebootDelay, false},
		{"offline after", &t.OfflineAfter, &d.OfflineAfter, true},
		{"download time", &t.DownloadTime, &d.DownloadTime, true},
		{"offline for", &t.OfflineFor, &d.OfflineFor, false},
		{"connect timeout", &t.ConnectTimeout, &d.ConnectTimeout, false},
		{"max reconnect interval", &t.MaxReconnectInterval, &d.MaxReconnectInterval, false},
		{"keep-alive", &t.KeepAlive, &d.KeepAlive, false},
		{"publish timeout", &t.PublishTimeout, &d.PublishTimeout, false},
		{"download timeout", &t.DownloadTimeout, &d.DownloadTimeout, false},
	} {
		if *f.v < 0 {
			return fmt.Errorf("timing: %s %v is negative", f.name, *f.v)
		}
		if *f.v == 0 && !f.zeroValid {
			*f.v = *f.dflt
		}
	}
	if t.DownloadTime >= t.DownloadTimeout {
		return fmt.Errorf("timing: download time %v is not shorter than the download timeout %v", t.DownloadTime, t.DownloadTimeout)
	}
	if t.KeepAlive < time.Second {
		return fmt.Errorf("timing: keep-alive %v is shorter than a second", t.KeepAlive)
	}
	if t.SlowRate < 0 {
		return fmt.Errorf("timing: slow rate %d is negative", t.SlowRate)
	}
	if t.SlowRate == 0 {
		t.SlowRate = d.SlowRate
	}
	return nil
}

// Protocol versions a simulated device can implement.
const (
	// ProtocolV1 devices know neither sha256, sig and key_id nor the cancel topic.
	ProtocolV1 = "1"
	// ProtocolV1_1 devices check sha256 when a command has it, verify signatures with their
	// trusted keys and honour cancels. It is the default.
	ProtocolV1_1 = "1.1"
)

// Config describes a simulated fleet.
type Config struct {
	// Protocol is the version of PROTOCOL.md the devices implement: ProtocolV1_1 (the default
	// when empty) or ProtocolV1.
	Protocol string
	// TrustedKeys are the public keys with which the devices verify signatures, before they
	// download; nil means they verify none (PROTOCOL.md 1.1: a device that holds trusted keys
	// verifies). Protocol 1 devices hold none.
	TrustedKeys *pkgsig.TrustedKeys
	// RequireSignatures makes the devices refuse an unsigned package (-2 "missing
	// signature"); it needs TrustedKeys.
	RequireSignatures bool
	// BrokerURL is the MQTT broker, tcp://host:port (ssl://, ws:// and wss:// also work).
	// User information in the URL is ignored: each device uses its own credentials.
	BrokerURL string
	// DeviceIDs lists the devices; or, when it is empty, Count devices named Prefix-00001,
	// Prefix-00002... (at least five digits).
	DeviceIDs []string
	Prefix    string
	Count     int
	// Initial is the status every device reports until it upgrades, e.g. {"firmware_ver": "1.0"}.
	Initial protocol.Status
	// StateDir, when set, keeps the versions the devices install in VersionsFile there, so
	// that a fleet started again on it reports them at boot (over Initial) rather than
	// Initial again, as real devices keep what they installed across a restart. "" keeps
	// them in memory only. One fleet at a time may use a state directory.
	StateDir string
	// Credentials maps each device ID to its secret. When it is nil, Registrar provides them.
	Credentials map[string]string
	Registrar   Registrar
	// HTTPClient downloads the packages; nil means a client suited to many parallel downloads.
	HTTPClient *http.Client
	Faults     Faults
	Timing     Timing
	// Logger receives the fleet's logs; per-device steps are logged at debug level. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// DeviceID returns the ID of the n-th (1-based) device of a prefix-named fleet.
func DeviceID(prefix string, n int) string { return fmt.Sprintf("%s-%05d", prefix, n) }

// DeviceState is what one simulated device has done so far, for tests and summaries.
type DeviceState struct {
	ID string
	// Connected reports whether the device is connected now; Booted whether it has connected
	// and reported its status at least once.
	Connected, Booted bool
	// Status holds the versions the device reports now.
	Status protocol.Status
	// Received lists the IDs of every upgrade command received, in order, ignored ones included.
	Received []string
	// Working is the ID of the command being worked on, "" when idle.
	Working string
	// Attempts counts the commands worked on; Upgrades the installs that ended in a reboot on
	// the new version; Failures the attempts that ended with an error code.
	Attempts, Upgrades, Failures int
	// Ignored counts commands ignored as expired, repeated or invalid.
	Ignored int
	// Drops counts the times the drop-off fault took the device's network away.
	Drops int
	// Installs counts the installs begun: after a verified download, past the point where a
	// cancel is honoured.
	Installs int
	// Canceled counts the commands a cancel stopped before their install (reported -4
	// "canceled").
	Canceled int
	// ProgressAcked counts the progress reports the broker acknowledged (QoS 1 PUBACK): those
	// OTAflow must not lose.
	ProgressAcked int
	// LastCode is the last error code reported (0 after a successful upgrade), and LastDesc
	// its desc.
	LastCode int
	LastDesc string
}

// Stats counts the fleet's devices by what they are doing.
type Stats struct {
	Devices   int
	Connected int
	Booted    int
	// Upgrading counts the devices working on a command.
	Upgrading int
	// Upgraded counts the devices that completed at least one upgrade.
	Upgraded int
	// Failed counts the devices whose last attempt ended with an error code, Canceled those
	// whose last attempt a cancel stopped.
	Failed, Canceled int
	// Commands counts the upgrade commands received, Ignored those ignored.
	Commands, Ignored int
}

// String summarises the stats on one line.
func (s Stats) String() string {
	return fmt.Sprintf("devices=%d connected=%d upgrading=%d upgraded=%d failed=%d canceled=%d commands=%d ignored=%d",
		s.Devices, s.Connected, s.Upgrading, s.Upgraded, s.Failed, s.Canceled, s.Commands, s.Ignored)
}

// Fleet is a running set of simulated devices.
type Fleet struct {
	cfg     Config
	v1      bool          // the devices implement protocol 1
	policy  pkgsig.Policy // what the devices require of a package before they download it
	broker  string
	ids     []string
	log     *slog.Logger
	http    *http.Client
	devices map[string]*device
	// versions keeps what the devices installed (Config.StateDir).
	versions *versionStore
	bootedN  atomic.Int64
	// cancelRefused is set once the broker refused a device's cancel subscription, so that
	// the fleet warns once rather than once per device.
	cancelRefused atomic.Bool
	allUp         chan struct{}
	allUpSet      sync.Once

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	// saved is closed once the versions are written after the devices stopped.
	saved chan struct{}
}

// New checks cfg and prepares a fleet; Start connects it.
func New(cfg Config) (*Fleet, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	broker, err := brokerURL(cfg.BrokerURL)
	if err != nil {
		return nil, err
	}
	ids, err := fleetIDs(cfg)
	if err != nil {
		return nil, err
	}
	set := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	if err := cfg.Faults.validate(set); err != nil {
		return nil, err
	}
	if err := cfg.Timing.setDefaults(); err != nil {
		return nil, err
	}
	if len(cfg.Initial) == 0 {
		return nil, errors.New("simulator: the initial status is empty; give at least one version, e.g. firmware_ver=1.0")
	}
	if err := cfg.Initial.Validate(); err != nil {
		return nil, fmt.Errorf("simulator: initial status: %w", err)
	}
	if cfg.Credentials == nil && cfg.Registrar == nil {
		return nil, errors.New("simulator: give Credentials or a Registrar")
	}
	policy := pkgsig.Policy{Keys: cfg.TrustedKeys, RequireSignature: cfg.RequireSignatures}
	switch cfg.Protocol {
	case "":
		cfg.Protocol = ProtocolV1_1
	case ProtocolV1_1:
	case ProtocolV1:
		if cfg.TrustedKeys != nil || cfg.RequireSignatures {
			return nil, errors.New("simulator: protocol 1 devices verify no signatures; drop the trusted keys or use protocol 1.1")
		}
	default:
		return nil, fmt.Errorf("simulator: protocol %q: want %s or %s", cfg.Protocol, ProtocolV1, ProtocolV1_1)
	}
	if err := policy.Validate(); err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	versions, err := loadVersions(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		tr.ResponseHeaderTimeout = 30 * time.Second
		hc = &http.Client{Transport: tr}
	}
	f := &Fleet{
		cfg:      cfg,
		v1:       cfg.Protocol == ProtocolV1,
		policy:   policy,
		broker:   broker,
		ids:      ids,
		log:      cfg.Logger,
		http:     hc,
		devices:  make(map[string]*device, len(ids)),
		versions: versions,
		allUp:    make(chan struct{}),
	}
	for _, id := range ids {
		f.devices[id] = newDevice(f, id)
	}
	return f, nil
}

func brokerURL(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("simulator: the broker URL is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("simulator: broker URL: %w", err)
	}
	switch u.Scheme {
	case "mqtt":
		u.Scheme = "tcp"
	case "tcp", "ssl", "tls", "ws", "wss":
	default:
		return "", fmt.Errorf("simulator: broker URL %q: scheme must be tcp, mqtt, ssl, tls, ws or wss", u.Redacted())
	}
	if u.Host == "" {
		return "", fmt.Errorf("simulator: broker URL %q has no host", u.Redacted())
	}
	u.User = nil
	return u.String(), nil
}

func fleetIDs(cfg Config) ([]string, error) {
	var ids []string
	switch {
	case len(cfg.DeviceIDs) > 0:
		if cfg.Count != 0 || cfg.Prefix != "" {
			return nil, errors.New("simulator: give either device IDs or a prefix and count, not both")
		}
		ids = slices.Clone(cfg.DeviceIDs)
	case cfg.Count > 0:
		if cfg.Prefix == "" {
			return nil, errors.New("simulator: a device count needs a prefix")
		}
		ids = make([]string, cfg.Count)
		for i := range ids {
			ids[i] = DeviceID(cfg.Prefix, i+1)
		}
	case cfg.Count < 0:
		return nil, fmt.Errorf("simulator: device count %d is negative", cfg.Count)
	default:
		return nil, errors.New("simulator: no devices: give device IDs or a prefix and a count")
	}
	seen := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		if err := protocol.ValidateDeviceID(id); err != nil {
			return nil, fmt.Errorf("simulator: %w", err)
		}
		if _, dup := seen[id]; dup {
			return nil, fmt.Errorf("simulator: device %s is listed twice", id)
		}
		seen[id] = struct{}{}
	}
	return ids, nil
}

// IDs returns the fleet's device IDs in order.
func (f *Fleet) IDs() []string { return slices.Clone(f.ids) }

// Start gets the devices' secrets (from Credentials or the Registrar) and starts every device.
// It returns once they are started, not connected (see WaitConnected). The devices run until
// Stop is called or ctx is done.
func (f *Fleet) Start(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return errors.New("simulator: fleet already started")
	}
	secrets := f.cfg.Credentials
	if secrets == nil {
		var err error
		if secrets, err = f.cfg.Registrar.Secrets(ctx, f.ids); err != nil {
			return fmt.Errorf("simulator: get device secrets: %w", err)
		}
	}
	var missing []string
	for _, id := range f.ids {
		if secrets[id] == "" {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("simulator: no secret for %d devices: %s", len(missing), abbreviate(missing, 5))
	}
	ctx, cancel := context.WithCancel(ctx)
	f.cancel = cancel
	f.started = true
	for _, id := range f.ids {
		d := f.devices[id]
		d.secret = secrets[id]
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			d.run(ctx)
		}()
	}
	// The versions are written behind the installs, and once more when the devices stopped.
	devicesDone, saved := make(chan struct{}), make(chan struct{})
	f.saved = saved
	go func() {
		defer close(saved)
		f.versions.run(devicesDone, f.log.Warn)
	}()
	go func() {
		<-ctx.Done()
		f.wg.Wait()
		close(devicesDone)
	}()
	f.log.Info("fleet started", "devices", len(f.ids), "broker", f.broker, "protocol", f.cfg.Protocol,
		"trusted_keys", f.policy.Keys.Len(), "require_signatures", f.policy.RequireSignature)
	return nil
}

// Stop disconnects every device and waits for them to end, and for the versions they
// installed to be kept (Config.StateDir). It may be called more than once.
func (f *Fleet) Stop() {
	f.mu.Lock()
	cancel, saved := f.cancel, f.saved
	f.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	f.wg.Wait()
	<-saved
}

// WaitConnected waits until every device has connected and reported its status at least once.
func (f *Fleet) WaitConnected(ctx context.Context) error {
	select {
	case <-f.allUp:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("simulator: %d of %d devices connected: %w", f.bootedN.Load(), len(f.ids), ctx.Err())
	}
}

// booted records a device's first boot.
func (f *Fleet) booted() {
	if f.bootedN.Add(1) == int64(len(f.ids)) {
		f.allUpSet.Do(func() { close(f.allUp) })
	}
}

// Device returns the state of one device.
func (f *Fleet) Device(id string) (DeviceState, bool) {
	d, ok := f.devices[id]
	if !ok {
		return DeviceState{}, false
	}
	return d.state(), true
}

// Stats counts the devices by what they are doing.
func (f *Fleet) Stats() Stats {
	s := Stats{Devices: len(f.ids)}
	for _, id := range f.ids {
		f.devices[id].addStats(&s)
	}
	return s
}

func abbreviate(ids []string, n int) string {
	if len(ids) <= n {
		return fmt.Sprint(ids)
	}
	return fmt.Sprintf("%v and %d more", ids[:n], len(ids)-n)
}
