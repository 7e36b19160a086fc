package main

import (
	"context"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestTargets(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    []string // addresses
		wantErr string
	}{
		{name: "compose settings", env: map[string]string{
			"TEMPORAL_ADDRESS": "temporal:7233",
			"DATABASE_URL":     "postgres://otaflow:secret@postgres:5432/otaflow?sslmode=disable",
			"MQTT_URL":         "tcp://otaflow-worker:secret@mosquitto:1883",
		}, want: []string{"temporal:7233", "postgres:5432", "mosquitto:1883"}},
		{name: "default ports", env: map[string]string{
			"DATABASE_URL": "postgresql://db.internal/otaflow",
			"MQTT_URL":     "mqtts://broker.internal",
		}, want: []string{"db.internal:5432", "broker.internal:8883"}},
		{name: "nothing set", env: map[string]string{}, wantErr: "nothing to check"},
		{name: "bad Temporal address", env: map[string]string{"TEMPORAL_ADDRESS": "temporal"}, wantErr: "not host:port"},
		{name: "unknown scheme", env: map[string]string{"MQTT_URL": "http://x"}, wantErr: "unsupported scheme"},
		{name: "password stays secret", env: map[string]string{"DATABASE_URL": "mysql://u:hunter2@h/db"}, wantErr: "unsupported scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, err := targets(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tg := range ts {
				got = append(got, tg.addr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("targets = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := down.Addr().String()
	down.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := check(ctx, []target{{"up", up.Addr().String()}}); err != nil {
		t.Fatalf("a listening server: %v", err)
	}
	err = check(ctx, []target{{"up", up.Addr().String()}, {"PostgreSQL (DATABASE_URL)", downAddr}})
	if err == nil || !strings.Contains(err.Error(), "PostgreSQL (DATABASE_URL) at "+downAddr) {
		t.Fatalf("a closed port: %v, want an error naming it", err)
	}
}
