package ota

import (
	"slices"
	"testing"
	"time"
)

func TestSelector_Judge(t *testing.T) {
	pump := map[string]string{"model": "pump-v2"}
	on := func(v string) map[string]string { return map[string]string{"firmware_ver": v} }
	sel := Selector{Version: "1.1", VersionKey: "firmware_ver",
		Compat: &Compatibility{Labels: map[string]string{"model": "pump-v2"}, Versions: ">=1.0,<1.1"}}
	tests := []struct {
		name string
		sel  Selector
		c    Candidate
		want LeftOutReason
	}{
		{"fits", sel, Candidate{Seen: true, Labels: pump, Reported: on("1.0")}, ""},
		{"disabled first", sel, Candidate{Disabled: true, Quarantined: true, Reported: on("3.0")}, LeftDisabled},
		{"never seen", sel, Candidate{Labels: pump}, LeftNeverSeen},
		{"up to date before incompatible", sel, Candidate{Seen: true, Labels: pump, Reported: on("1.1")}, LeftUpToDate},
		{"wrong label", sel, Candidate{Seen: true, Labels: map[string]string{"model": "pump-v1"}, Reported: on("1.0")}, LeftIncompatible},
		{"version outside the range", sel, Candidate{Seen: true, Labels: pump, Reported: on("0.9")}, LeftIncompatible},
		{"no version reported", sel, Candidate{Seen: true, Labels: pump, Reported: map[string]string{"app_ver": "2"}}, LeftIncompatible},
		{"incompatible before quarantined", sel, Candidate{Seen: true, Quarantined: true, Reported: on("1.0")}, LeftIncompatible},
		{"quarantined", sel, Candidate{Seen: true, Quarantined: true, Labels: pump, Reported: on("1.0")}, LeftQuarantined},
		{"up to date included", Selector{Version: "1.1", VersionKey: "firmware_ver", IncludeUpToDate: true},
			Candidate{Seen: true, Reported: on("1.1")}, ""},
		{"no compatibility: anything fits", Selector{Version: "1.1", VersionKey: "firmware_ver"},
			Candidate{Seen: true, Reported: on("garbage")}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.sel.Judge(tt.c); got != tt.want {
				t.Errorf("Judge = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLeftOut(t *testing.T) {
	var l LeftOut
	for _, r := range []LeftOutReason{LeftUpToDate, LeftUpToDate, LeftIncompatible, LeftQuarantined, LeftDisabled, LeftNeverSeen, ""} {
		l.Add(r)
	}
	if got, want := l, (LeftOut{UpToDate: 2, Incompatible: 1, Quarantined: 1, Disabled: 1, NeverSeen: 1}); got != want {
		t.Errorf("LeftOut = %+v, want %+v", got, want)
	}
	if got, want := l.Total(), 6; got != want {
		t.Errorf("Total = %d, want %d", got, want)
	}
	for _, r := range LeftOutReasons {
		if l.Of(r) == 0 {
			t.Errorf("Of(%s) = 0: a reason is not counted", r)
		}
	}
}

func TestWaveEnds(t *testing.T) {
	tests := []struct {
		name  string
		total int
		waves []Wave
		want  []int
	}{
		{"one wave", 7, []Wave{{Percent: 100}}, []int{7}},
		{"percentages round up", 20, []Wave{{Count: 1}, {Percent: 50}, {Percent: 100}}, []int{1, 10, 20}},
		{"counts beyond the total", 3, []Wave{{Count: 2}, {Count: 5}, {Percent: 100}}, []int{2, 3, 3}},
		{"a percentage below the count before it", 10, []Wave{{Count: 5}, {Percent: 10}, {Percent: 100}}, []int{5, 5, 10}},
		{"no targets", 0, []Wave{{Count: 1}, {Percent: 100}}, []int{0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := WaveEnds(tt.total, tt.waves); !slices.Equal(got, tt.want) {
				t.Errorf("WaveEnds(%d) = %v, want %v", tt.total, got, tt.want)
			}
		})
	}
}

func TestRolloutRequest_StartRate(t *testing.T) {
	ramp := &Ramp{StartPerMinute: 10, Factor: 2, Step: Duration(time.Minute)}
	tests := []struct {
		name    string
		req     RolloutRequest
		elapsed time.Duration
		want    float64
	}{
		{"unbounded", RolloutRequest{}, time.Hour, 0},
		{"max only", RolloutRequest{MaxPerMinute: 30}, 0, 30},
		{"ramp start", RolloutRequest{Ramp: ramp}, 59 * time.Second, 10},
		{"ramp two steps", RolloutRequest{Ramp: ramp}, 2 * time.Minute, 40},
		{"ramp capped by max", RolloutRequest{Ramp: ramp, MaxPerMinute: 25}, 10 * time.Minute, 25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.req.StartRate(tt.elapsed); got != tt.want {
				t.Errorf("StartRate(%s) = %g, want %g", tt.elapsed, got, tt.want)
			}
		})
	}
}
