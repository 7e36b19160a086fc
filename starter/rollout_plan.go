package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/plan"
)

func rolloutPlanCommand(e *appEnv) *cli.Command {
	return &cli.Command{
		Name:      "plan",
		Usage:     "show what a rollout would do, without starting anything",
		UsageText: "starter rollout plan --name R --type T --version V --url U --md5 M --size S TARGETS [options] [--json]",
		Description: "Takes the flags of `rollout start` and reads the device registry (DATABASE_URL); it needs no\n" +
			"Temporal server and changes nothing. It shows the targets of each wave and the devices left out, by\n" +
			"reason (up to date, incompatible, quarantined, disabled, never seen), judged as the rollout's\n" +
			"pre-flight judges them, and the expected duration from the rate limits, ramp, in-flight limit,\n" +
			"bakes, soak and window (with --upgrade-time, each device's upgrade too). The registry can change\n" +
			"before a rollout starts: the rollout fixes its targets at its own pre-flight.\n" +
			"Exit codes: 0 planned, 1 the registry could not be read, 2 bad input.",
		Flags: slices.Concat(rolloutRequestFlags(), []cli.Flag{
			&cli.DurationFlag{Name: "upgrade-time", Usage: "assume one device upgrade (download, install, reboot) takes `DURATION`"},
			&cli.BoolFlag{Name: "json", Usage: "print the plan as one JSON object"},
		}),
		Before: requireFlags(append([]string{"name"}, packageRequired...)...),
		Action: e.rolloutPlanAction,
	}
}

func (e *appEnv) rolloutPlanAction(cCtx *cli.Context) error {
	spec, err := rolloutRequest(cCtx, false)
	if err != nil {
		return err
	}
	if d := cCtx.Duration("upgrade-time"); d < 0 {
		return usageErrorf(cCtx, "--upgrade-time must not be negative, not %s", d)
	}
	st, err := e.openStore(cCtx)
	if err != nil {
		return err
	}
	p, err := plan.Make(cCtx.Context, st, spec.req, spec.ids, plan.Options{Now: time.Now(), UpgradeTime: cCtx.Duration("upgrade-time")})
	if err != nil {
		return err
	}
	if cCtx.Bool("json") {
		return writeJSON(e.out, p)
	}
	_, err = io.WriteString(e.out, renderPlan(p))
	return err
}

// renderPlan is the human form of a plan.
func renderPlan(p plan.Plan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Plan of rollout %s: %s %s (nothing was started)\n", p.Name, p.Type, p.Version)
	line := func(label, format string, args ...any) {
		fmt.Fprintf(&b, "%-10s"+format+"\n", append([]any{label}, args...)...)
	}
	line("Targets", "%d device(s) in %d wave(s)", p.Targets, len(p.Waves))
	line("Left out", "%s", leftOutText(p.LeftOut))
	if len(p.Unknown) > 0 {
		line("Unknown", "%d listed device(s) are not registered: %s", len(p.Unknown), abbreviate(p.Unknown, 5))
	}
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, w := range p.Waves {
		var extra []string
		if w.SuccessThreshold > 0 {
			extra = append(extra, fmt.Sprintf("success >= %g%%", w.SuccessThreshold))
		}
		if w.Approve {
			extra = append(extra, "waits for approval")
		}
		if w.Bake > 0 {
			extra = append(extra, "then bakes "+w.Bake.String())
		}
		fmt.Fprintf(tw, "  wave %d\t%d device(s)\tfrom +%s\tto +%s\t%s\n", w.Number, w.Targets, roundDuration(w.Start),
			roundDuration(w.End), strings.Join(extra, ", "))
	}
	tw.Flush()
	line("Duration", "about %s", roundDuration(p.Duration))
	for i, n := range p.Notes {
		label := ""
		if i == 0 {
			label = "Notes"
		}
		line(label, "%s", n)
	}
	return b.String()
}

// leftOutText lists the devices left out by reason, e.g. "5: 3 up to date, 2 incompatible".
func leftOutText(l ota.LeftOut) string {
	if l.Total() == 0 {
		return "none"
	}
	var parts []string
	for _, r := range ota.LeftOutReasons {
		if n := l.Of(r); n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, strings.ReplaceAll(string(r), "_", " ")))
		}
	}
	return fmt.Sprintf("%d: %s", l.Total(), strings.Join(parts, ", "))
}

// roundDuration rounds a duration for people: to the second under an hour, to the minute
// beyond.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Hour {
		return d.Round(time.Second)
	}
	return d.Round(time.Minute)
}
