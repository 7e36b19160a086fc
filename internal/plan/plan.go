// Package plan works out what a rollout would do, without starting anything: its targets
// and waves, the devices it would leave out and why, and how long it is expected to take.
// It selects the targets with the store's SelectTargets and splits them with ota.WaveEnds,
// as the rollout's pre-flight does, so that the plan shows what the rollout then does.
package plan

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// Registry is what a plan reads of the device registry.
type Registry interface {
	SelectTargets(ctx context.Context, sel ota.Selector, how store.Selection) (ota.TargetSelection, error)
	RegisteredDevices(ctx context.Context, ids []string) ([]string, error)
}

// Options are the assumptions of a plan's timing.
type Options struct {
	// Now is when the rollout would start; windows are judged from it.
	Now time.Time
	// UpgradeTime is how long one device upgrade is assumed to take (download, install,
	// reboot; the soak comes on top); 0 counts only what the rollout itself decides.
	UpgradeTime time.Duration
}

// Wave is one wave of a plan.
type Wave struct {
	Number           int     `json:"number"`
	Targets          int     `json:"targets"`
	SuccessThreshold float64 `json:"success_threshold,omitempty"`
	Approve          bool    `json:"approve,omitempty"`
	// Start and End are when the wave is expected to start its first device and to end
	// (its last upgrade ended, soak included), after the rollout's start; Bake follows it.
	Start time.Duration `json:"start"`
	End   time.Duration `json:"end"`
	Bake  time.Duration `json:"bake,omitempty"`
}

// Plan is what a rollout would do.
type Plan struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Version string `json:"version"`
	// Targets are the devices the rollout would upgrade, Waves how it would split them.
	Targets int    `json:"targets"`
	Waves   []Wave `json:"waves"`
	// LeftOut counts the devices the targets match that it would leave out, by reason.
	LeftOut ota.LeftOut `json:"left_out"`
	// Unknown lists the IDs of an explicit device list that are not registered.
	Unknown []string `json:"unknown,omitempty"`
	// Duration is how long the rollout is expected to take, from its start to the end of
	// its last wave; Notes say what it does and does not include.
	Duration    time.Duration `json:"duration"`
	UpgradeTime time.Duration `json:"upgrade_time"`
	Notes       []string      `json:"notes,omitempty"`
	Continuous  bool          `json:"continuous,omitempty"`
}

// Make plans the rollout req (ids is its explicit device list, nil without one).
func Make(ctx context.Context, reg Registry, req ota.RolloutRequest, ids []string, o Options) (Plan, error) {
	req = req.WithDefaults()
	sel := req.Selector()
	if ids != nil {
		sel.Filter.List = "" // the list the rollout would store: its devices are ids
	}
	found, err := reg.SelectTargets(ctx, sel, store.Selection{Rollout: req.Name, IDs: ids})
	if err != nil {
		return Plan{}, fmt.Errorf("plan rollout %s: %w", req.Name, err)
	}
	p := Plan{Name: req.Name, Type: req.Upgrade.Type, Version: req.Upgrade.Version, Targets: found.Targets,
		LeftOut: found.LeftOut, UpgradeTime: o.UpgradeTime, Continuous: req.Continuous}
	if ids != nil {
		known, err := reg.RegisteredDevices(ctx, ids)
		if err != nil {
			return Plan{}, fmt.Errorf("plan rollout %s: %w", req.Name, err)
		}
		for _, id := range ids {
			if _, ok := slices.BinarySearch(known, id); !ok {
				p.Unknown = append(p.Unknown, id)
			}
		}
	}
	prev := 0
	for i, end := range ota.WaveEnds(found.Targets, req.Waves) {
		w := req.Waves[i]
		p.Waves = append(p.Waves, Wave{Number: i + 1, Targets: end - prev, SuccessThreshold: w.SuccessThreshold, Approve: w.Approve})
		if i < len(req.Waves)-1 {
			p.Waves[i].Bake = w.Bake.Std()
		}
		prev = end
	}
	p.Duration = schedule(req, p.Waves, o)
	p.Notes = notes(req, p, o)
	return p, nil
}

// schedule works out when each wave starts and ends, as the rollout starts devices: within
// the in-flight limit, at the start rate (ramp and burst included), inside the window; a wave
// ends when its last upgrade has (soak included), and the next starts after its bake. It
// sets the waves' times and returns the whole duration. Approvals take no time here.
func schedule(req ota.RolloutRequest, waves []Wave, o Options) time.Duration {
	start := o.Now
	if start.IsZero() {
		start = time.Now()
	}
	at := start                        // the earliest next start
	var next time.Time                 // the rate limit's next start (ota.RateBurst of saving)
	ends := make([]time.Time, 0, 1024) // running upgrades' ends, in start order
	each := o.UpgradeTime + req.Upgrade.Soak.Std()
	for i := range waves {
		w := &waves[i]
		w.Start = at.Sub(start)
		waveEnd := at
		for n := 0; n < w.Targets; n++ {
			s := at
			if len(ends) >= req.MaxInFlight {
				// The oldest running upgrade ends first (all take the same time).
				s = later(s, ends[len(ends)-req.MaxInFlight])
			}
			for {
				if req.Window != nil && !req.Window.Contains(s) {
					s = req.Window.NextOpen(s)
				}
				rate := req.StartRate(s.Sub(start))
				if rate <= 0 {
					break
				}
				if floor := s.Add(-ota.RateBurst); next.Before(floor) {
					next = floor
				}
				if next.After(s) {
					s = next
					continue
				}
				next = next.Add(time.Duration(float64(time.Minute) / rate))
				break
			}
			if n == 0 {
				w.Start = s.Sub(start)
			}
			at = s
			end := s.Add(each)
			ends = append(ends, end)
			if len(ends) > 2*req.MaxInFlight {
				ends = slices.Delete(ends, 0, len(ends)-req.MaxInFlight)
			}
			waveEnd = later(waveEnd, end)
		}
		w.End = waveEnd.Sub(start)
		at = waveEnd.Add(w.Bake)
		ends = ends[:0]
	}
	if len(waves) == 0 {
		return 0
	}
	return waves[len(waves)-1].End
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// notes say what the duration rests on, and what the rollout will wait for that no plan
// knows.
func notes(req ota.RolloutRequest, p Plan, o Options) []string {
	var out []string
	if o.UpgradeTime == 0 {
		out = append(out, "the devices' own upgrade time is not included (give --upgrade-time to assume one)")
	} else {
		out = append(out, fmt.Sprintf("each upgrade is assumed to take %s", o.UpgradeTime))
	}
	if req.Upgrade.Soak > 0 {
		out = append(out, fmt.Sprintf("each device soaks %s after its install before it counts; a wave waits for its last one", req.Upgrade.Soak))
	}
	for _, w := range p.Waves {
		if w.Approve {
			out = append(out, fmt.Sprintf("wave %d waits for an approval (starter rollout approve %s): the wait is not included", w.Number, req.Name))
		}
	}
	if req.Window != nil {
		out = append(out, fmt.Sprintf("devices start only in the window %s-%s %s", req.Window.Start, req.Window.End, req.Window.TimeZone))
	}
	if req.Continuous {
		out = append(out, fmt.Sprintf("continuous: after its waves the rollout stays open for devices that come to match, until `starter rollout close %s`", req.Name))
	}
	if req.FailurePercent > 0 {
		out = append(out, fmt.Sprintf("it pauses or aborts (%s) if %.1f%% of the finished devices fail (at least %d)", req.FailureAction, req.FailurePercent, req.FailureMinCount))
	}
	return out
}
