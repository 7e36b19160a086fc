package brokeraccounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/otaflow/otaflow/internal/protocol"
)

// Account names of OTAflow's services, as the worker and the bridge log in (their MQTT_URL).
// No device may be registered under these names.
const (
	WorkerAccount = "otaflow-worker"
	BridgeAccount = "otaflow-bridge"
)

// The plugin's answers that the account operations act on.
const (
	msgClientExists   = "Client already exists"
	msgClientNotFound = "Client not found"
	msgRoleNotFound   = "Role not found"
)

// client is an account as the plugin describes it (getClient, listClients with verbose).
type client struct {
	Username string    `json:"username"`
	ClientID string    `json:"clientid"`
	Disabled bool      `json:"disabled"`
	Roles    []roleRef `json:"roles"`
}

// roleRef names a role of an account.
type roleRef struct {
	Name string `json:"rolename"`
}

// isDevice reports whether the account is a device's: bound to the client ID equal to its
// username. No other account OTAflow makes is bound to a client ID.
func (c client) isDevice() bool { return c.ClientID != "" && c.ClientID == c.Username }

// getClient returns an account, or ErrNoAccount.
func (a *Admin) getClient(ctx context.Context, username string) (client, error) {
	data, err := a.do(ctx, "getClient", command{"username": username})
	if is(err, msgClientNotFound) {
		return client{}, fmt.Errorf("%s: %w", username, ErrNoAccount)
	}
	if err != nil {
		return client{}, err
	}
	var d struct {
		Client client `json:"client"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return client{}, fmt.Errorf("broker: getClient %s: %w", username, err)
	}
	return d.Client, nil
}

// device returns a device's account: ErrNoAccount when there is none, ErrNotDevice when the
// account of that name is not a device's.
func (a *Admin) device(ctx context.Context, id string) (client, error) {
	c, err := a.getClient(ctx, id)
	if err != nil {
		return client{}, err
	}
	if !c.isDevice() {
		return client{}, fmt.Errorf("%s: %w", id, ErrNotDevice)
	}
	return c, nil
}

// checkDeviceID refuses what cannot be a device's username.
func checkDeviceID(id string) error {
	if err := protocol.ValidateDeviceID(id); err != nil {
		return err
	}
	if id == WorkerAccount || id == BridgeAccount {
		return fmt.Errorf("%s is the name of an OTAflow service's broker account: %w", id, ErrNotDevice)
	}
	return nil
}

// AddDevice creates the account of a newly registered device: username and client ID id,
// password secret, enabled. An account of a device that was never registered (left by an
// earlier failure) is taken over with the new secret. It returns an error wrapping
// ErrNotDevice when another kind of account has that name.
func (a *Admin) AddDevice(ctx context.Context, id, secret string) error {
	if err := checkDeviceID(id); err != nil {
		return err
	}
	_, err := a.do(ctx, "createClient", command{"username": id, "clientid": id, "password": secret})
	if !is(err, msgClientExists) {
		return err
	}
	c, err := a.device(ctx, id)
	if err != nil {
		return err
	}
	if _, err := a.do(ctx, "setClientPassword", command{"username": id, "password": secret}); err != nil {
		return err
	}
	if c.Disabled {
		_, err = a.do(ctx, "enableClient", command{"username": id})
	}
	return err
}

// SetDeviceSecret gives a device's account a new password, creating the account when the
// device has none (a device registered before the broker's accounts were provisioned). The
// plugin disconnects the device, which must log in again with the new secret. created says
// whether the account is new. A disabled account stays disabled.
func (a *Admin) SetDeviceSecret(ctx context.Context, id, secret string) (created bool, err error) {
	if err := checkDeviceID(id); err != nil {
		return false, err
	}
	if _, err := a.device(ctx, id); errors.Is(err, ErrNoAccount) {
		_, err := a.do(ctx, "createClient", command{"username": id, "clientid": id, "password": secret})
		return err == nil, err
	} else if err != nil {
		return false, err
	}
	_, err = a.do(ctx, "setClientPassword", command{"username": id, "password": secret})
	return false, err
}

// SetDeviceDisabled disables or enables a device's account. Disabling also closes the
// device's connection; its session stays. It returns ErrNoAccount when the device has none
// (nothing to disable: it cannot connect).
func (a *Admin) SetDeviceDisabled(ctx context.Context, id string, disabled bool) error {
	if err := checkDeviceID(id); err != nil {
		return err
	}
	c, err := a.device(ctx, id)
	if err != nil {
		return err
	}
	return a.setDisabled(ctx, c, disabled)
}

func (a *Admin) setDisabled(ctx context.Context, c client, disabled bool) error {
	if disabled {
		// Also when already disabled: it closes any connection left.
		_, err := a.do(ctx, "disableClient", command{"username": c.Username})
		return err
	}
	if !c.Disabled {
		return nil
	}
	_, err := a.do(ctx, "enableClient", command{"username": c.Username})
	return err
}

// RemoveDevice deletes a device's account, closing its connection. A device without one is
// not an error.
func (a *Admin) RemoveDevice(ctx context.Context, id string) error {
	if err := checkDeviceID(id); err != nil {
		return err
	}
	if _, err := a.device(ctx, id); errors.Is(err, ErrNoAccount) {
		return nil
	} else if err != nil {
		return err
	}
	_, err := a.do(ctx, "deleteClient", command{"username": id})
	if is(err, msgClientNotFound) {
		return nil
	}
	return err
}

// DeviceAccount is a device's account as the broker has it.
type DeviceAccount struct {
	ID       string
	Disabled bool
}

// listPage is how many accounts one listClients asks for.
const listPage = 10000

// clients lists every account, a page at a time.
func (a *Admin) clients(ctx context.Context) ([]client, error) {
	var all []client
	for offset := 0; ; offset += listPage {
		data, err := a.do(ctx, "listClients", command{"verbose": true, "count": listPage, "offset": offset})
		if err != nil {
			return nil, err
		}
		var d struct {
			TotalCount int      `json:"totalCount"`
			Clients    []client `json:"clients"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			return nil, fmt.Errorf("broker: listClients: %w", err)
		}
		all = append(all, d.Clients...)
		if len(d.Clients) < listPage || offset+len(d.Clients) >= d.TotalCount {
			return all, nil
		}
	}
}

// Devices returns the accounts of devices, in username order.
func (a *Admin) Devices(ctx context.Context) ([]DeviceAccount, error) {
	all, err := a.clients(ctx)
	if err != nil {
		return nil, err
	}
	var out []DeviceAccount
	for _, c := range all {
		if c.isDevice() {
			out = append(out, DeviceAccount{ID: c.Username, Disabled: c.Disabled})
		}
	}
	return out, nil
}
