package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

const (
	// childReadyTimeout bounds a child's start (a race-enabled test binary
	// creating a CA is the slow case).
	childReadyTimeout = time.Minute
	// childStopTimeout is how long a child may take to exit after its
	// stdin closed before it is killed.
	childStopTimeout = 5 * time.Second
	// childLogTail is how much of a child's log is kept for error messages.
	childLogTail = 16 << 10
)

// spawner starts children: this executable again, with childArg first and
// childEnv set (so a test binary dispatches too, see TestMain).
type spawner struct {
	exe     string
	env     []string
	logsTo  io.Writer // also copy children's stderr here; nil: keep only the tail
	mu      sync.Mutex
	running []*child // guarded by mu
}

func newSpawner(extraEnv []string, logsTo io.Writer) (*spawner, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	env := append(os.Environ(), childEnv+"=1")
	return &spawner{exe: exe, env: append(env, extraEnv...), logsTo: logsTo}, nil
}

// child is one running server process.
type child struct {
	kind  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	info  childInfo
	logs  *tailBuffer
	done  chan struct{} // closed when the process has exited and been reaped
	err   error         // of Wait, once done is closed
}

// start runs a child of kind with args and waits until it serves. On error
// the child is gone.
func (s *spawner) start(ctx context.Context, kind string, args ...string) (*child, error) {
	c := &child{kind: kind, logs: &tailBuffer{max: childLogTail}, done: make(chan struct{})}
	ready := make(chan childInfo, 1)
	c.cmd = exec.Command(s.exe, append([]string{childArg, kind}, args...)...)
	c.cmd.Env = s.env
	var stderr io.Writer = c.logs
	if s.logsTo != nil {
		stderr = io.MultiWriter(c.logs, &prefixWriter{prefix: "[" + kind + "] ", w: s.logsTo})
	}
	c.cmd.Stderr = stderr
	c.cmd.Stdout = &readyWriter{ready: ready, rest: stderr}
	c.cmd.SysProcAttr = ownProcessGroup()
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", kind, err)
	}
	c.stdin = stdin
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", kind, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	s.mu.Lock()
	s.running = append(s.running, c)
	s.mu.Unlock()

	timer := time.NewTimer(childReadyTimeout)
	defer timer.Stop()
	select {
	case c.info = <-ready:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("start %s: exited before serving (%v)%s", kind, c.err, c.logs.excerpt())
	case <-ctx.Done():
		return nil, errors.Join(fmt.Errorf("start %s: %w", kind, context.Cause(ctx)), s.stop(c))
	case <-timer.C:
		return nil, errors.Join(fmt.Errorf("start %s: not serving after %v%s", kind, childReadyTimeout, c.logs.excerpt()), s.stop(c))
	}
}

// stop ends c: its stdin closes (it shuts down gracefully), and after
// childStopTimeout it is killed. It returns once the process is reaped.
func (s *spawner) stop(c *child) error {
	_ = c.stdin.Close()
	timer := time.NewTimer(childStopTimeout)
	defer timer.Stop()
	var err error
	select {
	case <-c.done:
	case <-timer.C:
		_ = c.cmd.Process.Kill()
		<-c.done
		err = fmt.Errorf("stop %s: killed after %v", c.kind, childStopTimeout)
	}
	s.mu.Lock()
	for i, r := range s.running {
		if r == c {
			s.running = append(s.running[:i], s.running[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if err == nil && c.err != nil {
		err = fmt.Errorf("stop %s: %w%s", c.kind, c.err, c.logs.excerpt())
	}
	return err
}

// stopAll stops every running child, the last started first.
func (s *spawner) stopAll() error {
	var errs []error
	for {
		s.mu.Lock()
		n := len(s.running)
		var c *child
		if n > 0 {
			c = s.running[n-1]
		}
		s.mu.Unlock()
		if c == nil {
			return errors.Join(errs...)
		}
		errs = append(errs, s.stop(c))
	}
}

// exited reports whether the child has died.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// readyWriter is a child's stdout: it hands the ready line's childInfo
// over once and copies every other line to rest.
type readyWriter struct {
	ready chan<- childInfo
	rest  io.Writer
	buf   []byte
	sent  bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		if rest, ok := strings.CutPrefix(line, readyPrefix); ok && !w.sent {
			var info childInfo
			if err := json.Unmarshal([]byte(rest), &info); err == nil {
				w.sent = true
				w.ready <- info
				continue
			}
		}
		_, _ = io.WriteString(w.rest, line+"\n")
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	mu  sync.Mutex
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// excerpt returns the last lines of the log, indented after a newline, or
// nothing when it is empty.
func (t *tailBuffer) excerpt() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.b))
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "; its log ends:\n    " + strings.Join(lines, "\n    ")
}

// prefixWriter prefixes each line written to w.
type prefixWriter struct {
	prefix string
	w      io.Writer
	mu     sync.Mutex
	mid    bool // in the middle of a line
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for _, c := range b {
		if !p.mid {
			out = append(out, p.prefix...)
			p.mid = true
		}
		out = append(out, c)
		if c == '\n' {
			p.mid = false
		}
	}
	_, err := p.w.Write(out)
	return len(b), err
}

// controlClient talks to the children's control and admin endpoints.
type controlClient struct {
	hc *http.Client
}

func newControlClient() *controlClient {
	return &controlClient{hc: &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 30 * time.Second}}
}

func (c *controlClient) close() { c.hc.CloseIdleConnections() }

// gc makes the child at addr collect garbage and return memory to the kernel.
func (c *controlClient) gc(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/gc", nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("gc in child %s: %w", addr, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("gc in child %s: status %d", addr, resp.StatusCode)
	}
	return nil
}

// stats asks the child at addr for its childStats.
func (c *controlClient) stats(ctx context.Context, addr string) (childStats, error) {
	var st childStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/stats", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return st, fmt.Errorf("stats of child %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("stats of child %s: %w", addr, err)
	}
	return st, nil
}
