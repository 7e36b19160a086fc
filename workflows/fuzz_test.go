package workflows

import (
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/otaflow/otaflow/internal/ota"
	"go.temporal.io/sdk/converter"
)

// formatWaves writes waves in the syntax ParseWaves reads.
func formatWaves(waves []ota.Wave) string {
	items := make([]string, len(waves))
	for i, w := range waves {
		if w.Percent > 0 {
			items[i] = strconv.FormatFloat(w.Percent, 'g', -1, 64) + "%"
		} else {
			items[i] = strconv.Itoa(w.Count)
		}
		if w.SuccessThreshold != 0 {
			items[i] += ":" + strconv.FormatFloat(w.SuccessThreshold, 'g', -1, 64)
		}
	}
	return strings.Join(items, ",")
}

// FuzzRolloutRequest checks the request validation that stands between people's input and
// RolloutWorkflow: ParseWaves never panics, refuses with an error about the wave, and what it
// accepts are valid waves that read back the same when written again; a RolloutRequest that
// Validate accepts reaches the workflow unchanged through the default data converter (JSON)
// and validates there too.
func FuzzRolloutRequest(f *testing.F) {
	f.Add("1%,10%,50%,100%", 95.0, 600.0, 10.0, 10.0, 2.0, "01:00", "05:00", "Europe/Berlin")
	f.Add("5,50%:95,100%", 0.0, 0.0, 0.0, 0.0, 0.0, "", "", "")
	f.Add("10%:NaN", 0.0, 0.0, 0.0, 0.0, 0.0, "", "", "")
	f.Add("0%,ten,150%,10%:101,,5:", -1.0, -1.0, 101.0, -1.0, 0.5, "25:00", "1:00", "Mars/Base")
	f.Add("50%,10%,1e2%", 100.0, 1e308, 100.0, 1e308, 1e308, "00:00", "00:00", "../etc/passwd")
	f.Fuzz(func(t *testing.T, waves string, success, maxPerMinute, failurePercent, rampStart, rampFactor float64,
		start, end, tz string) {
		ws, err := ota.ParseWaves(waves)
		if err != nil {
			if !strings.Contains(err.Error(), "wave") {
				t.Fatalf("ParseWaves(%q): the error does not name the wave: %v", waves, err)
			}
			ws = nil
		} else {
			for _, w := range ws {
				if !(w.Percent > 0 && w.Percent <= 100 && w.Count == 0 || w.Percent == 0 && w.Count > 0) ||
					!(w.SuccessThreshold >= 0 && w.SuccessThreshold <= 100) {
					t.Fatalf("ParseWaves(%q) accepted the wave %+v", waves, w)
				}
			}
			if again, err := ota.ParseWaves(formatWaves(ws)); err != nil || !reflect.DeepEqual(again, ws) {
				t.Fatalf("ParseWaves(%q) = %+v, written %q, reads back as %+v (%v)", waves, ws, formatWaves(ws), again, err)
			}
		}
		for i := range ws {
			if ws[i].SuccessThreshold == 0 {
				ws[i].SuccessThreshold = success
			}
		}
		req := rolloutRequest(ws...)
		req.MaxPerMinute, req.FailurePercent = maxPerMinute, failurePercent
		if rampStart != 0 || rampFactor != 0 {
			req.Ramp = &ota.Ramp{StartPerMinute: rampStart, Factor: rampFactor, Step: 1}
		}
		if start != "" || end != "" || tz != "" {
			req.Window = &ota.Window{Start: start, End: end, TimeZone: tz}
		}
		req = req.WithDefaults()
		if req.Validate() != nil {
			return
		}
		dc := converter.GetDefaultDataConverter()
		p, err := dc.ToPayload(req)
		if err != nil {
			t.Fatalf("a valid request cannot be sent to the workflow: %v\n%+v", err, req)
		}
		var got ota.RolloutRequest
		if err := dc.FromPayload(p, &got); err != nil {
			t.Fatalf("the workflow cannot read a valid request: %v", err)
		}
		if !reflect.DeepEqual(got, req) {
			t.Fatalf("the workflow reads\n%+v\nnot\n%+v", got, req)
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("the workflow refuses a valid request: %v", err)
		}
	})
}
