package broker

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/errgroup"

	"github.com/otaflow/otaflow/internal/protocol"
)

// BenchmarkRelay measures QoS 1 reports relayed from devices to a persistent service
// subscription (the bridge's path through the broker), with sessions in memory and in a
// session store file.
func BenchmarkRelay(b *testing.B) {
	for _, stored := range []bool{false, true} {
		b.Run(fmt.Sprintf("store=%v", stored), func(b *testing.B) {
			benchmarkRelay(b, stored)
		})
	}
}

func benchmarkRelay(b *testing.B, stored bool) {
	const devices = 16
	creds := newMemCreds()
	br, _ := startBroker(b, creds, func(o *Options) {
		o.Logger = slog.New(slog.DiscardHandler)
		if stored {
			o.StorePath = filepath.Join(b.TempDir(), "sessions.db")
		}
	})

	var got atomic.Int64
	sub := mustDial(b, br, persistentService("bench-bridge", nil))
	subscribe(b, sub, protocol.ProgressFilter, func(paho.Client, paho.Message) { got.Add(1) })
	var pubs []paho.Client
	for i := range devices {
		id := fmt.Sprintf("bench-%d", i)
		pubs = append(pubs, mustDial(b, br, deviceConfig(id, creds.add(b, id))))
	}
	payload := `{"id":"c1","type":"firmware","version":"1.1","progress":42,"desc":"downloading"}`
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		for int64(i)-got.Load() >= 512 { // stay within the service's write queue
			time.Sleep(50 * time.Microsecond)
		}
		d := i % devices
		pubs[d].Publish(protocol.ProgressTopic(fmt.Sprintf("bench-%d", d)), 1, false, payload)
	}
	deadline := time.Now().Add(time.Minute)
	for got.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d messages relayed", got.Load(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkColdConnect measures devices connecting to a broker that has not seen them yet (as
// after a restart): each connection costs one argon2id verification. It reports connects per
// second, to set beside the production broker's (BenchmarkAccounts in internal/brokeraccounts).
//
//	go test -run '^$' -bench BenchmarkColdConnect -benchtime 1x ./internal/dev/broker/
func BenchmarkColdConnect(b *testing.B) {
	const devices = 500
	creds := newMemCreds()
	secrets := make([]string, devices)
	for i := range devices {
		secrets[i] = creds.add(b, fmt.Sprintf("cold-%d", i))
	}
	br, _ := startBroker(b, creds, func(o *Options) { o.Logger = slog.New(slog.DiscardHandler) })
	var g errgroup.Group
	g.SetLimit(20)
	b.ResetTimer()
	start := time.Now()
	for i := range devices {
		g.Go(func() error {
			_, err := dial(b, br, deviceConfig(fmt.Sprintf("cold-%d", i), secrets[i]))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(devices/time.Since(start).Seconds(), "connects/s")
}
