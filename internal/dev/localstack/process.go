package localstack

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is a server started by this package: a child process that dies with its parent
// (Linux), whose last output is kept for error messages.
type process struct {
	name string
	cmd  *exec.Cmd
	tail *tailBuffer

	done    chan struct{} // closed once the process has exited and been reaped
	waitErr error         // the exit status, set before done is closed

	stopOnce sync.Once
	stopErr  error
}

// startProcess starts cmd, copying its output to out (which may be nil) and to a tail buffer.
// deathSig is the signal the child gets if this process dies without stopping it (Linux only);
// as, when not nil, runs it as another user (only root can).
func startProcess(name string, cmd *exec.Cmd, out io.Writer, deathSig syscall.Signal, as *runAs) (*process, error) {
	p := &process{name: name, cmd: cmd, tail: newTailBuffer(16 << 10), done: make(chan struct{})}
	var w io.Writer = p.tail
	if out != nil {
		w = io.MultiWriter(out, p.tail)
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = sysProcAttr(deathSig, as)
	// Do not wait forever for output pipes a grandchild may have inherited.
	cmd.WaitDelay = 5 * time.Second

	// The parent-death signal fires when the OS thread that started the child exits, not the
	// process, so the child is started and waited for on a thread locked for its whole life.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			runtime.UnlockOSThread()
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.done)
		// The goroutine exits locked, so Go retires this thread: nothing else runs on it.
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, cmd.Path, err)
	}
	return p, nil
}

// exitError describes how the process ended, with its last output, for a failed start.
func (p *process) exitError() error {
	<-p.done
	status := "exited"
	if p.waitErr != nil {
		status = p.waitErr.Error()
	}
	return fmt.Errorf("%s stopped during startup (%s); its last output:\n%s", p.name, status, indent(p.tail.String()))
}

// stop asks the process to end with sig, waits up to grace, then kills it. It returns an error
// only when the process had to be killed or could not be signalled.
func (p *process) stop(sig os.Signal, grace time.Duration) error {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			p.stopErr = fmt.Errorf("stop %s: %w", p.name, err)
		}
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-p.done:
			return
		case <-timer.C:
		}
		if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			p.stopErr = fmt.Errorf("kill %s: %w", p.name, err)
			return
		}
		<-p.done
		p.stopErr = fmt.Errorf("%s did not stop within %s of %s and was killed", p.name, grace, sig)
	})
	return p.stopErr
}

// runAs is a user a child process runs as.
type runAs struct {
	name     string
	uid, gid uint32
}

// tailBuffer keeps the last bytes written to it. It is safe for concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

// Write implements io.Writer; it never fails.
func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

// String returns the last complete lines kept, at most 40 of them.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	b := bytes.TrimSpace(t.buf)
	t.mu.Unlock()
	lines := strings.Split(string(b), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

func indent(s string) string {
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
