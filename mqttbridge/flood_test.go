package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/otaflow/otaflow/internal/dev/testenv"
)

// TestFloodFlagsChecked: a flood limit that makes no sense stops the bridge at start with a
// usage error naming it (exit code 2).
func TestFloodFlagsChecked(t *testing.T) {
	for _, args := range [][]string{
		{"--flood-rate", "-1"},
		{"--flood-burst", "0", "--flood-rate", "0.5", "--flood-interval", "10ms"},
	} {
		app := newApp()
		app.ExitErrHandler = func(*cli.Context, error) {} // the error is the test's, not os.Exit's
		err := app.RunContext(context.Background(), append([]string{"mqttbridge",
			"--mqtt-url", "tcp://otaflow-bridge:x@127.0.0.1:1", "--database-url", databaseURL(t),
			"--temporal-address", testenv.TemporalAddress(), "--temporal-namespace", testenv.TemporalNamespace()}, args...))
		var exit cli.ExitCoder
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(err.Error(), "flood") {
			t.Errorf("%v: %v, want exit code 2 naming the flood limit", args, err)
		}
	}
}
