package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/store"
)

func quarantineCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:  "quarantine",
		Usage: "keep devices whose upgrades keep failing out of rollouts",
		Description: "A device whose last M judged upgrades (succeeded, failed, timed out, reverted) include N failed,\n" +
			"timed-out or reverted ones is quarantined when its upgrade ends, under the policy stored in\n" +
			"PostgreSQL (off until set). Rollouts leave quarantined devices out and count them as quarantined;\n" +
			"a single `starter upgrade` still reaches them. A released device is taken on by the next rollout,\n" +
			"and only the upgrades that end after its release judge it again.",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:      "policy",
				Usage:     "show or set the quarantine policy",
				UsageText: "starter devices quarantine policy [--failures N --of M | --off] [--json]",
				Description: "Without flags it shows the policy. Setting one judges every device's recent upgrades at once\n" +
					"and says how many it quarantined; devices already in quarantine stay there (--off too).",
				Flags: []cli.Flag{
					&cli.IntFlag{Name: "failures", Usage: "quarantine after `N` failed, timed-out or reverted upgrades ..."},
					&cli.IntFlag{Name: "of", Usage: "... among the device's last `M` (at most 100)"},
					&cli.BoolFlag{Name: "off", Usage: "quarantine no more devices"},
					&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
				},
				Before: requireFlags(),
				Action: e.quarantinePolicyAction,
			},
			{
				Name:      "list",
				Usage:     "list the devices in quarantine, with why",
				UsageText: "starter devices quarantine list [--json]",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print a JSON array"}},
				Before:    requireFlags(),
				Action:    e.quarantineListAction,
			},
			{
				Name:      "release",
				Usage:     "take a device out of quarantine: the next rollout upgrades it",
				UsageText: "starter devices quarantine release --device D",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "device", Usage: "device `ID` (required)"}},
				Before:    requireFlags("device"),
				Action:    e.quarantineReleaseAction,
			},
		},
	}
}

// quarantinePolicyReport is the JSON output of `devices quarantine policy`.
type quarantinePolicyReport struct {
	On     bool                    `json:"on"`
	Policy *store.QuarantinePolicy `json:"policy,omitempty"`
	// Quarantined is how many devices setting the policy quarantined.
	Quarantined *int `json:"quarantined,omitempty"`
}

func (e *appEnv) quarantinePolicyAction(cCtx *cli.Context) error {
	set := cCtx.IsSet("failures") || cCtx.IsSet("of")
	switch {
	case set && cCtx.Bool("off"):
		return usageErrorf(cCtx, "--off turns quarantine off: give it without --failures and --of")
	case cCtx.IsSet("failures") != cCtx.IsSet("of"):
		return usageErrorf(cCtx, "give both --failures N and --of M")
	}
	p := store.QuarantinePolicy{Failures: cCtx.Int("failures"), Of: cCtx.Int("of")}
	if set {
		if err := p.Validate(); err != nil {
			return usageErrorf(cCtx, "%v", err)
		}
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	ctx := cCtx.Context
	var rep quarantinePolicyReport
	switch {
	case cCtx.Bool("off"):
		if err := st.DisableQuarantine(ctx); err != nil {
			return err
		}
	case set:
		n, err := st.SetQuarantinePolicy(ctx, p)
		if err != nil {
			return err
		}
		rep.Quarantined = &n
	}
	cur, on, err := st.QuarantinePolicy(ctx)
	if err != nil {
		return err
	}
	rep.On = on
	if on {
		rep.Policy = &cur
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, rep)
	}
	if !on {
		fmt.Fprintln(e.out, "Quarantine is off: no device is quarantined (those in quarantine stay until released).")
		return nil
	}
	fmt.Fprintf(e.out, "Quarantine: a device is quarantined when %d of its last %d judged upgrades failed, timed out or reverted.\n",
		cur.Failures, cur.Of)
	if rep.Quarantined != nil {
		fmt.Fprintf(e.out, "Judged every device by it: %d more quarantined (see `starter devices quarantine list`).\n", *rep.Quarantined)
	}
	return nil
}

func (e *appEnv) quarantineListAction(cCtx *cli.Context) error {
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	all := []store.QuarantinedDevice{}
	for after := ""; ; {
		page, err := st.QuarantinedDevices(cCtx.Context, after, listPageSize)
		if err != nil {
			return err
		}
		all = append(all, page...)
		if len(page) < listPageSize {
			break
		}
		after = page[len(page)-1].DeviceID
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, all)
	}
	if len(all) == 0 {
		fmt.Fprintln(e.out, "(no device is in quarantine)")
		return nil
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSINCE\tWHY")
	for _, q := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", q.DeviceID, formatTime(q.Since), q.Reason)
	}
	return tw.Flush()
}

func (e *appEnv) quarantineReleaseAction(cCtx *cli.Context) error {
	id, err := deviceFlag(cCtx)
	if err != nil {
		return err
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	if err := st.ReleaseQuarantine(cCtx.Context, id); errors.Is(err, store.ErrNotFound) {
		return cli.Exit(fmt.Sprintf("device %s is not in quarantine", id), exitFailure)
	} else if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "Released device %s from quarantine: the next rollout that targets it upgrades it.\n", id)
	return nil
}
