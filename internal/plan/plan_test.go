package plan

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/store"
)

// registry is a registry of n targets and some left out.
type registry struct {
	targets int
	left    ota.LeftOut
	known   []string
	// got is the selection asked for.
	got store.Selection
	sel ota.Selector
}

func (r *registry) SelectTargets(_ context.Context, sel ota.Selector, how store.Selection) (ota.TargetSelection, error) {
	r.got, r.sel = how, sel
	return ota.TargetSelection{Targets: r.targets, LeftOut: r.left}, nil
}

func (r *registry) RegisteredDevices(_ context.Context, ids []string) ([]string, error) {
	var out []string
	for _, id := range ids {
		if slices.Contains(r.known, id) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out, nil
}

func request(waves ...ota.Wave) ota.RolloutRequest {
	return ota.RolloutRequest{Name: "fw", Upgrade: ota.UpgradeRequest{Type: "firmware", Version: "1.1"},
		Targets: ota.Targets{Prefix: "d-"}, Waves: waves}
}

func TestMake_TargetsAndLeftOut(t *testing.T) {
	reg := &registry{targets: 20, left: ota.LeftOut{UpToDate: 3, Incompatible: 2}, known: []string{"a", "b"}}
	req := request(ota.Wave{Count: 1}, ota.Wave{Percent: 50, SuccessThreshold: 90, Bake: ota.Duration(time.Hour)}, ota.Wave{Percent: 100, Approve: true})
	req.Upgrade.Compat = &ota.Compatibility{Versions: ">=1.0"}
	req.Targets.List = "fw" // the stand-in the starter sets for an explicit list
	p, err := Make(context.Background(), reg, req, []string{"b", "ghost", "a"}, Options{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if p.Targets != 20 || p.LeftOut != reg.left || !slices.Equal(p.Unknown, []string{"ghost"}) {
		t.Errorf("plan: %d targets, left out %+v, unknown %v", p.Targets, p.LeftOut, p.Unknown)
	}
	var targets []int
	for _, w := range p.Waves {
		targets = append(targets, w.Targets)
	}
	if !slices.Equal(targets, []int{1, 9, 10}) || p.Waves[1].SuccessThreshold != 90 || !p.Waves[2].Approve || p.Waves[1].Bake != time.Hour {
		t.Errorf("waves %+v", p.Waves)
	}
	// The selection is the rollout's, on the explicit IDs instead of a stored list.
	if !slices.Equal(reg.got.IDs, []string{"b", "ghost", "a"}) || reg.got.Key != "" || reg.sel.Filter.List != "" ||
		reg.sel.Compat == nil || reg.sel.VersionKey != "firmware_ver" {
		t.Errorf("selected with %+v, %+v", reg.got, reg.sel)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "wave 3 waits for an approval") {
		t.Errorf("notes %q do not mention the approval", p.Notes)
	}
}

func TestMake_Duration(t *testing.T) {
	midnight := time.Date(2026, 11, 28, 0, 30, 0, 0, time.UTC)
	tests := []struct {
		name      string
		targets   int
		req       func() ota.RolloutRequest
		upgrade   time.Duration
		want      time.Duration
		wantWaves [][2]time.Duration // start, end of each wave
	}{
		{"unbounded, no upgrade time", 100, func() ota.RolloutRequest { return request() }, 0, 0, nil},
		// 60 a minute with 5 s saved up: 6 at once, then one a second; the 10th at +4 s.
		{"rate limit", 10, func() ota.RolloutRequest {
			r := request()
			r.MaxPerMinute = 60
			return r
		}, time.Minute, 64 * time.Second, nil},
		{"in-flight limit", 4, func() ota.RolloutRequest {
			r := request()
			r.MaxInFlight = 2
			return r
		}, 10 * time.Minute, 20 * time.Minute, nil},
		{"bake and soak", 4, func() ota.RolloutRequest {
			r := request(ota.Wave{Count: 2, Bake: ota.Duration(time.Hour)}, ota.Wave{Percent: 100})
			r.Upgrade.Soak = ota.Duration(10 * time.Minute)
			return r
		}, 5 * time.Minute, 90 * time.Minute, [][2]time.Duration{{0, 15 * time.Minute}, {75 * time.Minute, 90 * time.Minute}}},
		// The window opens at 01:00, half an hour after the start.
		{"window", 2, func() ota.RolloutRequest {
			r := request()
			r.Window = &ota.Window{Start: "01:00", End: "02:00", TimeZone: "UTC"}
			return r
		}, time.Minute, 31 * time.Minute, [][2]time.Duration{{30 * time.Minute, 31 * time.Minute}}},
		// 6 a minute, doubling every minute: 7 in the first minute (one every 10 s from -5 s),
		// 11 in the second (every 5 s from +65 s), then every 2.5 s: the 20th at +122.5 s.
		{"ramp", 20, func() ota.RolloutRequest {
			r := request()
			r.Ramp = &ota.Ramp{StartPerMinute: 6, Factor: 2, Step: ota.Duration(time.Minute)}
			return r
		}, 0, 122500 * time.Millisecond, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Make(context.Background(), &registry{targets: tt.targets}, tt.req(), nil, Options{Now: midnight, UpgradeTime: tt.upgrade})
			if err != nil {
				t.Fatal(err)
			}
			if p.Duration != tt.want {
				t.Errorf("duration %s, want %s", p.Duration, tt.want)
			}
			for i, w := range tt.wantWaves {
				if got := p.Waves[i]; got.Start != w[0] || got.End != w[1] {
					t.Errorf("wave %d from %s to %s, want %s to %s", i+1, got.Start, got.End, w[0], w[1])
				}
			}
		})
	}
}
