package deploy

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/otaflow/otaflow/internal/brokeraccounts"
	"github.com/otaflow/otaflow/internal/dev/testenv"
	"github.com/otaflow/otaflow/internal/protocol"
	"github.com/otaflow/otaflow/internal/store"
)

// TestMosquittoCountsAndLogsDrops: when a session's queue reaches max_queued_bytes (here made
// small), the broker drops what does not fit, logs it and counts every dropped message in
// $SYS/broker/publish/messages/dropped, which is what README tells operators to watch.
func TestMosquittoCountsAndLogsDrops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := testenv.MosquittoWith(t, map[string]string{"max_queued_bytes": "2000"})
	st, err := store.Open(ctx, testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	admin, err := brokeraccounts.Dial(ctx, m.AdminURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := brokeraccounts.Provision(ctx, admin, brokeraccounts.Setup{WorkerPassword: "w", BridgePassword: "b", Registry: st}); err != nil {
		t.Fatal(err)
	}
	if err := admin.AddDevice(ctx, "dev-1", "s"); err != nil {
		t.Fatal(err)
	}
	connect := func(clientID, user, password string, onMessage paho.MessageHandler) paho.Client {
		t.Helper()
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + m.Addr()).SetClientID(clientID).SetUsername(user).
			SetPassword(password).SetCleanSession(false).SetAutoReconnect(false).SetDefaultPublishHandler(onMessage))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", clientID, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}

	// The broker's count of dropped messages, as the administrator reads it.
	var dropped atomic.Int64
	adminUser, adminPassword := m.Admin()
	watcher := connect("drop-watcher", adminUser, adminPassword, nil)
	if tok := watcher.Subscribe("$SYS/broker/publish/messages/dropped", 1, func(_ paho.Client, msg paho.Message) {
		if n, err := strconv.ParseInt(string(msg.Payload()), 10, 64); err == nil {
			dropped.Store(n)
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	// The bridge subscribes, goes away, and the device sends 50 reports of about 100 bytes.
	bridge := connect("bridge-1", brokeraccounts.BridgeAccount, "b", nil)
	if tok := bridge.Subscribe(protocol.ProgressFilter, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	bridge.Disconnect(100)
	dev := connect("dev-1", "dev-1", "s", nil)
	const sent = 50
	for i := range sent {
		report := fmt.Sprintf(`{"id":"c1","type":"firmware","version":"1.1","progress":%d,"desc":"downloading"}`, i+1)
		if tok := dev.Publish(protocol.ProgressTopic("dev-1"), 1, false, report); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}

	// $SYS is published every 10 s (sys_interval).
	require.Eventually(t, func() bool { return dropped.Load() > 0 }, 30*time.Second, 100*time.Millisecond,
		"$SYS/broker/publish/messages/dropped never counted a drop")
	log, err := os.ReadFile(testenv.MosquittoLog(m))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Outgoing messages are being dropped for client bridge-1."; !strings.Contains(string(log), want) {
		t.Errorf("the broker's log does not say %q", want)
	}

	// What the bridge gets plus what was counted is everything sent. (No marker message: the
	// queue is full, so it could be dropped too.)
	var got atomic.Int64
	connect("bridge-1", brokeraccounts.BridgeAccount, "b", func(paho.Client, paho.Message) { got.Add(1) })
	require.Eventually(t, func() bool { return got.Load()+dropped.Load() == sent }, 30*time.Second, 100*time.Millisecond,
		"the bridge got %d reports and the broker counted %d dropped, of %d sent", got.Load(), dropped.Load(), sent)
	t.Logf("of %d reports, %d queued and delivered, %d dropped, logged and counted", sent, got.Load(), dropped.Load())
}
