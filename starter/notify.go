package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
	"go.temporal.io/sdk/client"

	"github.com/otaflow/otaflow/internal/notify"
	"github.com/otaflow/otaflow/internal/ota"
)

// notifyFlags are `rollout start`'s flags of the rollout's own webhook receiver.
func notifyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "notify", Usage: "also send this rollout's events (each upgrade's end, wave ends, pauses, its end) " +
			"to the webhook receiver at `URL`, signed with the secret in " + notify.SecretEnv + " or --notify-secret-file"},
		&cli.StringFlag{Name: "notify-secret-file", Usage: "`FILE` holding the webhook's shared secret (never printed)"},
	}
}

// notifyReceiver reads --notify and its secret; nil without --notify.
func notifyReceiver(cCtx *cli.Context) (*notify.Receiver, error) {
	u := cCtx.String("notify")
	if u == "" {
		if cCtx.String("notify-secret-file") != "" {
			return nil, cli.Exit("--notify-secret-file needs --notify URL", exitUsage)
		}
		return nil, nil
	}
	if err := ota.ValidateWebhookURL(u); err != nil {
		return nil, cli.Exit(err.Error(), exitUsage)
	}
	secret, err := notify.ReadSecret(cCtx.String("notify-secret-file"), os.Getenv)
	if err != nil {
		return nil, cli.Exit(err.Error(), exitUsage)
	}
	return &notify.Receiver{URL: u, Secret: secret}, nil
}

// addReceiver stores a rollout's receiver before the rollout starts, so that no event of it
// is missed; it returns the receiver's ID and a function that settles it once the start is
// known: a start that failed removes it, one that succeeded removes the receivers of earlier
// rollouts of the name and makes sure the notifier workflow runs.
func (e *appEnv) addReceiver(cCtx *cli.Context, c client.Client, name string, r *notify.Receiver) (settle func(started bool) error, err error) {
	if r == nil {
		return func(bool) error { return nil }, nil
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return nil, err
	}
	id, err := st.AddEndpoint(cCtx.Context, name, r.URL, string(r.Secret))
	if err != nil {
		return nil, err
	}
	return func(started bool) error {
		ctx := cCtx.Context
		if !started {
			return st.DeleteEndpoint(ctx, id)
		}
		if err := st.DeleteEndpoints(ctx, name, id); err != nil {
			return err
		}
		if err := ota.StartNotifier(ctx, c); err != nil {
			return fmt.Errorf("rollout %s started, but its notifications will wait: %w", name, err)
		}
		return nil
	}, nil
}
