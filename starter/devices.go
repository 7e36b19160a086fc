package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/credential"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// listPageSize is how many devices `devices list` reads per query.
const listPageSize = 500

func devicesCommand(e *appEnv) *cli.Command {
	deviceIDFlag := func() cli.Flag { return &cli.StringFlag{Name: "device", Usage: "device `ID` (required)"} }
	return &cli.Command{
		Name:   "devices",
		Usage:  "manage the device registry (PostgreSQL)",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list devices with their reported versions",
				UsageText: "starter devices list [--prefix P] [--limit N] [--json]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "prefix", Usage: "only devices whose ID starts with `P`"},
					&cli.IntFlag{Name: "limit", Usage: "list at most `N` devices (0: all)"},
					&cli.BoolFlag{Name: "json", Usage: "print a JSON array of devices"},
				},
				Before: requireFlags(),
				Action: e.listDevicesAction,
			},
			{
				Name:      "add",
				Usage:     "register a device and print its MQTT secret (shown once)",
				UsageText: "starter devices add --device D [--label k=v ...] [--json]",
				Flags: []cli.Flag{
					deviceIDFlag(),
					&cli.StringSliceFlag{Name: "label", Usage: "label `KEY=VALUE`, repeatable"},
					&cli.BoolFlag{Name: "json", Usage: "print one JSON object with the secret"},
				},
				Before: requireFlags("device"),
				Action: e.addDeviceAction,
			},
			importCommand(e),
			quarantineCommand(e),
			{
				Name:      "rotate-secret",
				Usage:     "issue a new MQTT secret for a registered device (shown once)",
				UsageText: "starter devices rotate-secret --device D [--json]",
				Flags: []cli.Flag{
					deviceIDFlag(),
					&cli.BoolFlag{Name: "json", Usage: "print one JSON object with the secret"},
				},
				Before: requireFlags("device"),
				Action: e.rotateSecretAction,
			},
			{
				Name:      "disable",
				Usage:     "disable a device: its running upgrade is canceled, it is disconnected and cannot connect",
				UsageText: "starter devices disable --device D",
				Description: "Marks the device disabled in the registry (PostgreSQL), then cancels its running upgrade, if any\n" +
					"(the workflow " + ota.DeviceWorkflowID("D") + ", which needs Temporal; the cancel request names the disable, and\n" +
					"the upgrade ends canceled, also in its rollout). While disabled, the device cannot connect to the\n" +
					"broker (the credentials check refuses it), the embedded broker closes its connection within a\n" +
					"few seconds if it is connected, and no upgrade command is sent to it (a new upgrade or rollout\n" +
					"ends failed for it). Its broker session and queued commands are kept. `devices enable` undoes it.\n" +
					"Exit codes: 0 disabled (and its upgrade canceled), 1 unknown device, or disabled but its upgrade\n" +
					"could not be looked for or canceled (the message says so), 2 bad input.",
				Flags:  []cli.Flag{deviceIDFlag()},
				Before: requireFlags("device"),
				Action: func(cCtx *cli.Context) error { return e.setDisabledAction(cCtx, true) },
			},
			{
				Name:        "enable",
				Usage:       "enable a disabled device again: it can connect, and be upgraded",
				UsageText:   "starter devices enable --device D",
				Description: "An upgrade canceled by `devices disable` is not restarted: start a new one.",
				Flags:       []cli.Flag{deviceIDFlag()},
				Before:      requireFlags("device"),
				Action:      func(cCtx *cli.Context) error { return e.setDisabledAction(cCtx, false) },
			},
		},
	}
}

func (e *appEnv) listDevicesAction(cCtx *cli.Context) error {
	limit := cCtx.Int("limit")
	if limit < 0 {
		return usageErrorf(cCtx, "--limit must be 0 (all) or more, not %d", limit)
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	return listDevices(cCtx.Context, st, e.out, cCtx.String("prefix"), limit, cCtx.Bool("json"))
}

// listDevices writes the matching devices page by page, as a table or a JSON array, so that a
// large fleet is never held in memory at once.
func listDevices(ctx context.Context, st *store.Store, out io.Writer, prefix string, limit int, asJSON bool) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	n := 0
	after := ""
	if asJSON {
		fmt.Fprint(out, "[")
	} else {
		fmt.Fprintln(tw, "ID\tREPORTED\tLAST SEEN\tDISABLED")
	}
	for limit == 0 || n < limit {
		size := listPageSize
		if limit > 0 {
			size = min(size, limit-n)
		}
		page, err := st.ListDevices(ctx, ota.DeviceFilter{Prefix: prefix, After: after, Limit: size})
		if err != nil {
			return err
		}
		for _, d := range page {
			if asJSON {
				b, err := json.Marshal(d)
				if err != nil {
					return fmt.Errorf("encode device %s: %w", d.ID, err)
				}
				sep := ",\n  "
				if n == 0 {
					sep = "\n  "
				}
				fmt.Fprint(out, sep, string(b))
			} else {
				reported := formatMap(d.Reported)
				if reported == "" {
					reported = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.ID, reported, formatTimePtr(d.LastSeen), yesNo(d.Disabled))
			}
			n++
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write device list: %w", err)
		}
		if len(page) < size {
			break
		}
		after = page[len(page)-1].ID
	}
	if asJSON {
		if n > 0 {
			fmt.Fprintln(out)
		}
		_, err := fmt.Fprintln(out, "]")
		return err
	}
	if n == 0 {
		fmt.Fprintln(out, "(no devices)")
	}
	return nil
}

// parseLabels parses repeated --label KEY=VALUE flags.
func parseLabels(values []string) (map[string]string, error) { return parseKeyValues(values, "label") }

// parseKeyValues parses repeated KEY=VALUE flags (labels, or `rollout --where` filters, named
// by what in messages) with the rules of checkKeyValue; the key is trimmed of spaces and
// each key may be given once.
func parseKeyValues(values []string, what string) (map[string]string, error) {
	kvs := make(map[string]string, len(values))
	for _, kv := range values {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%s %q is not KEY=VALUE", what, kv)
		}
		k = strings.TrimSpace(k)
		if err := checkKeyValue(what, k, v); err != nil {
			return nil, err
		}
		if _, dup := kvs[k]; dup {
			return nil, fmt.Errorf("%s %q given twice", what, k)
		}
		kvs[k] = v
	}
	return kvs, nil
}

// Limits of a label (or --where filter): the registry keeps them in a jsonb object.
const (
	maxLabelKeyLen   = 64
	maxLabelValueLen = 128
)

// checkKeyValue checks one label or filter (what names it in messages): a key of 1 to 64
// bytes without '=' (so that it can be written KEY=VALUE) nor spaces around it, and a value
// of at most 128 bytes, both valid UTF-8 without control characters (PostgreSQL's jsonb
// refuses NUL, terminals act on escape sequences).
func checkKeyValue(what, k, v string) error {
	switch {
	case k == "" || len(k) > maxLabelKeyLen || strings.Contains(k, "="):
		return fmt.Errorf("%s %q: the key must be 1 to %d characters, without =", what, protocol.Truncate(k+"="+v, 80), maxLabelKeyLen)
	case k != strings.TrimSpace(k):
		return fmt.Errorf("%s %q: the key must not start or end with a space", what, protocol.Truncate(k, 80))
	case len(v) > maxLabelValueLen:
		return fmt.Errorf("%s %q: the value is longer than %d bytes", what, protocol.Truncate(k, 80), maxLabelValueLen)
	case !utf8.ValidString(k) || !utf8.ValidString(v):
		return fmt.Errorf("%s %q: not valid UTF-8", what, protocol.Truncate(k+"="+v, 80))
	case strings.IndexFunc(k+v, unicode.IsControl) >= 0:
		return fmt.Errorf("%s %q: control characters are not allowed", what, protocol.Truncate(k+"="+v, 80))
	}
	return nil
}

// secretReport is the JSON output of `devices add` and `devices rotate-secret`.
type secretReport struct {
	DeviceID string `json:"device_id"`
	Secret   string `json:"secret"`
}

// newSecret returns a new device secret and its hash.
func newSecret() (secret, hash string, err error) {
	if secret, err = credential.NewSecret(); err != nil {
		return "", "", err
	}
	if hash, err = credential.Hash(secret); err != nil {
		return "", "", fmt.Errorf("hash secret: %w", err)
	}
	return secret, hash, nil
}

func (e *appEnv) addDeviceAction(cCtx *cli.Context) error {
	id, err := deviceFlag(cCtx)
	if err != nil {
		return err
	}
	labels, err := parseLabels(cCtx.StringSlice("label"))
	if err != nil {
		return usageErrorf(cCtx, "--label: %v", err)
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	admin, err := e.brokerAdmin(cCtx)
	if err != nil {
		return err
	}
	secret, hash, err := newSecret()
	if err != nil {
		return err
	}
	// The account is created before the device is committed: both or neither.
	b := &brokerChange{admin: admin}
	err = st.AddDeviceThen(cCtx.Context, id, hash, labels, b.then(func(ctx context.Context, a *brokeraccounts.Admin) error {
		return a.AddDevice(ctx, id, secret)
	}))
	if errors.Is(err, store.ErrExists) {
		return cli.Exit(fmt.Sprintf("device %s is already registered; to issue it a new secret use `starter devices rotate-secret --device %s`", id, id), exitFailure)
	}
	if err != nil {
		b.undo(e, cCtx.Context, "its account", func(ctx context.Context, a *brokeraccounts.Admin) error { return a.RemoveDevice(ctx, id) })
		if exit := brokerAccountError(id, err); exit != nil {
			return exit
		}
		return fmt.Errorf("register device %s: %w; nothing was registered", id, err)
	}
	return e.printSecret(cCtx, id, secret, "Registered device "+id+".")
}

func (e *appEnv) rotateSecretAction(cCtx *cli.Context) error {
	id, err := deviceFlag(cCtx)
	if err != nil {
		return err
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	admin, err := e.brokerAdmin(cCtx)
	if err != nil {
		return err
	}
	secret, hash, err := newSecret()
	if err != nil {
		return err
	}
	created := false
	b := &brokerChange{admin: admin}
	// Rotating must not create a device by a typo: an unknown one is ErrNotFound.
	err = st.ReplaceSecretHashThen(cCtx.Context, id, hash, b.then(func(ctx context.Context, a *brokeraccounts.Admin) error {
		var err error
		created, err = a.SetDeviceSecret(ctx, id, secret)
		return err
	}))
	if errors.Is(err, store.ErrNotFound) {
		return cli.Exit(fmt.Sprintf("unknown device %s: register it with `starter devices add --device %s`", id, id), exitFailure)
	}
	if err != nil {
		if exit := brokerAccountError(id, err); exit != nil {
			return exit
		}
		if b.done {
			// The old secret cannot be given back to the broker: it is known only as a hash.
			return fmt.Errorf("the broker accepts only a new secret for device %s now, but the registry could not store its hash: %w; "+
				"run `starter devices rotate-secret --device %s` again", id, err, id)
		}
		return fmt.Errorf("new secret for device %s: %w; nothing was changed, the old secret still works", id, err)
	}
	headline := "New secret for device " + id + "; the old one no longer works for new connections."
	if admin != nil {
		headline = "New secret for device " + id + "; the old one no longer works (the broker closed any connection made with it)."
	}
	if created {
		headline = "New secret for device " + id + "; it had no broker account, it has one now."
	}
	return e.printSecret(cCtx, id, secret, headline)
}

// printSecret shows a device's new secret, the only time it is ever shown.
func (e *appEnv) printSecret(cCtx *cli.Context, id, secret, headline string) error {
	if cCtx.Bool("json") {
		return writeJSON(e.out, secretReport{DeviceID: id, Secret: secret})
	}
	fmt.Fprintln(e.out, headline)
	fmt.Fprintf(e.out, "MQTT secret: %s\n", secret)
	fmt.Fprintf(e.out, "Store it now: it is not shown again (only its hash is kept).\n"+
		"The device connects with client ID = username = %s and this secret as password.\n", id)
	return nil
}

func (e *appEnv) setDisabledAction(cCtx *cli.Context, disabled bool) error {
	id, err := deviceFlag(cCtx)
	if err != nil {
		return err
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	admin, err := e.brokerAdmin(cCtx)
	if err != nil {
		return err
	}
	noAccount := false
	b := &brokerChange{admin: admin}
	err = st.SetDisabledThen(cCtx.Context, id, disabled, b.then(func(ctx context.Context, a *brokeraccounts.Admin) error {
		err := a.SetDeviceDisabled(ctx, id, disabled)
		if errors.Is(err, brokeraccounts.ErrNoAccount) {
			noAccount = true
			return nil
		}
		return err
	}))
	if errors.Is(err, store.ErrNotFound) {
		return cli.Exit(fmt.Sprintf("unknown device %s: register it with `starter devices add --device %s`", id, id), exitFailure)
	}
	if err != nil {
		if !noAccount {
			b.undo(e, cCtx.Context, "the change", func(ctx context.Context, a *brokeraccounts.Admin) error {
				return a.SetDeviceDisabled(ctx, id, !disabled)
			})
		}
		if exit := brokerAccountError(id, err); exit != nil {
			return exit
		}
		return fmt.Errorf("device %s: %w; nothing was changed", id, err)
	}
	switch {
	case disabled && admin != nil:
		fmt.Fprintf(e.out, "Device %s disabled: it cannot connect (the broker closed any connection it had), and no upgrade command is sent to it.\n", id)
	case disabled:
		fmt.Fprintf(e.out, "Device %s disabled: it cannot connect, the broker closes its connection, and no upgrade command is sent to it.\n", id)
	case noAccount:
		fmt.Fprintf(e.out, "Device %s enabled, but it has no broker account, so it cannot connect: "+
			"give it one with a new secret, `starter devices rotate-secret --device %s`.\n", id, id)
		return nil
	default:
		fmt.Fprintf(e.out, "Device %s enabled: it can connect again, and be upgraded.\n", id)
		return nil
	}
	return e.cancelForDisable(cCtx, id)
}

// cancelForDisable cancels the running upgrade of a device that has just been disabled.
func (e *appEnv) cancelForDisable(cCtx *cli.Context, id string) error {
	wid := ota.DeviceWorkflowID(id)
	failed := func(err error) error {
		return cli.Exit(fmt.Sprintf("device %s is disabled, but its running upgrade (workflow %s) could not be canceled: %v\n"+
			"Cancel it with `starter cancel --device %s`.", id, wid, err, id), exitFailure)
	}
	c, err := e.temporalClient(cCtx)
	if err != nil {
		return failed(err)
	}
	ctx := cCtx.Context
	runID, err := runningUpgrade(ctx, c, id)
	if err != nil {
		return failed(err)
	}
	if runID == "" {
		fmt.Fprintln(e.out, "It had no upgrade running.")
		return nil
	}
	reason := fmt.Sprintf("device %s was disabled (starter devices disable)", id)
	switch err := requestCancel(ctx, c, cCtx.String(flagTemporalNamespace), wid, runID, reason); {
	case isNotFound(err):
		fmt.Fprintln(e.out, "Its upgrade ended meanwhile.")
		return nil
	case err != nil:
		return failed(err)
	}
	fmt.Fprintf(e.out, "Its running upgrade (workflow %s, run %s) is canceled: %s.\n", wid, runID, reason)
	return nil
}
