package e2e

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/dev/system"
	"github.com/otaflow/otaflow/internal/ota"
	"github.com/otaflow/otaflow/internal/protocol"
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
	// The broker holds no subscription of the attacker to the victim's commands, so the
	// command that reached the victim reached no one else.
	if info, ok := e.sys.Broker.Client(attacker.id); !ok || slices.Contains(info.Subscriptions, protocol.CommandTopic(victim.id)) {
		t.Errorf("the attacker's session %+v (found %v) holds the victim's command topic", info, ok)
	}
	select {
	case m := <-stolen:
		t.Fatalf("the attacker received the victim's command on %s", m.Topic())
	default:
	}

	// Publishing as the victim: a forged error and a forged success. The broker drops them
	// and disconnects the attacker.
	forge := func(topic string, v any) {
		b, _ := json.Marshal(v)
		attacker.client.Publish(topic, 1, false, b).WaitTimeout(2 * time.Second)
	}
	forge(protocol.ProgressTopic(victim.id), protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: protocol.CodeInstallFailed})
	forge(protocol.StatusTopic(victim.id), protocol.Status{"firmware_ver": "1.1"})
	require.Eventually(t, func() bool { return !attacker.client.IsConnectionOpen() },
		10*time.Second, 50*time.Millisecond, "the attacker disconnected")

	// Nothing reached the victim's upgrade or records. The victim's own report, sent after
	// the broker dealt with the forgeries (it disconnected the attacker), is the barrier:
	// the broker passes a device's messages to the bridge in order and the bridge handles
	// them in order, so had a forgery got through, the workflow and the records would show
	// it by the time they show this report.
	victim.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 10})
	var mid ota.UpgradeStatus
	require.Eventually(t, func() bool {
		v, err := e.c.QueryWorkflow(e.ctx, run.GetID(), run.GetRunID(), ota.QueryState)
		return err == nil && v.Get(&mid) == nil && mid.Progress == 10
	}, 10*time.Second, 50*time.Millisecond, "the victim's own report in its upgrade")
	if mid.State != ota.StateDownloading || mid.ErrorCode != 0 || mid.Reported != "1.0" {
		t.Fatalf("victim's upgrade after the attack: %+v; want downloading, no error, on 1.0", mid)
	}
	if dev, _ := e.store.GetDevice(e.ctx, victim.id); dev.Reported["firmware_ver"] != "1.0" {
		t.Fatalf("victim's recorded status changed to %v", dev.Reported)
	}
	if ev, _ := e.store.ProgressEvents(e.ctx, victim.id, 10); len(ev) != 1 || ev[0].Progress != 10 {
		t.Fatalf("victim's recorded progress %+v; want only its own report of 10", ev)
	}

	// The victim finishes its own upgrade normally.
	victim.progress(protocol.Progress{ID: cmd.ID, Type: cmd.Type, Version: cmd.Version, Progress: 100})
	victim.status(protocol.Status{"firmware_ver": "1.1"})
	st, err := ota.UpgradeResult(e.ctx, run)
	if err != nil || st.State != ota.StateSucceeded || st.Attempt != 1 {
		t.Fatalf("victim's upgrade: %+v, err %v", st, err)
	}
}
