package ota

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

func TestValidateWebhookURL(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"https://hooks.example.com/otaflow", true},
		{"http://127.0.0.1:8080/x?token=1", true},
		{"ftp://example.com/x", false},
		{"https://", false},
		{"example.com/hook", false},
		{"http://%zz", false},
		{"", false},
	}
	for _, tt := range tests {
		if err := ValidateWebhookURL(tt.url); (err == nil) != tt.ok {
			t.Errorf("ValidateWebhookURL(%q) = %v, want ok %v", tt.url, err, tt.ok)
		}
	}
}

// TestEventsFollowTheSchema: the events OTAflow makes validate against
// docs/events-v1.schema.json, and one that breaks it does not.
func TestEventsFollowTheSchema(t *testing.T) {
	sch, err := jsonschema.NewCompiler().Compile(filepath.Join("..", "..", "docs", "events-v1.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	up := UpgradeFinishedEvent(UpgradeRecord{RunID: "r1", WorkflowID: "ota-pump-1", DeviceID: "pump-1", Rollout: "fw-2", Type: "firmware",
		Version: "1.2", State: StateFailed, Attempt: 3, ErrorCode: -3, ErrorDesc: "install failed"}, at)
	wave := Counts{Started: 2, Succeeded: 2}
	ro := Event{Schema: EventSchema, ID: "rollout/fw-2/run/17/rollout.wave_finished-1", Type: EventRolloutWaveFinished, OccurredAt: at,
		Rollout: &RolloutEvent{Name: "fw-2", Type: "firmware", Version: "1.2", State: RolloutRunning, Wave: 1, Waves: 3, Total: 10,
			Counts: Counts{Started: 4, Succeeded: 2}, WaveCounts: &wave}}
	noRollout := ro
	noRollout.Rollout = nil
	badState := up
	u := *up.Upgrade
	u.State = "exploded"
	badState.Upgrade = &u
	tests := []struct {
		name string
		ev   Event
		ok   bool
	}{
		{"upgrade.finished", up, true},
		{"rollout.wave_finished", ro, true},
		{"a rollout event without its rollout", noRollout, false},
		{"an unknown state", badState, false},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.ev)
		if err != nil {
			t.Fatal(err)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(inst); (err == nil) != tt.ok {
			t.Errorf("%s: validation %v, want ok %v\n%s", tt.name, err, tt.ok, b)
		}
	}
	if up.Stream() != "device/pump-1" || ro.Stream() != "rollout/fw-2" || up.RolloutName() != "fw-2" {
		t.Errorf("streams %q %q, rollout %q", up.Stream(), ro.Stream(), up.RolloutName())
	}
}
