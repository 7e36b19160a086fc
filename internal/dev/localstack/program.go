package localstack

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// BuildPrograms builds OTAflow's commands (for example "worker", "mqttbridge") into dir with
// `go build`, from the module the caller runs in, and returns their paths by name.
func BuildPrograms(ctx context.Context, dir string, names ...string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	paths := map[string]string{}
	for _, name := range names {
		out := filepath.Join(dir, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/otaflow/otaflow/"+name)
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %w\n%s", name, err, b)
		}
		paths[name] = out
	}
	return paths, nil
}

// ProgramOptions says how to run one of OTAflow's programs as a child process.
type ProgramOptions struct {
	// Name names it in errors and logs, e.g. "worker-1".
	Name string
	// Path is the executable; Args its arguments; Env its whole environment.
	Path string
	Args []string
	Env  []string
	// Log receives its output; nil discards it (the last lines still appear in errors).
	Log io.Writer
	// Ready, when set, is text its output contains once it is ready ("bridge running");
	// StartProgram waits for it, at most ReadyTimeout (default one minute).
	Ready        string
	ReadyTimeout time.Duration
}

// Program is a running program started by StartProgram. It gets SIGTERM if the calling
// process dies without stopping it (Linux).
type Program struct {
	opts ProgramOptions
	proc *process
}

// StartProgram starts the program and, with opts.Ready, waits until it says it is ready.
func StartProgram(ctx context.Context, opts ProgramOptions) (*Program, error) {
	cmd := exec.Command(opts.Path, opts.Args...)
	cmd.Env = opts.Env
	ready := &lineWatch{want: []byte(opts.Ready), seen: make(chan struct{})}
	out := io.Writer(ready)
	if opts.Log != nil {
		out = io.MultiWriter(opts.Log, ready)
	}
	proc, err := startProcess(opts.Name, cmd, out, syscall.SIGTERM, nil)
	if err != nil {
		return nil, err
	}
	p := &Program{opts: opts, proc: proc}
	if opts.Ready == "" {
		return p, nil
	}
	timeout := opts.ReadyTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ready.seen:
		return p, nil
	case <-proc.done:
		return nil, proc.exitError()
	case <-timer.C:
		p.Kill()
		return nil, fmt.Errorf("%s did not say %q within %s; its last output:\n%s", opts.Name, opts.Ready, timeout, indent(proc.tail.String()))
	case <-ctx.Done():
		p.Kill()
		return nil, fmt.Errorf("start %s: %w", opts.Name, ctx.Err())
	}
}

// PID is the program's process ID.
func (p *Program) PID() int { return p.proc.cmd.Process.Pid }

// Done is closed once the program has exited.
func (p *Program) Done() <-chan struct{} { return p.proc.done }

// Kill ends the program with SIGKILL, as a crash would, and waits until it is gone.
func (p *Program) Kill() {
	_ = p.proc.cmd.Process.Kill()
	<-p.proc.done
}

// Stop asks the program to end with SIGTERM, killing it after 20 s.
func (p *Program) Stop() error { return p.proc.stop(syscall.SIGTERM, 20*time.Second) }

// Restart starts the program again with the same options.
func (p *Program) Restart(ctx context.Context) (*Program, error) {
	return StartProgram(ctx, p.opts)
}

// lineWatch closes seen once the output written to it contains want.
type lineWatch struct {
	want []byte
	seen chan struct{}
	once sync.Once
	mu   sync.Mutex
	tail []byte
}

func (w *lineWatch) Write(b []byte) (int, error) {
	if len(w.want) == 0 {
		return len(b), nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tail = append(w.tail, b...)
	if bytes.Contains(w.tail, w.want) {
		w.once.Do(func() { close(w.seen) })
		w.tail = nil
		return len(b), nil
	}
	if keep := len(w.want); len(w.tail) > keep {
		w.tail = append(w.tail[:0], w.tail[len(w.tail)-keep:]...)
	}
	return len(b), nil
}
