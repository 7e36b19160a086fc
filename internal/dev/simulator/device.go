package simulator

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/otaflow/otaflow/internal/pkgsig"
	"github.com/otaflow/otaflow/internal/protocol"
)

// Where in a download the download-fail and silent faults strike, in percent.
const (
	failAtPercent    = 30
	dropOffAtPercent = 40
	silentAtPercent  = 50
)

// downloadBufferSize is the size of one read of a download; it also sets how finely a small
// package's progress can be reported.
const downloadBufferSize = 16 * 1024

// commandQueue is how many accepted commands a busy device holds before dropping new ones.
const commandQueue = 8

var bufferPool = sync.Pool{New: func() any { b := make([]byte, downloadBufferSize); return &b }}

// errSilent ends a download whose device goes silent: nothing more is reported.
var errSilent = errors.New("device went silent")

// errCanceled is the cause with which a cancel message ends the work on a command.
var errCanceled = errors.New("canceled by the cloud")

// tamperMask is what the tamper fault XORs every downloaded byte with.
const tamperMask = 0x5a

// device is one simulated device. Its goroutine (run) works on one command at a time; paho's
// goroutines hand it commands through cmds.
type device struct {
	f      *Fleet
	id     string
	secret string
	faults deviceFaults
	cmds   chan *protocol.UpgradeCommand

	mu        sync.Mutex
	client    paho.Client
	connected bool
	booted    bool
	status    protocol.Status
	seen      map[string]struct{}
	received  []string
	working   string
	// canceled holds the command IDs cancel messages named, heard before or while the
	// device worked on them (a cancel may overtake its command: they travel on two topics).
	canceled map[string]struct{}
	// stopWork ends the download of the command being worked on; installing is set once its
	// install has begun, when a cancel no longer stops it. Both change under mu with working.
	stopWork   context.CancelCauseFunc
	installing bool
	attempts   int
	upgrades   int
	installs   int
	cancels    int
	acked      int // progress reports the broker acknowledged
	failures   int
	drops      int
	ignored    int
	lastCode   int
	lastDesc   string
}

func newDevice(f *Fleet, id string) *device {
	return &device{
		f:      f,
		id:     id,
		faults: f.cfg.Faults.forDevice(id),
		cmds:   make(chan *protocol.UpgradeCommand, commandQueue),
		status: f.versions.status(id, f.cfg.Initial),
	}
}

// run boots the device and works on commands until ctx is done.
func (d *device) run(ctx context.Context) {
	defer d.disconnect()
	if !d.boot(ctx) {
		return
	}
	var offline <-chan time.Time
	if d.faults.any(faultOffline) {
		t := time.NewTimer(d.f.cfg.Timing.OfflineAfter)
		defer t.Stop()
		offline = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-offline:
			offline = nil
			d.f.log.Debug("going offline", "device", d.id, "for", d.f.cfg.Timing.OfflineFor)
			d.disconnect()
			if !sleep(ctx, d.f.cfg.Timing.OfflineFor) || !d.boot(ctx) {
				return
			}
		case cmd := <-d.cmds:
			if !d.work(ctx, cmd) {
				return
			}
		}
	}
}

// boot connects with a new client (as a device does after power-on), renews the command
// subscription and reports the status. It retries until connected and returns false when
// ctx ends first.
func (d *device) boot(ctx context.Context) bool { return d.connect(ctx, true) }

// dropOff loses the network for Timing.OfflineFor and reconnects, without a boot. It returns
// false when ctx ends first.
func (d *device) dropOff(ctx context.Context) bool {
	d.f.log.Debug("network lost mid-download", "device", d.id, "for", d.f.cfg.Timing.OfflineFor)
	d.disconnect()
	d.mu.Lock()
	d.drops++
	d.mu.Unlock()
	return sleep(ctx, d.f.cfg.Timing.OfflineFor) && d.connect(ctx, false)
}

// connect connects with a new client and renews the subscriptions; after a boot it also
// reports the status. It retries until connected and returns false when ctx ends first.
func (d *device) connect(ctx context.Context, boot bool) bool {
	t := d.f.cfg.Timing
	ready := make(chan struct{})
	var readyOnce sync.Once
	opts := paho.NewClientOptions().AddBroker(d.f.broker).
		SetClientID(d.id).SetUsername(d.id).SetPassword(d.secret).
		SetCleanSession(false).
		SetAutoReconnect(true).SetConnectRetry(false).
		SetConnectTimeout(t.ConnectTimeout).SetMaxReconnectInterval(t.MaxReconnectInterval).
		SetKeepAlive(t.KeepAlive).SetPingTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second).
		// Commands queued in the persistent session may arrive before the subscription is
		// renewed; the default handler takes them.
		SetDefaultPublishHandler(d.onMessage).
		SetOnConnectHandler(func(c paho.Client) {
			d.onConnect(ctx, c)
			readyOnce.Do(func() { close(ready) })
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			d.f.log.Debug("connection lost", "device", d.id, "error", err)
			d.setConnected(false)
		})

	attempt := 0
	c, err := backoff.Retry(ctx, func() (paho.Client, error) {
		attempt++
		c := paho.NewClient(opts)
		tok := c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			c.Disconnect(0)
			return nil, backoff.Permanent(ctx.Err())
		}
		if err := tok.Error(); err != nil {
			// Refused credentials are worth a warning; the rest (broker down or busy) shows
			// in the fleet's connected count.
			level := d.f.log.Debug
			if attempt == 1 && (errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised)) {
				level = d.f.log.Warn
			}
			level("cannot connect; retrying", "device", d.id, "attempt", attempt, "error", err)
			return nil, err
		}
		return c, nil
	},
		// Jitter (waits of 0.5 to 1.5 times the interval) spreads the reconnections of a fleet
		// that lost its broker.
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 500 * time.Millisecond, RandomizationFactor: 0.5,
			Multiplier: 2, MaxInterval: t.MaxReconnectInterval}),
		backoff.WithMaxElapsedTime(0))
	if err != nil { // only ctx ends Retry
		return false
	}
	d.mu.Lock()
	d.client = c
	d.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		return false
	}
	if boot {
		d.mu.Lock()
		c := d.client
		d.mu.Unlock()
		d.reportBoot(ctx, c)
	}
	return true
}

// onConnect renews the subscriptions at every connection: the command topic and, for a
// protocol 1.1 device, the cancel topic.
func (d *device) onConnect(ctx context.Context, c paho.Client) {
	commands, cancels := protocol.CommandTopic(d.id), protocol.CancelTopic(d.id)
	filters := map[string]byte{commands: 1}
	if !d.f.v1 {
		filters[cancels] = 1
	}
	// mochi refuses a SUBSCRIBE whose packet ID is in use by a message it is redelivering
	// from the session (code 0x91); the session still holds the subscription then, but try
	// again so that the renewal is certain. A subscription never confirmed (a busy broker,
	// a lost connection) is tried again too: without it the device would never hear a command.
	for try := 1; ; try++ {
		tok := c.SubscribeMultiple(filters, d.onMessage)
		if !d.wait(ctx, tok, "subscribe") {
			if ctx.Err() != nil || !c.IsConnectionOpen() {
				return // a new connection subscribes again
			}
			d.f.log.Warn("command subscription not confirmed; subscribing again", "device", d.id, "try", try)
			continue
		}
		result := tok.(*paho.SubscribeToken).Result()
		if code := result[commands]; code > 2 {
			if try == 3 {
				d.f.log.Warn("command subscription refused", "device", d.id, "code", code)
				break
			}
			if !sleep(ctx, time.Duration(try)*100*time.Millisecond) {
				return
			}
			continue
		}
		// A broker whose access rule predates PROTOCOL.md 1.1 refuses the cancel topic; the
		// device works on, without hearing cancels.
		if code, ok := result[cancels]; ok && code > 2 && d.f.cancelRefused.CompareAndSwap(false, true) {
			d.f.log.Warn("the broker refused a cancel subscription: its access rule predates PROTOCOL.md 1.1, and cancels will not reach the devices",
				"device", d.id, "code", code)
		}
		break
	}
	d.setConnected(true)
	d.f.log.Debug("connected", "device", d.id)
}

// reportBoot publishes the status a device reports at every boot. It runs once the connect
// has completed: paho's resume of a persistent session marks the stored publishes as
// duplicates while its writer may be sending them, so nothing is published from the
// on-connect handler (a reconnect is no boot, and reports nothing).
func (d *device) reportBoot(ctx context.Context, c paho.Client) {
	d.mu.Lock()
	status := maps.Clone(d.status)
	d.mu.Unlock()
	d.publishOn(ctx, c, protocol.StatusTopic(d.id), status)
	d.mu.Lock()
	first := !d.booted
	d.booted = true
	d.mu.Unlock()
	if first {
		d.f.booted()
	}
	d.f.log.Debug("booted", "device", d.id, "status", status)
}

func (d *device) setConnected(on bool) {
	d.mu.Lock()
	d.connected = on
	d.mu.Unlock()
}

// disconnect ends the current connection cleanly; the persistent session stays on the broker.
func (d *device) disconnect() {
	d.mu.Lock()
	c := d.client
	d.client = nil
	d.mu.Unlock()
	if c != nil {
		c.Disconnect(250)
	}
	// Not connected once the connection is closed: until then a message may still arrive.
	d.mu.Lock()
	d.connected = false
	d.mu.Unlock()
}

// onMessage takes a message from paho: an upgrade command or, for a protocol 1.1 device, a
// cancel.
func (d *device) onMessage(_ paho.Client, m paho.Message) {
	switch m.Topic() {
	case protocol.CommandTopic(d.id):
		d.onCommand(m.Payload())
	case protocol.CancelTopic(d.id):
		if !d.f.v1 {
			d.onCancel(m.Payload())
			return
		}
		fallthrough // a version 1 device does not know the topic
	default:
		d.f.log.Warn("message on an unexpected topic", "device", d.id, "topic", m.Topic())
	}
}

// onCancel records a cancel and stops the download of the command it names, unless that
// command's install has begun: then the install finishes and the status report tells.
func (d *device) onCancel(payload []byte) {
	c, err := protocol.ParseCancel(payload)
	if err != nil {
		d.f.log.Warn("invalid cancel ignored", "device", d.id, "error", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.canceled == nil {
		d.canceled = make(map[string]struct{})
	}
	d.canceled[c.ID] = struct{}{}
	switch {
	case d.working != c.ID:
		d.f.log.Debug("cancel recorded for a command not being worked on", "device", d.id, "command", c.ID)
	case d.installing:
		d.f.log.Debug("cancel too late: installing", "device", d.id, "command", c.ID)
	default:
		d.f.log.Debug("cancel: abandoning the download", "device", d.id, "command", c.ID)
		d.stopWork(errCanceled)
	}
}

// onCommand ignores invalid, expired and repeated commands and queues the others for the
// device's goroutine.
func (d *device) onCommand(payload []byte) {
	cmd, err := protocol.ParseCommand(payload)
	d.mu.Lock()
	if err != nil {
		d.ignored++
		d.mu.Unlock()
		d.f.log.Warn("invalid command ignored", "device", d.id, "error", err)
		return
	}
	if d.f.v1 {
		// A version 1 device does not know the 1.1 fields.
		cmd.SHA256, cmd.Sig, cmd.KeyID = "", "", ""
	}
	d.received = append(d.received, cmd.ID)
	_, repeated := d.seen[cmd.ID]
	expired := isExpired(cmd)
	if repeated || expired {
		d.ignored++
		d.mu.Unlock()
		d.f.log.Debug("command ignored", "device", d.id, "command", cmd.ID, "repeated", repeated, "expired", expired)
		return
	}
	if d.seen == nil {
		d.seen = make(map[string]struct{})
	}
	d.seen[cmd.ID] = struct{}{}
	d.mu.Unlock()
	select {
	case d.cmds <- &cmd:
	default:
		d.mu.Lock()
		d.ignored++
		d.mu.Unlock()
		d.f.log.Warn("device busy, command dropped", "device", d.id, "command", cmd.ID)
	}
}

func isExpired(cmd protocol.UpgradeCommand) bool {
	return !cmd.ExpiresAt.IsZero() && time.Now().After(cmd.ExpiresAt)
}

// work carries out one upgrade command. It returns false when ctx ended it.
func (d *device) work(ctx context.Context, cmd *protocol.UpgradeCommand) bool {
	if isExpired(*cmd) { // it waited in the queue behind another upgrade
		d.mu.Lock()
		d.ignored++
		d.mu.Unlock()
		d.f.log.Debug("command expired while queued", "device", d.id, "command", cmd.ID)
		return true
	}
	d.mu.Lock()
	installed := d.status[protocol.VersionKey(cmd.Type)] == cmd.Version
	status := maps.Clone(d.status)
	d.mu.Unlock()
	if installed {
		// The device already runs the version: its status report says so, and it does not
		// install it again. That happens when the report of a finished install was lost (a
		// broker restart) and the upgrade sent the command again after its install timeout.
		d.f.log.Debug("command for the installed version; reporting status", "device", d.id, "command", cmd.ID)
		d.publish(ctx, protocol.StatusTopic(d.id), status)
		return true
	}
	d.mu.Lock()
	_, canceled := d.canceled[cmd.ID]
	if canceled { // the cancel came before the device got to the command
		d.mu.Unlock()
		d.reportCanceled(ctx, cmd)
		return true
	}
	d.attempts++
	attempt := d.attempts
	workCtx, stop := context.WithCancelCause(ctx)
	d.working, d.stopWork, d.installing = cmd.ID, stop, false
	d.mu.Unlock()
	defer func() {
		stop(nil)
		d.mu.Lock()
		d.working, d.stopWork, d.installing = "", nil, false
		d.mu.Unlock()
	}()
	log := d.f.log.With("device", d.id, "command", cmd.ID, "attempt", attempt)
	log.Debug("upgrade started", "type", cmd.Type, "version", cmd.Version, "url", cmd.URL)

	// The signature covers what the command says (type, version, size, sha256): check it
	// before spending the download.
	if err := d.checkSignature(cmd); err != nil {
		d.fail(ctx, cmd, protocol.CodeMD5Mismatch, err.Error())
		return true
	}
	got, err := d.download(ctx, workCtx, cmd, attempt)
	switch {
	case ctx.Err() != nil:
		return false
	case errors.Is(context.Cause(workCtx), errCanceled):
		d.reportCanceled(ctx, cmd)
		return true
	case errors.Is(err, errSilent):
		log.Debug("went silent during the download")
		return true
	case err != nil:
		d.fail(ctx, cmd, protocol.CodeDownloadFailed, "download failed: "+err.Error())
		return true
	}
	if err := d.verify(cmd, got); err != nil {
		d.fail(ctx, cmd, protocol.CodeMD5Mismatch, err.Error())
		return true
	}
	if d.faults.strikes(faultNoReport, attempt) {
		log.Debug("downloaded; never reporting the new version")
		return true
	}

	// From here on the install runs to its end: a cancel that came before this point stops
	// it, one that comes after does not.
	d.mu.Lock()
	canceled = errors.Is(context.Cause(workCtx), errCanceled)
	if !canceled {
		d.installing = true
		d.installs++
	}
	d.mu.Unlock()
	if canceled {
		d.reportCanceled(ctx, cmd)
		return true
	}
	if !sleep(ctx, d.f.cfg.Timing.InstallDelay) {
		return false
	}
	if d.faults.strikes(faultInstallFail, attempt) {
		d.fail(ctx, cmd, protocol.CodeInstallFailed, "install failed: flash write error (simulated)")
		return true
	}
	keepOld := d.faults.strikes(faultOldVersion, attempt)

	// Reboot onto the new version (or, with the old-version fault, back onto the old one).
	log.Debug("installed; rebooting")
	d.disconnect()
	if !sleep(ctx, d.f.cfg.Timing.RebootDelay) {
		return false
	}
	d.mu.Lock()
	if !keepOld {
		d.status[protocol.VersionKey(cmd.Type)] = cmd.Version
		d.upgrades++
	}
	d.lastCode, d.lastDesc = 0, ""
	d.mu.Unlock()
	if !keepOld {
		d.f.versions.installed(d.id, protocol.VersionKey(cmd.Type), cmd.Version)
	}
	return d.boot(ctx)
}

// downloaded is what a download received: its length and hashes.
type downloaded struct {
	size        int64
	md5, sha256 string
}

// checkSignature applies the fleet's signature policy to what the command says (PROTOCOL.md
// 1.1): a device with trusted keys verifies a signature, and refuses an unsigned package if
// it requires signatures. A version 1 device, or one without keys, checks nothing.
func (d *device) checkSignature(cmd *protocol.UpgradeCommand) error {
	if d.f.v1 || (d.f.policy.Keys == nil && !d.f.policy.RequireSignature) {
		return nil
	}
	return d.f.policy.Check(pkgsig.PackageOf(*cmd), cmd.Sig, cmd.KeyID)
}

// verify checks the download against the command: its size, its sha256 when the command has
// one (a version 1 device's commands have none), and its md5.
func (d *device) verify(cmd *protocol.UpgradeCommand, got downloaded) error {
	if got.size != cmd.Size {
		return fmt.Errorf("size mismatch: downloaded %d bytes, expected %d", got.size, cmd.Size)
	}
	if cmd.SHA256 != "" {
		if err := pkgsig.CheckSHA256(cmd.SHA256, got.sha256); err != nil {
			return err
		}
	}
	if got.md5 != cmd.MD5 {
		return fmt.Errorf("md5 mismatch: package is %s, expected %s", got.md5, cmd.MD5)
	}
	return nil
}

// fail reports an error code.
func (d *device) fail(ctx context.Context, cmd *protocol.UpgradeCommand, code int, desc string) {
	desc = protocol.Truncate(desc, protocol.MaxDescLength)
	d.f.log.Debug("upgrade failed", "device", d.id, "command", cmd.ID, "code", code, "desc", desc)
	d.mu.Lock()
	d.failures++
	d.lastCode, d.lastDesc = code, desc
	d.mu.Unlock()
	d.report(ctx, cmd, code, desc)
}

// reportCanceled confirms a cancel: the device stopped before installing.
func (d *device) reportCanceled(ctx context.Context, cmd *protocol.UpgradeCommand) {
	d.f.log.Debug("upgrade canceled before its install", "device", d.id, "command", cmd.ID)
	d.mu.Lock()
	d.cancels++
	d.lastCode, d.lastDesc = protocol.CodeOther, protocol.DescCanceled
	d.mu.Unlock()
	d.report(ctx, cmd, protocol.CodeOther, protocol.DescCanceled)
}

// report publishes a progress report for cmd.
func (d *device) report(ctx context.Context, cmd *protocol.UpgradeCommand, progress int, desc string) {
	d.publish(ctx, protocol.ProgressTopic(d.id), protocol.Progress{
		ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: progress, Desc: protocol.Truncate(desc, protocol.MaxDescLength),
	})
}

// download streams the package, hashing and reporting progress as it goes, and returns the
// length and hashes of what it received. It reads at most one byte more than cmd.Size. It
// runs until workCtx ends (a cancel); a drop-off reconnects under runCtx, the device's life.
func (d *device) download(runCtx, workCtx context.Context, cmd *protocol.UpgradeCommand, attempt int) (downloaded, error) {
	// A real device gives a stalled download up (and reports -1) rather than hang on it.
	ctx, cancel := context.WithTimeout(workCtx, d.f.cfg.Timing.DownloadTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cmd.URL, nil)
	if err != nil {
		return downloaded{}, err
	}
	resp, err := d.f.http.Do(req)
	if err != nil {
		return downloaded{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return downloaded{}, fmt.Errorf("HTTP %s", resp.Status)
	}

	t := d.f.cfg.Timing
	slow := d.faults.strikes(faultSlow, attempt)
	corrupt := d.faults.strikes(faultCorrupt, attempt)
	failing := d.faults.strikes(faultDownloadFail, attempt)
	silent := d.faults.strikes(faultSilent, attempt)
	dropOff := d.faults.strikes(faultDropOff, attempt)
	tamper := d.faults.strikes(faultTamper, attempt)

	bp := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(bp)
	buf := *bp
	if slow {
		buf = buf[:max(1, min(int64(len(buf)), t.SlowRate/10))]
	}
	if t.DownloadTime > 0 {
		// About one percent a read, so that progress moves evenly over the download time.
		buf = buf[:max(1, min(int64(len(buf)), cmd.Size/100))]
	}
	body := io.LimitReader(resp.Body, cmd.Size+1)
	h, sh := md5.New(), sha256.New()
	corruptAt := cmd.Size / 2
	var n int64
	lastPct := 0
	var lastAt time.Time
	start := time.Now()
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			data := buf[:m]
			if corrupt && corruptAt >= n && corruptAt < n+int64(m) {
				data[corruptAt-n] ^= 0xff
			}
			h.Write(data)
			if tamper {
				// The attacker's bytes; md5 was fed the genuine ones, as a collision would
				// make it match.
				for i := range data {
					data[i] ^= tamperMask
				}
			}
			sh.Write(data)
			n += int64(m)
			// A slow download (the slow fault, or a fleet's download time) has these bytes
			// arrive when their share of the time is due.
			if due := d.downloadDue(start, n, cmd.Size, slow); due.After(start) {
				if !sleep(ctx, time.Until(due)) {
					return downloaded{size: n}, ctx.Err()
				}
			}
			pct := int(min(n, cmd.Size) * 100 / cmd.Size)
			if silent && pct >= silentAtPercent {
				return downloaded{size: n}, errSilent
			}
			if failing && pct >= failAtPercent {
				return downloaded{size: n}, errors.New("connection reset by peer (simulated)")
			}
			if dropOff && pct >= dropOffAtPercent {
				dropOff = false
				if !d.dropOff(runCtx) {
					return downloaded{size: n}, runCtx.Err()
				}
			}
			if pct >= 1 && pct != lastPct && (pct == 100 || time.Since(lastAt) >= t.ReportInterval) {
				// The desc says what the report means: the last one, that the download is done.
				desc := "downloading"
				if pct == 100 {
					desc = "downloaded"
				}
				d.report(ctx, cmd, pct, desc)
				lastPct, lastAt = pct, time.Now()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return downloaded{size: n}, rerr
		}
	}
	return downloaded{size: n, md5: hex.EncodeToString(h.Sum(nil)), sha256: hex.EncodeToString(sh.Sum(nil))}, nil
}

// downloadDue is when the first n of size bytes of a download begun at start are due: with the
// slow fault at Timing.SlowRate, with a download time their share of it, whichever is later;
// start itself when neither paces the download.
func (d *device) downloadDue(start time.Time, n, size int64, slow bool) time.Time {
	t := d.f.cfg.Timing
	due := start
	if slow {
		due = start.Add(time.Duration(float64(n) / float64(t.SlowRate) * float64(time.Second)))
	}
	if t.DownloadTime > 0 && size > 0 {
		due = maxTime(due, start.Add(time.Duration(float64(min(n, size))/float64(size)*float64(t.DownloadTime))))
	}
	return due
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// publish sends v as JSON at QoS 1 on the current connection and waits for the broker's
// acknowledgement (paho holds it across a reconnection) up to Timing.PublishTimeout.
func (d *device) publish(ctx context.Context, topic string, v any) {
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	if c == nil {
		d.f.log.Debug("not connected; report lost", "device", d.id, "topic", topic)
		return
	}
	d.publishOn(ctx, c, topic, v)
}

func (d *device) publishOn(ctx context.Context, c paho.Client, topic string, v any) {
	payload, err := json.Marshal(v)
	if err != nil { // protocol types always marshal
		d.f.log.Error("encode report", "device", d.id, "error", err)
		return
	}
	if d.wait(ctx, c.Publish(topic, 1, false, payload), "publish to "+topic) && topic == protocol.ProgressTopic(d.id) {
		d.mu.Lock()
		d.acked++
		d.mu.Unlock()
	}
}

// wait waits for a paho token; it reports whether the operation succeeded.
func (d *device) wait(ctx context.Context, tok paho.Token, what string) bool {
	timer := time.NewTimer(d.f.cfg.Timing.PublishTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			d.f.log.Debug(what+" failed", "device", d.id, "error", err)
			return false
		}
		return true
	case <-timer.C:
		d.f.log.Debug(what+" not acknowledged in time", "device", d.id)
	case <-ctx.Done():
	}
	return false
}

// state copies the device's observable state.
func (d *device) state() DeviceState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return DeviceState{
		ID:            d.id,
		Connected:     d.connected,
		Booted:        d.booted,
		Status:        maps.Clone(d.status),
		Received:      slices.Clone(d.received),
		Working:       d.working,
		Attempts:      d.attempts,
		Upgrades:      d.upgrades,
		Failures:      d.failures,
		Drops:         d.drops,
		Ignored:       d.ignored,
		Installs:      d.installs,
		Canceled:      d.cancels,
		ProgressAcked: d.acked,
		LastCode:      d.lastCode,
		LastDesc:      d.lastDesc,
	}
}

func (d *device) addStats(s *Stats) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.connected {
		s.Connected++
	}
	if d.booted {
		s.Booted++
	}
	if d.working != "" {
		s.Upgrading++
	}
	if d.upgrades > 0 {
		s.Upgraded++
	}
	switch {
	case d.lastCode == protocol.CodeOther && d.lastDesc == protocol.DescCanceled:
		s.Canceled++
	case d.lastCode < 0:
		s.Failed++
	}
	s.Commands += len(d.received)
	s.Ignored += d.ignored
}

// sleep waits for d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
