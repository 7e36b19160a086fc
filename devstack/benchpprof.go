package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// bench --pprof DIR profiles the Temporal server during the rollout: a CPU profile of
// pprofLength, from pprofDelay after the rollout starts, written to DIR and summarised by
// `go tool pprof -top`. Only the real server (--real-servers) can be profiled: see
// devServerNoPProf.

// devServerNoPProf says why the dev server cannot be profiled.
const devServerNoPProf = "--pprof needs --real-servers: the dev server (`temporal server start-dev` of the Temporal CLI v1.5.1) " +
	"cannot serve pprof. Its devserver package has a PProfPort option, but start-dev sets it from no flag and builds the " +
	"server's configuration in memory, so no configuration file nor --dynamic-config-value can turn it on. " +
	"The real server has global.pprof.port (deploy/temporal/production.yaml, PPROF_PORT, on 127.0.0.1 only)"

// When and how long the Temporal server's CPU is profiled, from the rollout's start.
const (
	pprofDelay  = 10 * time.Second
	pprofLength = 30 * time.Second
)

// pprofTopN is how many functions the summary shows.
const pprofTopN = 15

// pprofDir checks --pprof: the directory is made now, so that a bad one fails before the stack
// starts.
func pprofDir(dir string, realServers bool) (string, error) {
	if dir == "" {
		return "", nil
	}
	if !realServers {
		return "", fmt.Errorf("%s", devServerNoPProf)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("--pprof %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return "", fmt.Errorf("--pprof: cannot make the profile directory: %w", err)
	}
	return abs, nil
}

// cpuCapture is a CPU profile being taken.
type cpuCapture struct {
	file  string
	from  time.Time // when the profile began
	done  chan struct{}
	err   error
	bytes int64
}

// captureCPU waits delay, then takes a CPU profile of length from the pprof endpoint at
// baseURL (http://host:port) into file. Wait for it with wait.
func captureCPU(ctx context.Context, baseURL, file string, delay, length time.Duration) *cpuCapture {
	c := &cpuCapture{file: file, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			c.err = ctx.Err()
			return
		}
		c.from = time.Now()
		c.bytes, c.err = fetchProfile(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", baseURL, int(length.Seconds())), file, length)
	}()
	return c
}

// wait waits for the profile and returns its error.
func (c *cpuCapture) wait() error {
	<-c.done
	return c.err
}

func fetchProfile(ctx context.Context, url, file string, length time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, length+time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("CPU profile of the Temporal server: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("CPU profile of the Temporal server: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(file)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("write the CPU profile: %w", err)
	}
	return n, nil
}

// pprofServerCode matches the Temporal server's own functions (pprof -show), for the summary
// by cumulative time: the runtime and gRPC frames around them say little.
const pprofServerCode = `^go\.temporal\.io/server/`

// pprofTop runs `go tool pprof -top` on a profile, with more options, and returns its summary
// lines (pprofTopLines).
func pprofTop(ctx context.Context, file string, n int, options ...string) ([]string, error) {
	args := append(append([]string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n)}, options...), file)
	out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof -top %s: %w\n%s", file, err, out)
	}
	return pprofTopLines(string(out), n), nil
}

// pprofTopLines keeps, of `go tool pprof -top` output, the duration and total samples, the
// table's header and its first n rows, indented for the summary.
func pprofTopLines(out string, n int) []string {
	var lines []string
	rows := -1 // -1 until the table's header
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case t == "":
		case strings.HasPrefix(t, "Duration:"):
			lines = append(lines, "    "+t)
		case rows < 0 && strings.HasPrefix(t, "flat ") && strings.Contains(t, "cum%"):
			rows = 0
			lines = append(lines, "    "+l)
		case rows >= 0 && rows < n:
			rows++
			lines = append(lines, "    "+l)
		}
	}
	return lines
}
