package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/otaflow/otaflow/internal/dev/localstack"
)

// Mosquitto starts a Mosquitto broker for tb alone, natively from deploy/mosquitto's
// configuration (localstack.StartMosquitto) with its state in a temporary directory, and
// stops it when tb ends. Its administrator has a random password: use m.AdminURL(). The test
// fails when Mosquitto is not installed (./scripts/test installs it).
//
// Restart it after a Stop or a Kill with RestartMosquitto, on the same state and port. Its
// output is in the file MosquittoLog names.
func Mosquitto(tb testing.TB) *localstack.Mosquitto {
	tb.Helper()
	return MosquittoWith(tb, nil)
}

// MosquittoWith is Mosquitto with options of mosquitto.conf overridden (see
// localstack.MosquittoOptions.Overrides), for a test that needs, say, a small queue limit.
func MosquittoWith(tb testing.TB, overrides map[string]string) *localstack.Mosquitto {
	tb.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return startMosquitto(tb, localstack.MosquittoOptions{
		Dir:           filepath.Join(tb.TempDir(), "mosquitto"),
		AdminPassword: hex.EncodeToString(b),
		Overrides:     overrides,
	})
}

// MosquittoLog is the file that holds the output of a broker started by Mosquitto, restarts
// included.
func MosquittoLog(m *localstack.Mosquitto) string {
	return filepath.Join(filepath.Dir(m.Dir()), "mosquitto.log")
}

// RestartMosquitto starts again, on the same state directory, port and administrator, a
// broker m that has stopped (Stop, Kill); the old one must be gone. It returns the new one,
// stopped when tb ends.
func RestartMosquitto(tb testing.TB, m *localstack.Mosquitto) *localstack.Mosquitto {
	tb.Helper()
	select {
	case <-m.Done():
	default:
		tb.Fatal("testenv: RestartMosquitto: the broker is still running")
	}
	user, password := m.Admin()
	return startMosquitto(tb, localstack.MosquittoOptions{Dir: m.Dir(), Port: m.Port(), AdminUser: user, AdminPassword: password,
		Overrides: m.Overrides()})
}

func startMosquitto(tb testing.TB, opts localstack.MosquittoOptions) *localstack.Mosquitto {
	tb.Helper()
	logFile, err := os.OpenFile(filepath.Join(filepath.Dir(opts.Dir), "mosquitto.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	// (MosquittoLog names the same file.)
	if err != nil {
		tb.Fatal(err)
	}
	opts.Log = logFile
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := localstack.StartMosquitto(ctx, opts)
	if err != nil {
		logFile.Close()
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() {
		if err := m.Stop(); err != nil {
			tb.Logf("testenv: %v", err)
		}
		logFile.Close()
		if tb.Failed() {
			printTail("Mosquitto", logFile.Name())
		}
	})
	return m
}
