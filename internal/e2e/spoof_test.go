package e2e

import (
	"encoding/json"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/system"
)

// TestSpoofingDeviceCannotTouchAnotherUpgrade: a device with valid credentials tries to
// subscribe to another device's commands and to publish its progress and status. The broker
// refuses all of it, and the victim's upgrade goes on unaffected.
func TestSpoofingDeviceCannotTouchAnotherUpgrade(t *testing.T) {
	e := newEnv(t, system.Config{})
	victim := e.scriptedDevice("victim-1", protocol.Status{"firmware_ver": "1.0"})
	attacker := e.scriptedDevice("attacker-1", protocol.Status{"firmware_ver": "1.0"})

	// Subscribing to the victim's command topic is refused (SUBACK 0x80).
	stolen := make(chan paho.Message, 4)
	tok := attacker.client.Subscribe(protocol.CommandTopic(victim.id), 1, func(_ paho.Client, m paho.Message) { stolen <- m })
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("subscribe not answered")
	}
	if codes := tok.(*paho.SubscribeToken).Result(); codes[protocol.CommandTopic(victim.id)] != 0x80 {
		t.Errorf("subscribing to another device's commands answered %v, want 0x80 (refused)", codes)
	}

	run, err := ota.StartDeviceUpgrade(e.ctx, e.c, e.request(victim.id))
	if err != nil {
		t.Fatal(err)
	}
	cmd := victim.command()
	select {
	case m := <-stolen:
		t.Fatalf("the attacker received the victim's command on %s", m.Topic())
	case <-time.After(300 * time.Millisecond):
	}

	// Publishing as the victim: a forged error and a forged success. The broker drops them
	// and disconnects the attacker.
	forge := func(topic string, v any) {
		b, _ := json.Marshal(v)
		attacker.client.Publish(topic, 1, false, b).WaitTimeout(2 * time.Second)
	}
	forge(protocol.ProgressTopic(victim.id), protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: protocol.CodeInstallFailed})
	forge(protocol.StatusTopic(victim.id), protocol.Status{"firmware_ver": "1.1"})
	waitFor(t, 10*time.Second, "the attacker disconnected", func() bool { return !attacker.client.IsConnectionOpen() })

	// Nothing reached the victim's upgrade or records.
	time.Sleep(500 * time.Millisecond)
	v, err := e.c.QueryWorkflow(e.ctx, run.GetID(), run.GetRunID(), ota.QueryState)
	if err != nil {
		t.Fatal(err)
	}
	var mid ota.UpgradeStatus
	if err := v.Get(&mid); err != nil {
		t.Fatal(err)
	}
	if mid.State != ota.StateSent || mid.ErrorCode != 0 || mid.Reported != "1.0" {
		t.Fatalf("victim's upgrade after the attack: %+v; want still sent, no error, on 1.0", mid)
	}
	if dev, _ := e.store.GetDevice(e.ctx, victim.id); dev.Reported["firmware_ver"] != "1.0" {
		t.Fatalf("victim's recorded status changed to %v", dev.Reported)
	}
	if ev, _ := e.store.ProgressEvents(e.ctx, victim.id, 10); len(ev) != 0 {
		t.Fatalf("forged progress recorded for the victim: %+v", ev)
	}

	// The victim finishes its own upgrade normally.
	victim.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
	victim.status(protocol.Status{"firmware_ver": "1.1"})
	st, err := ota.UpgradeResult(e.ctx, run)
	if err != nil || st.State != ota.StateSucceeded || st.Attempt != 1 {
		t.Fatalf("victim's upgrade: %+v, err %v", st, err)
	}
}
