package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/store"
	"github.com/otaflow/otaflow/internal/tlsconfig/tlsflags"
)

// flagMQTTAdminURL is the global flag of the production broker's administrator.
const flagMQTTAdminURL = "mqtt-admin-url"

// brokerFlags are the global flags of the production broker: its administrator's URL and the
// TLS files of that connection.
func brokerFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: flagMQTTAdminURL, EnvVars: []string{brokeraccounts.EnvAdminURL},
			Usage: "`URL` of the production MQTT broker's administrator, e.g. tcp://otaflow-admin:PASSWORD@localhost:1883 " +
				"(ssl:// for TLS): the devices commands then also create, disable and change the devices' broker accounts. " +
				"Not needed with devstack's embedded broker, which reads the registry itself"},
	}, tlsflags.MQTTFlags()...)
}

// brokerDialTimeout bounds connecting to the broker's administration.
const brokerDialTimeout = 30 * time.Second

// brokerAdmin connects to the production broker as its administrator on first use. It returns
// nil, and says once that no account is changed, when no administrator URL is set.
func (e *appEnv) brokerAdmin(cCtx *cli.Context) (*brokeraccounts.Admin, error) {
	if e.admin != nil || e.noAdmin {
		return e.admin, nil
	}
	url := cCtx.String(flagMQTTAdminURL)
	if url == "" {
		e.noAdmin = true
		fmt.Fprintf(e.errOut, "starter: %s is not set, so no broker account changes: right with devstack's embedded broker, "+
			"which reads the registry; the production broker needs it\n", brokeraccounts.EnvAdminURL)
		return nil, nil
	}
	tlsCfg, err := tlsflags.MQTT(cCtx)
	if err != nil {
		return nil, usageErrorf(cCtx, "%v", err)
	}
	ctx, cancel := context.WithTimeout(cCtx.Context, brokerDialTimeout)
	defer cancel()
	a, err := brokeraccounts.Dial(ctx, url, tlsCfg)
	if err != nil {
		return nil, fmt.Errorf("%w; nothing was changed", err)
	}
	e.admin = a
	return a, nil
}

// brokerChange is a registry change's Then that runs change against the broker, when there is
// one, and records whether it succeeded, so that a failed commit can be undone on the broker.
type brokerChange struct {
	admin *brokeraccounts.Admin
	done  bool
}

func (b *brokerChange) then(change func(ctx context.Context, a *brokeraccounts.Admin) error) store.Then {
	return func(ctx context.Context) error {
		if b.admin == nil {
			return nil
		}
		if err := change(ctx, b.admin); err != nil {
			return err
		}
		b.done = true
		return nil
	}
}

// undo runs undo on the broker when the broker changed but the registry did not (its commit
// failed), and says so when that fails too.
func (b *brokerChange) undo(e *appEnv, ctx context.Context, what string, undo func(ctx context.Context, a *brokeraccounts.Admin) error) {
	if !b.done {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), brokeraccounts.DefaultTimeout)
	defer cancel()
	if err := undo(ctx, b.admin); err != nil {
		fmt.Fprintf(e.errOut, "starter: the registry did not change, and undoing %s on the broker failed too: %v\n", what, err)
	}
}

// brokerAccountError describes a broker account refused to a device.
func brokerAccountError(id string, err error) error {
	if errors.Is(err, brokeraccounts.ErrNotDevice) {
		return cli.Exit(fmt.Sprintf("the broker has an account named %s that is not a device's (a service's or an administrator's): "+
			"choose another device ID; nothing was changed", id), exitFailure)
	}
	return nil
}
