package brokeraccounts

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/otaflow/otaflow/internal/brokersys"
	"github.com/otaflow/otaflow/internal/mqttconn"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// Environment variables of the broker's provisioning, read by the starter.
const (
	// EnvAdminURL is the broker administrator's URL, tcp://otaflow-admin:PASSWORD@HOST:1883.
	EnvAdminURL = "MQTT_ADMIN_URL"
	// EnvWorkerPassword and EnvBridgePassword are the passwords of WorkerAccount and
	// BridgeAccount, those in the worker's and the bridge's MQTT_URL.
	EnvWorkerPassword = "OTAFLOW_WORKER_MQTT_PASSWORD"
	EnvBridgePassword = "OTAFLOW_BRIDGE_MQTT_PASSWORD"
)

// ACL is one access rule of a role of the dynamic-security plugin.
type ACL struct {
	// Type is publishClientSend (the client publishes), publishClientReceive (a message is
	// delivered to it), subscribePattern or unsubscribePattern.
	Type  string `json:"acltype"`
	Topic string `json:"topic"`
	// Priority orders a role's rules of one type, highest first; the first that matches
	// decides.
	Priority int  `json:"priority"`
	Allow    bool `json:"allow"`
}

// ServiceRoles are the roles of the service accounts, named after them: PROTOCOL.md's
// topics. The worker publishes commands and cancellations to every device; the bridge reads
// every device's reports, alone or through the shared subscription group several bridges
// split, and the broker's $SYS/broker/# figures (brokersys.Filter), which it exports as
// metrics with --broker-metrics. Any other subscription is refused (a last rule denies "#"),
// and so is any other publication or delivery (the acl file has nothing for them).
func ServiceRoles() map[string][]ACL {
	allow := func(typ, topic string) ACL { return ACL{Type: typ, Topic: topic, Allow: true} }
	denyOtherSubscriptions := ACL{Type: "subscribePattern", Topic: "#", Priority: -1, Allow: false}
	return map[string][]ACL{
		WorkerAccount: {
			allow("publishClientSend", protocol.CommandTopic("+")),
			allow("publishClientSend", protocol.CancelTopic("+")),
			denyOtherSubscriptions,
		},
		BridgeAccount: {
			allow("subscribePattern", protocol.ProgressFilter),
			allow("subscribePattern", protocol.StatusFilter),
			allow("subscribePattern", protocol.SharedFilter(protocol.ProgressFilter)),
			allow("subscribePattern", protocol.SharedFilter(protocol.StatusFilter)),
			allow("publishClientReceive", protocol.ProgressFilter),
			allow("publishClientReceive", protocol.StatusFilter),
			allow("subscribePattern", brokersys.Filter),
			allow("publishClientReceive", brokersys.Filter),
			denyOtherSubscriptions,
		},
	}
}

// DefaultACLAccess is what the plugin allows a client that no role of its own allows or
// denies: nothing but unsubscribing. Devices have no role, so their publications and the
// messages delivered to them fall to the acl file's pattern rules (deploy/mosquitto/acl),
// and so do their subscriptions (which Mosquitto does not check against that file).
var DefaultACLAccess = map[string]bool{
	"publishClientSend":    false,
	"publishClientReceive": false,
	"subscribe":            false,
	"unsubscribe":          true,
}

// Registry is the device registry Provision follows; *store.Store is one.
type Registry interface {
	ListDevices(ctx context.Context, f ota.DeviceFilter) ([]store.Device, error)
}

// Setup is what Provision brings the broker to.
type Setup struct {
	// WorkerPassword and BridgePassword are the service accounts' passwords (EnvWorkerPassword,
	// EnvBridgePassword). Both are required.
	WorkerPassword, BridgePassword string
	// Registry is the device registry.
	Registry Registry
}

// Report is what Provision did and found.
type Report struct {
	// Changes lists what Provision changed, for people, in order.
	Changes []string
	// Registered is the number of registered devices; WithAccount how many of them have an
	// account.
	Registered, WithAccount int
	// Missing are the registered devices without an account, in ID order: registered before
	// the broker's accounts were provisioned, they need `starter devices rotate-secret`
	// (their secrets exist only as hashes).
	Missing []string
	// Unregistered are the device accounts of devices not in the registry, in ID order. They
	// are left alone: a registry restored from an old backup must not cost devices their
	// accounts.
	Unregistered []string
}

// Changed reports whether Provision changed anything.
func (r Report) Changed() bool { return len(r.Changes) > 0 }

// Summary is the report in one line, for the setup's output.
func (r Report) Summary() string {
	var b strings.Builder
	if r.Changed() {
		b.WriteString(strings.Join(r.Changes, "; "))
	} else {
		b.WriteString("roles, service accounts and device accounts already in place")
	}
	fmt.Fprintf(&b, "; %d of %d registered devices have a broker account", r.WithAccount, r.Registered)
	if n := len(r.Missing); n > 0 {
		fmt.Fprintf(&b, "; %d lack one and cannot connect until given a new secret (starter devices rotate-secret --device ID): %s",
			n, abbreviate(r.Missing, 10))
	}
	if n := len(r.Unregistered); n > 0 {
		fmt.Fprintf(&b, "; %d device accounts belong to no registered device (left alone): %s", n, abbreviate(r.Unregistered, 10))
	}
	return b.String()
}

func abbreviate(ids []string, n int) string {
	if len(ids) <= n {
		return strings.Join(ids, ", ")
	}
	return strings.Join(ids[:n], ", ") + fmt.Sprintf(", ... (%d more)", len(ids)-n)
}

// Provision brings the broker in line with OTAflow, doing only what is missing, so that it can
// run any number of times (the setup step):
//   - the plugin's default access (DefaultACLAccess);
//   - the services' roles (ServiceRoles) and accounts, with s's passwords: an account whose
//     password no longer logs in is given s's;
//   - every registered device's account disabled exactly when the device is; devices without
//     an account are reported (Report.Missing), as are accounts of unregistered devices.
func Provision(ctx context.Context, a *Admin, s Setup) (Report, error) {
	var rep Report
	if s.WorkerPassword == "" || s.BridgePassword == "" {
		return rep, fmt.Errorf("the service accounts' passwords are needed: set %s and %s", EnvWorkerPassword, EnvBridgePassword)
	}
	if s.Registry == nil {
		return rep, errors.New("no device registry to provision the broker from")
	}
	if err := a.ensureDefaultAccess(ctx, &rep); err != nil {
		return rep, err
	}
	roles := ServiceRoles()
	for _, name := range []string{WorkerAccount, BridgeAccount} {
		if err := a.ensureRole(ctx, name, roles[name], &rep); err != nil {
			return rep, err
		}
	}
	for _, svc := range []struct{ name, password string }{{WorkerAccount, s.WorkerPassword}, {BridgeAccount, s.BridgePassword}} {
		if err := a.ensureService(ctx, svc.name, svc.password, &rep); err != nil {
			return rep, err
		}
	}
	if err := a.syncDevices(ctx, s.Registry, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

func (a *Admin) ensureDefaultAccess(ctx context.Context, rep *Report) error {
	data, err := a.do(ctx, "getDefaultACLAccess", command{})
	if err != nil {
		return err
	}
	var d struct {
		ACLs []struct {
			Type  string `json:"acltype"`
			Allow bool   `json:"allow"`
		} `json:"acls"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return fmt.Errorf("broker: getDefaultACLAccess: %w", err)
	}
	have := map[string]bool{}
	for _, acl := range d.ACLs {
		have[acl.Type] = acl.Allow
	}
	var set []map[string]any
	for _, typ := range []string{"publishClientSend", "publishClientReceive", "subscribe", "unsubscribe"} {
		if allow, ok := have[typ]; !ok || allow != DefaultACLAccess[typ] {
			set = append(set, map[string]any{"acltype": typ, "allow": DefaultACLAccess[typ]})
		}
	}
	if len(set) == 0 {
		return nil
	}
	if _, err := a.do(ctx, "setDefaultACLAccess", command{"acls": set}); err != nil {
		return err
	}
	rep.Changes = append(rep.Changes, "set the default access (only what a role allows)")
	return nil
}

// ensureRole creates a role with exactly acls, or adds and removes ACLs of an existing one.
func (a *Admin) ensureRole(ctx context.Context, name string, acls []ACL, rep *Report) error {
	data, err := a.do(ctx, "getRole", command{"rolename": name})
	if is(err, msgRoleNotFound) {
		if _, err := a.do(ctx, "createRole", command{"rolename": name, "acls": acls}); err != nil {
			return err
		}
		rep.Changes = append(rep.Changes, "created role "+name)
		return nil
	}
	if err != nil {
		return err
	}
	var d struct {
		Role struct {
			ACLs []ACL `json:"acls"`
		} `json:"role"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return fmt.Errorf("broker: getRole %s: %w", name, err)
	}
	changed := false
	for _, have := range d.Role.ACLs {
		if !slices.Contains(acls, have) {
			if _, err := a.do(ctx, "removeRoleACL", command{"rolename": name, "acltype": have.Type, "topic": have.Topic}); err != nil {
				return err
			}
			changed = true
		}
	}
	for _, want := range acls {
		if !slices.Contains(d.Role.ACLs, want) {
			if _, err := a.do(ctx, "addRoleACL", command{"rolename": name, "acltype": want.Type, "topic": want.Topic,
				"priority": want.Priority, "allow": want.Allow}); err != nil {
				return err
			}
			changed = true
		}
	}
	if changed {
		rep.Changes = append(rep.Changes, "updated the topics of role "+name)
	}
	return nil
}

// ensureService makes a service's account: enabled, not bound to a client ID, with its role
// and a password that logs in.
func (a *Admin) ensureService(ctx context.Context, name, password string, rep *Report) error {
	c, err := a.getClient(ctx, name)
	if errors.Is(err, ErrNoAccount) {
		if _, err := a.do(ctx, "createClient", command{"username": name, "password": password,
			"roles": []map[string]any{{"rolename": name}}}); err != nil {
			return err
		}
		rep.Changes = append(rep.Changes, "created account "+name)
		return nil
	}
	if err != nil {
		return err
	}
	if c.ClientID != "" {
		if _, err := a.do(ctx, "setClientId", command{"username": name, "clientid": ""}); err != nil {
			return err
		}
		rep.Changes = append(rep.Changes, "unbound account "+name+" from client ID "+c.ClientID)
	}
	if !slices.Contains(c.Roles, roleRef{Name: name}) {
		if _, err := a.do(ctx, "addClientRole", command{"username": name, "rolename": name}); err != nil {
			return err
		}
		rep.Changes = append(rep.Changes, "gave account "+name+" its role")
	}
	if c.Disabled {
		if _, err := a.do(ctx, "enableClient", command{"username": name}); err != nil {
			return err
		}
		rep.Changes = append(rep.Changes, "enabled account "+name)
	}
	ok, err := a.canLogIn(ctx, name, password)
	if err != nil {
		return err
	}
	if !ok {
		if _, err := a.do(ctx, "setClientPassword", command{"username": name, "password": password}); err != nil {
			return err
		}
		rep.Changes = append(rep.Changes, "set the password of account "+name)
	}
	return nil
}

// canLogIn reports whether username logs in with password, with a connection of its own that
// leaves no session behind. The plugin never tells a password, so this is how Provision knows
// whether a service's password must be set (setting it would disconnect the service).
func (a *Admin) canLogIn(ctx context.Context, username, password string) (bool, error) {
	opts, err := mqttconn.Options(a.url, "otaflow-setup-probe-"+a.prefix, mqttconn.WithTLS(a.tls))
	if err != nil {
		return false, err
	}
	opts.SetUsername(username)
	opts.SetPassword(password)
	opts.SetCleanSession(true)
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := mqttconn.Connect(ctx, opts)
	if refused(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check the password of account %s: %w", username, err)
	}
	c.Disconnect(0)
	return true, nil
}

// syncDevices disables and enables device accounts as the registry says, and reports the
// registered devices without an account and the accounts of unregistered devices.
func (a *Admin) syncDevices(ctx context.Context, reg Registry, rep *Report) error {
	accounts, err := a.Devices(ctx)
	if err != nil {
		return err
	}
	byID := make(map[string]DeviceAccount, len(accounts))
	for _, acc := range accounts {
		byID[acc.ID] = acc
	}
	var disabled, enabled int
	after := ""
	for {
		page, err := reg.ListDevices(ctx, ota.DeviceFilter{After: after, Limit: 5000})
		if err != nil {
			return fmt.Errorf("read the device registry: %w", err)
		}
		for _, d := range page {
			rep.Registered++
			acc, ok := byID[d.ID]
			if !ok {
				rep.Missing = append(rep.Missing, d.ID)
				continue
			}
			delete(byID, d.ID)
			rep.WithAccount++
			if acc.Disabled == d.Disabled {
				continue
			}
			if err := a.setDisabled(ctx, client{Username: d.ID, Disabled: acc.Disabled}, d.Disabled); err != nil {
				return err
			}
			if d.Disabled {
				disabled++
			} else {
				enabled++
			}
		}
		if len(page) < 5000 {
			break
		}
		after = page[len(page)-1].ID
	}
	for id := range byID {
		rep.Unregistered = append(rep.Unregistered, id)
	}
	slices.Sort(rep.Unregistered)
	if disabled > 0 {
		rep.Changes = append(rep.Changes, fmt.Sprintf("disabled %d device accounts of disabled devices", disabled))
	}
	if enabled > 0 {
		rep.Changes = append(rep.Changes, fmt.Sprintf("enabled %d device accounts of enabled devices", enabled))
	}
	return nil
}

// Config is where the setup step finds the broker and the service passwords.
type Config struct {
	// AdminURL is the broker administrator's URL (EnvAdminURL); TLS its TLS settings (nil:
	// none, or the system's roots for an ssl:// URL).
	AdminURL string
	TLS      *tls.Config
	// WorkerPassword and BridgePassword are the service accounts' passwords.
	WorkerPassword, BridgePassword string
}

// Step is the broker's setup step in one call, for `starter setup`: it connects as the
// administrator, runs Provision against reg and disconnects. It returns whether anything
// changed and Report.Summary.
func Step(ctx context.Context, cfg Config, reg Registry) (changed bool, detail string, err error) {
	if cfg.AdminURL == "" {
		return false, "", fmt.Errorf("no broker administrator URL: set %s (tcp://otaflow-admin:PASSWORD@HOST:1883)", EnvAdminURL)
	}
	a, err := Dial(ctx, cfg.AdminURL, cfg.TLS)
	if err != nil {
		return false, "", err
	}
	defer a.Close()
	rep, err := Provision(ctx, a, Setup{WorkerPassword: cfg.WorkerPassword, BridgePassword: cfg.BridgePassword, Registry: reg})
	if err != nil {
		return rep.Changed(), "", err
	}
	return rep.Changed(), rep.Summary(), nil
}
