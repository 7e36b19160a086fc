package localstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	mosquittoconf "github.com/otaflow/otaflow/deploy/mosquitto"
)

// ErrNoMosquitto is wrapped by the error StartMosquitto returns when Mosquitto, its
// dynamic-security plugin or mosquitto_ctrl is missing.
var ErrNoMosquitto = errors.New("Mosquitto is not installed: install it (apt-get install -y mosquitto)")

// DefaultMosquittoAdmin is the username of the broker administrator start.sh creates unless
// MosquittoOptions.AdminUser says otherwise.
const DefaultMosquittoAdmin = "otaflow-admin"

// mosquittoUser is the user Mosquitto runs as when started by root, as in its image.
const mosquittoUser = "mosquitto"

// MosquittoOptions configures a local Mosquitto broker run from deploy/mosquitto's files.
type MosquittoOptions struct {
	// Dir keeps the broker's state: its sessions (mosquitto.db) and the dynamic-security
	// plugin's accounts (dynamic-security.json). A broker started again on the same Dir keeps
	// both. The configuration files are copied into Dir/config at every start.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// AdminUser and AdminPassword are the broker administrator created on the first start on
	// Dir (AdminUser "" means DefaultMosquittoAdmin). A later start keeps the administrator of
	// the first one, and needs the same credentials to confirm the broker is up.
	AdminUser, AdminPassword string
	// Log receives the broker's output; nil discards it (its last lines still appear in
	// startup errors).
	Log io.Writer
	// StartTimeout bounds the wait for the broker to accept the administrator; 0 means 30
	// seconds.
	StartTimeout time.Duration
	// Overrides gives options of mosquitto.conf other values, for tests that need one (a
	// small queue limit, say); each must be an option the file sets once. Never set for the
	// topology itself, which runs the file as it is.
	Overrides map[string]string
}

// Mosquitto is a running Mosquitto broker started by StartMosquitto.
type Mosquitto struct {
	proc      *process
	overrides map[string]string
	dir       string
	port      int
	admin     string
	password  string
	stopOnce  sync.Once
	stopErr   error
}

// StartMosquitto starts Mosquitto natively from deploy/mosquitto's configuration files
// (mosquittoconf.Files): the same mosquitto.conf, acl and start.sh the compose file mounts,
// with only the listener (opts.Port on 127.0.0.1) and the paths substituted. It waits until the
// administrator can log in.
//
// As root it runs the broker as the mosquitto user (the Debian package creates it), giving
// Dir to that user. On Linux the broker gets SIGTERM if the calling process dies without
// stopping it.
func StartMosquitto(ctx context.Context, opts MosquittoOptions) (*Mosquitto, error) {
	if opts.Dir == "" {
		return nil, errors.New("Mosquitto state directory not set")
	}
	if opts.AdminPassword == "" {
		return nil, errors.New("Mosquitto administrator password not set")
	}
	if opts.AdminUser == "" {
		opts.AdminUser = DefaultMosquittoAdmin
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("Mosquitto state directory %s: %w", opts.Dir, err)
	}
	bin, err := findMosquitto()
	if err != nil {
		return nil, err
	}
	port, err := pickPort(opts.Port, "MQTT", "--mqtt-port")
	if err != nil {
		return nil, err
	}
	var as *runAs
	if os.Geteuid() == 0 {
		if as, err = lookupRunAs(mosquittoUser, "Mosquitto", "the mosquitto package creates it"); err != nil {
			return nil, err
		}
	}
	if err := prepareOwnedDir(dir, as, "Mosquitto state directory"); err != nil {
		return nil, err
	}
	confPath, err := writeMosquittoConfig(dir, port, bin.plugin, opts.Overrides)
	if err != nil {
		return nil, err
	}

	cmd := exec.Command("/bin/sh", filepath.Join(dir, "config", mosquittoconf.StartFile))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"MOSQUITTO_CONF="+confPath,
		"OTAFLOW_MQTT_ADMIN_USER="+opts.AdminUser,
		"OTAFLOW_MQTT_ADMIN_PASSWORD="+opts.AdminPassword,
		// start.sh runs mosquitto and mosquitto_ctrl from PATH.
		"PATH="+bin.dir+string(os.PathListSeparator)+filepath.Dir(bin.ctrl)+string(os.PathListSeparator)+os.Getenv("PATH"),
	)
	proc, err := startProcess("Mosquitto", cmd, opts.Log, syscall.SIGTERM, as)
	if err != nil {
		return nil, err
	}
	m := &Mosquitto{proc: proc, dir: dir, port: port, admin: opts.AdminUser, password: opts.AdminPassword, overrides: opts.Overrides}
	if err := m.waitReady(ctx, opts.StartTimeout); err != nil {
		_ = m.Kill()
		return nil, err
	}
	return m, nil
}

// mosquittoBinaries are the programs StartMosquitto needs.
type mosquittoBinaries struct {
	dir    string // holds mosquitto
	ctrl   string // mosquitto_ctrl
	plugin string // mosquitto_dynamic_security.so
}

func findMosquitto() (mosquittoBinaries, error) {
	var b mosquittoBinaries
	if p, err := exec.LookPath("mosquitto"); err == nil {
		b.dir = filepath.Dir(p)
	} else if isExecutable("/usr/sbin/mosquitto") {
		b.dir = "/usr/sbin"
	} else {
		return b, fmt.Errorf("no mosquitto program on PATH or in /usr/sbin: %w", ErrNoMosquitto)
	}
	if p, err := exec.LookPath("mosquitto_ctrl"); err == nil {
		b.ctrl = p
	} else if isExecutable("/usr/bin/mosquitto_ctrl") {
		b.ctrl = "/usr/bin/mosquitto_ctrl"
	} else {
		return b, fmt.Errorf("no mosquitto_ctrl program: %w", ErrNoMosquitto)
	}
	candidates, _ := filepath.Glob("/usr/lib/*/mosquitto_dynamic_security.so")
	candidates = append(candidates, mosquittoconf.PluginPath, "/usr/local/lib/mosquitto_dynamic_security.so")
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			b.plugin = c
			return b, nil
		}
	}
	return b, fmt.Errorf("no mosquitto_dynamic_security.so in /usr/lib: %w", ErrNoMosquitto)
}

func lookupRunAs(name, server, hint string) (*runAs, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, %s must run as the user %q, which is missing (%s; or run as an ordinary user): %w", server, name, hint, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	return &runAs{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

// MosquittoConfig returns deploy/mosquitto's mosquitto.conf as a native run uses it: the
// listener on 127.0.0.1:port, the configuration files in configDir, the state in dataDir and
// the dynamic-security plugin at plugin (and overrides, see MosquittoOptions.Overrides). It
// fails when the file lacks a line it substitutes or names another container path, so that
// the native run never silently departs from the compose file's.
func MosquittoConfig(port int, configDir, dataDir, plugin string, overrides map[string]string) (string, error) {
	b, err := fs.ReadFile(mosquittoconf.Files, mosquittoconf.ConfFile)
	if err != nil {
		return "", fmt.Errorf("read the embedded mosquitto.conf: %w", err)
	}
	subs := []struct {
		old, new string
		done     bool
	}{
		{old: mosquittoconf.Listener, new: fmt.Sprintf("listener %d %s", port, localhost)},
		{old: "plugin " + mosquittoconf.PluginPath, new: "plugin " + plugin},
		{old: " " + mosquittoconf.ConfigDir, new: " " + filepath.Clean(configDir) + "/"},
		{old: " " + mosquittoconf.DataDir, new: " " + filepath.Clean(dataDir) + "/"},
	}
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if strings.HasPrefix(line, "#") {
			continue
		}
		rest := line // what no substitution covers
		for j := range subs {
			if strings.Contains(line, subs[j].old) {
				rest = strings.ReplaceAll(rest, subs[j].old, "")
				lines[i] = strings.ReplaceAll(lines[i], subs[j].old, subs[j].new)
				subs[j].done = true
			}
		}
		if strings.Contains(rest, "/mosquitto/") {
			return "", fmt.Errorf("deploy/mosquitto/mosquitto.conf: %q names a container path that a native run does not substitute", line)
		}
	}
	for _, s := range subs {
		if !s.done {
			return "", fmt.Errorf("deploy/mosquitto/mosquitto.conf has no %q to substitute for a native run", strings.TrimSpace(s.old))
		}
	}
	for option, value := range overrides {
		found := 0
		for i, line := range lines {
			if key, _, _ := strings.Cut(line, " "); key == option && !strings.HasPrefix(line, "#") {
				lines[i] = option + " " + value
				found++
			}
		}
		if found != 1 {
			return "", fmt.Errorf("override of %s: deploy/mosquitto/mosquitto.conf sets it %d times, want once", option, found)
		}
	}
	conf := strings.Join(lines, "\n")
	return conf, nil
}

// writeMosquittoConfig copies the configuration files into dir/config, with mosquitto.conf
// substituted for this run, and returns the path of mosquitto.conf.
func writeMosquittoConfig(dir string, port int, plugin string, overrides map[string]string) (string, error) {
	configDir := filepath.Join(dir, "config")
	// Readable by the broker's user: these files hold no secret.
	if err := os.MkdirAll(configDir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", configDir, err)
	}
	if err := os.Chmod(configDir, 0o755); err != nil {
		return "", fmt.Errorf("%s: %w", configDir, err)
	}
	conf, err := MosquittoConfig(port, configDir, dir, plugin, overrides)
	if err != nil {
		return "", err
	}
	for _, name := range mosquittoconf.Names() {
		data, err := fs.ReadFile(mosquittoconf.Files, name)
		if err != nil {
			return "", fmt.Errorf("read the embedded %s: %w", name, err)
		}
		if name == mosquittoconf.ConfFile {
			data = []byte(conf)
		}
		path := filepath.Join(configDir, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return "", fmt.Errorf("write %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
	}
	return filepath.Join(configDir, mosquittoconf.ConfFile), nil
}

// waitReady logs in as the administrator until it succeeds, the broker exits, or timeout
// passes.
func (m *Mosquitto) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if lastErr = m.tryLogin(); lastErr == nil {
			return nil
		}
		select {
		case <-m.proc.done:
			return m.proc.exitError()
		case <-ctx.Done():
			return fmt.Errorf("Mosquitto on port %d did not accept its administrator %s within %s (%w); last error: %v; its last output:\n%s",
				m.port, m.admin, timeout, ctx.Err(), lastErr, indent(m.proc.tail.String()))
		case <-tick.C:
		}
	}
}

func (m *Mosquitto) tryLogin() error {
	c, err := net.DialTimeout("tcp", m.Addr(), time.Second)
	if err != nil {
		return err
	}
	c.Close()
	opts := paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID(fmt.Sprintf("localstack-probe-%d", os.Getpid())).
		SetUsername(m.admin).SetPassword(m.password).SetCleanSession(true).SetAutoReconnect(false).
		SetConnectTimeout(2 * time.Second)
	pc := paho.NewClient(opts)
	tok := pc.Connect()
	if !tok.WaitTimeout(3 * time.Second) {
		return errors.New("no CONNACK within 3 s")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	pc.Disconnect(0)
	return nil
}

// Addr is the broker's address, 127.0.0.1:PORT.
func (m *Mosquitto) Addr() string { return net.JoinHostPort(localhost, strconv.Itoa(m.port)) }

// Port is the broker's TCP port on 127.0.0.1.
func (m *Mosquitto) Port() int { return m.port }

// Dir is the broker's state directory.
func (m *Mosquitto) Dir() string { return m.dir }

// URL is the broker's URL with the given credentials, tcp://user:password@127.0.0.1:PORT.
func (m *Mosquitto) URL(username, password string) string {
	u := url.URL{Scheme: "tcp", User: url.UserPassword(username, password), Host: m.Addr()}
	return u.String()
}

// AdminURL is the URL of the broker administrator, for internal/brokeraccounts.
func (m *Mosquitto) AdminURL() string { return m.URL(m.admin, m.password) }

// Admin returns the administrator's username and password.
func (m *Mosquitto) Admin() (username, password string) { return m.admin, m.password }

// Overrides returns the MosquittoOptions.Overrides it was started with.
func (m *Mosquitto) Overrides() map[string]string { return m.overrides }

// Pid is the broker's process ID.
func (m *Mosquitto) Pid() int { return m.proc.cmd.Process.Pid }

// Done is closed when the broker has exited, whether Stop ended it or not.
func (m *Mosquitto) Done() <-chan struct{} { return m.proc.done }

// ResidentMemory returns the broker's resident memory in bytes (VmRSS; Linux only).
func (m *Mosquitto) ResidentMemory() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.Pid()))
	if err != nil {
		return 0, fmt.Errorf("memory of Mosquitto: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("memory of Mosquitto: %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("memory of Mosquitto: no VmRSS in /proc/%d/status", m.Pid())
}

// Stop stops the broker with SIGTERM, which makes it save its sessions, killing it if it has
// not stopped after 30 seconds. It is safe to call more than once.
func (m *Mosquitto) Stop() error {
	m.stopOnce.Do(func() { m.stopErr = m.proc.stop(syscall.SIGTERM, 30*time.Second) })
	return m.stopErr
}

// Kill ends the broker with SIGKILL, as a crash would: it saves nothing. It waits until the
// process is gone and is safe to call more than once, and after Stop.
func (m *Mosquitto) Kill() error {
	m.stopOnce.Do(func() { m.stopErr = m.proc.stop(syscall.SIGKILL, 10*time.Second) })
	return m.stopErr
}
