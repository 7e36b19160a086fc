package ota

import (
	"strings"
	"testing"
	"time"
)

func TestRolloutDetails(t *testing.T) {
	base := RolloutRequest{Name: "r", Targets: Targets{Prefix: "d"}, Upgrade: UpgradeRequest{Type: "firmware", Version: "1.1"}}
	for _, tc := range []struct {
		name string
		edit func(*RolloutRequest)
		want []string
	}{
		{"defaults", func(*RolloutRequest) {},
			[]string{"- waves: 100%\n", "- at most 100 upgrades at once, no start rate limit\n",
				"- each upgrade: start timeout 10m0s, silence 5m0s, install 15m0s, deadline 24h0m0s, 3 attempts, backoff 30s\n"}},
		{"everything", func(r *RolloutRequest) {
			r.Waves = []Wave{{Count: 5, Bake: Duration(time.Hour)}, {Percent: 50, SuccessThreshold: 95, Approve: true}, {Percent: 100, Bake: Duration(time.Hour)}}
			r.MaxInFlight, r.MaxPerMinute = 20, 60
			r.Ramp = &Ramp{StartPerMinute: 10, Factor: 2, Step: Duration(time.Minute)}
			r.FailurePercent, r.FailureMinCount, r.FailureAction = 20, 3, ActionAbort
			r.Window = &Window{Start: "01:00", End: "05:00", TimeZone: "Europe/Berlin"}
			r.Upgrade.Soak = Duration(30 * time.Minute)
			r.Continuous = true
		}, []string{"- waves: 5 devices, bake 1h0m0s; approval, 50% (95% must succeed); 100%\n",
			"- at most 20 upgrades at once, starts ramp from 10 a minute, times 2 every 1m0s, up to 60\n",
			"- abort when 20% of the finished upgrades fail (at least 3)\n",
			"- starts only in the window 01:00-05:00 Europe/Berlin\n", ", soak 30m0s\n",
			"- continuous: stays open after its waves until closed\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			tc.edit(&r)
			got := RolloutDetails(r)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("details lack %q:\n%s", w, got)
				}
			}
		})
	}
}
