// Package brokeraccounts keeps the accounts of OTAflow's production MQTT broker, Mosquitto
// 2.0.11 with its dynamic-security plugin (deploy/mosquitto), in step with the device
// registry. It speaks the plugin's API, JSON commands on $CONTROL/dynamic-security/v1, as the
// broker administrator that deploy/mosquitto/start.sh creates on the broker's first start.
//
// A device's account: username = device ID, password = the device's secret, bound to client
// ID = device ID, so that the broker refuses a connection with another client ID; no role (its
// topics are the pattern rules of deploy/mosquitto/acl). The registry keeps only argon2id
// hashes of the secrets, and the plugin takes a password in plain text, so an account is
// created or given a new password only where the secret exists in plain text: when a device
// is registered (`starter devices add`, `import`) or given a new secret
// (`starter devices rotate-secret`). `starter devices disable` disables the account, which
// also closes the device's connection.
//
// The services' accounts, WorkerAccount and BridgeAccount, are not bound to a client ID
// (several replicas run side by side); their topics are roles named after them. Provision,
// the setup step, creates them and brings every device account's disabled flag in line with
// the registry.
//
// Every change makes the plugin rewrite its whole JSON file, which takes time in proportion
// to the number of accounts (about 0.01 ms per account here): each change is sent as one
// message, so the broker serves its clients between two of them.
package brokeraccounts

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/mqttconn"
)

// The dynamic-security plugin's API topics.
const (
	controlTopic  = "$CONTROL/dynamic-security/v1"
	responseTopic = controlTopic + "/response"
)

// Errors of the account operations.
var (
	// ErrNoAccount: the broker has no account of that name.
	ErrNoAccount = errors.New("no broker account")
	// ErrNotDevice: the account of that name is not a device's (a service's, an
	// administrator's): OTAflow never changes it as a device.
	ErrNotDevice = errors.New("the broker account is not a device's")
)

// DefaultTimeout bounds one command when the context has no deadline. A change to a broker
// with 100,000 accounts takes about a second.
const DefaultTimeout = time.Minute

// Admin is a connection to the broker's dynamic-security plugin as its administrator. It is
// safe for concurrent use; commands are sent one at a time.
type Admin struct {
	client  paho.Client
	url     string
	tls     *tls.Config
	prefix  string // of this connection's correlation data
	seq     atomic.Uint64
	sendMu  sync.Mutex // one command at a time: each one blocks the broker while it saves
	mu      sync.Mutex
	waiting map[string]chan reply
	lost    chan struct{} // closed when the connection is lost
}

// Dial connects to the broker at adminURL (tcp://USER:PASSWORD@HOST:PORT, or ssl:// with
// tlsCfg, see internal/mqttconn) as the administrator and subscribes to the plugin's replies.
// A refused login fails at once; an unreachable broker is retried until ctx ends.
func Dial(ctx context.Context, adminURL string, tlsCfg *tls.Config) (*Admin, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("broker administrator: %w", err)
	}
	a := &Admin{url: adminURL, tls: tlsCfg, prefix: hex.EncodeToString(b), waiting: map[string]chan reply{}, lost: make(chan struct{})}
	opts, err := mqttconn.Options(adminURL, "otaflow-admin-"+a.prefix, mqttconn.WithTLS(tlsCfg))
	if err != nil {
		return nil, err
	}
	opts.SetCleanSession(true)
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	// Replies come in the order of the commands; the handler only hands them over.
	opts.SetOrderMatters(false)
	var lostOnce sync.Once
	opts.SetConnectionLostHandler(func(paho.Client, error) { lostOnce.Do(func() { close(a.lost) }) })
	for {
		a.client, err = mqttconn.Connect(ctx, opts)
		if err == nil {
			break
		}
		if refused(err) || errors.Is(err, mqttconn.ErrTLS) {
			return nil, fmt.Errorf("the MQTT broker at %s refused the administrator's login: %w", credential.RedactURL(adminURL), err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to the MQTT broker at %s as its administrator: %w", credential.RedactURL(adminURL), err)
		case <-time.After(time.Second):
		}
	}
	tok := a.client.Subscribe(responseTopic, 1, a.onReply)
	if err := waitToken(ctx, tok); err != nil {
		a.Close()
		return nil, fmt.Errorf("subscribe to the broker's %s: %w", responseTopic, err)
	}
	if codes := tok.(*paho.SubscribeToken).Result(); codes[responseTopic] > 2 {
		a.Close()
		return nil, fmt.Errorf("the broker refused the administrator's subscription to %s: is %s the dynamic-security plugin's administrator?",
			responseTopic, credential.RedactURL(adminURL))
	}
	return a, nil
}

// refused reports whether a connection error is the broker refusing the credentials.
func refused(err error) bool {
	return errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword)
}

// Close disconnects.
func (a *Admin) Close() {
	if a.client != nil {
		a.client.Disconnect(100)
	}
}

func waitToken(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reply is the plugin's answer to one command.
type reply struct {
	Command         string          `json:"command"`
	Error           string          `json:"error"`
	Data            json.RawMessage `json:"data"`
	CorrelationData string          `json:"correlationData"`
}

func (a *Admin) onReply(_ paho.Client, m paho.Message) {
	var msg struct {
		Responses []reply `json:"responses"`
	}
	if err := json.Unmarshal(m.Payload(), &msg); err != nil {
		return // not ours to judge: every administrator connection sees every reply
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range msg.Responses {
		if ch, ok := a.waiting[r.CorrelationData]; ok {
			delete(a.waiting, r.CorrelationData)
			ch <- r
		}
	}
}

// command is one command of the plugin's API: its name and its fields.
type command map[string]any

// pluginError is an error the plugin answered a command with.
type pluginError struct {
	command, msg string
}

func (e *pluginError) Error() string { return fmt.Sprintf("broker: %s: %s", e.command, e.msg) }

// is reports whether err is the plugin answering msg.
func is(err error, msg string) bool {
	var pe *pluginError
	return errors.As(err, &pe) && pe.msg == msg
}

// do sends one command in a message of its own and waits for its reply. It returns the
// reply's data, or a *pluginError when the plugin refused the command.
func (a *Admin) do(ctx context.Context, name string, cmd command) (json.RawMessage, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	id := fmt.Sprintf("%s-%d", a.prefix, a.seq.Add(1))
	cmd["command"] = name
	cmd["correlationData"] = id
	payload, err := json.Marshal(map[string]any{"commands": []command{cmd}})
	if err != nil {
		return nil, fmt.Errorf("broker: encode %s: %w", name, err)
	}
	ch := make(chan reply, 1)
	a.mu.Lock()
	a.waiting[id] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.waiting, id)
		a.mu.Unlock()
	}()

	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	if !a.client.IsConnectionOpen() {
		return nil, fmt.Errorf("broker: %s: %w", name, mqttconn.ErrNotConnected)
	}
	if err := waitToken(ctx, a.client.Publish(controlTopic, 1, false, payload)); err != nil {
		return nil, fmt.Errorf("broker: send %s: %w", name, err)
	}
	select {
	case r := <-ch:
		if r.Error != "" {
			return nil, &pluginError{command: name, msg: r.Error}
		}
		return r.Data, nil
	case <-a.lost:
		return nil, fmt.Errorf("broker: the connection was lost before the answer to %s (it may or may not have been done): %w",
			name, mqttconn.ErrNotConnected)
	case <-ctx.Done():
		return nil, fmt.Errorf("broker: no answer to %s: %w", name, ctx.Err())
	}
}
