package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
)

// pprofOutput is `go tool pprof -top -nodecount=4` output of a Temporal server profile.
const pprofOutput = `File: server
Build ID: 3f1c0a
Type: cpu
Time: Nov 28, 2026 at 3:30pm (UTC)
Duration: 30s, Total samples = 12.41s (41.37%)
Showing nodes accounting for 4.52s, 36.42% of 12.41s total
Dropped 1203 nodes (cum <= 0.06s)
Showing top 4 nodes out of 612
      flat  flat%   sum%        cum   cum%
     1.62s 13.05% 13.05%      1.62s 13.05%  runtime/internal/syscall.Syscall6
     1.20s  9.67% 22.72%      2.01s 16.20%  runtime.mallocgc
     0.90s  7.25% 29.98%      0.90s  7.25%  runtime.memmove
     0.80s  6.45% 36.42%      3.10s 24.98%  github.com/jackc/pgx/v5/pgproto3.(*Frontend).Receive
`

func TestPProfTopLines(t *testing.T) {
	lines := pprofTopLines(pprofOutput, 2)
	require.Len(t, lines, 4, "%q", lines)
	assert.Equal(t, "    Duration: 30s, Total samples = 12.41s (41.37%)", lines[0])
	assert.Equal(t, []string{"flat", "flat%", "sum%", "cum", "cum%"}, strings.Fields(lines[1]))
	assert.True(t, strings.HasSuffix(lines[2], "runtime/internal/syscall.Syscall6"), lines[2])
	assert.True(t, strings.HasSuffix(lines[3], "runtime.mallocgc"), lines[3])
	for _, l := range lines {
		assert.True(t, strings.HasPrefix(l, "    "), "indented: %q", l)
	}
	// Fewer rows than asked: all of them; no table: the duration alone.
	assert.Len(t, pprofTopLines(pprofOutput, 15), 6)
	assert.Equal(t, []string{"    Duration: 30s, Total samples = 0 (0%)"}, pprofTopLines("Duration: 30s, Total samples = 0 (0%)\n", 15))
}

func TestPProfDir(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	for _, tc := range []struct {
		name        string
		dir         string
		realServers bool
		want        string // "" : no profile
		wantErr     string
	}{
		{name: "no --pprof", dir: ""},
		{name: "no --pprof on real servers", dir: "", realServers: true},
		{name: "real servers", dir: filepath.Join(base, "prof", "a"), realServers: true, want: filepath.Join(base, "prof", "a")},
		{name: "the dev server", dir: filepath.Join(base, "dev"), wantErr: "--pprof needs --real-servers: the dev server"},
		{name: "a file in the way", dir: filepath.Join(file, "x"), realServers: true, wantErr: "cannot make the profile directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pprofDir(tc.dir, tc.realServers)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			if got != "" {
				assert.DirExists(t, got)
			}
		})
	}
	_, err := os.Stat(filepath.Join(base, "dev"))
	assert.True(t, errors.Is(err, os.ErrNotExist), "nothing made for a refused --pprof")
}

// TestBenchPProfOnDevServerExit: --pprof without --real-servers ends the bench command with
// exit code 2 and the reason, before anything starts.
func TestBenchPProfOnDevServerExit(t *testing.T) {
	app := newApp()
	app.Writer, app.ErrWriter = io.Discard, io.Discard
	app.ExitErrHandler = func(*cli.Context, error) {}
	err := app.Run([]string{"devstack", "bench", "--data-dir", t.TempDir(), "--pprof", t.TempDir()})
	var exit cli.ExitCoder
	require.True(t, errors.As(err, &exit), "error %v is no exit code", err)
	assert.Equal(t, 2, exit.ExitCode())
	assert.Contains(t, err.Error(), "start-dev sets it from no flag")
}
