package handoff

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

// Successor is the process an upgrade started, as its predecessor sees it.
type Successor struct {
	PID int

	s      *Sockets
	cmd    *exec.Cmd
	conn   *net.UnixConn            // the status socket
	links  map[string]*net.UnixConn // forward mode: what the successor forwards on, by UDP key
	exited chan struct{}
	err    error // why it exited, once exited is closed
}

// Command is how to start the successor: the binary now at the path this
// process was started from, with this process's arguments.
type Command struct {
	Path           string
	Args           []string // without the program name
	Env            []string // nil: this process's
	Stdout, Stderr io.Writer
}

// Upgrade starts the successor with every socket of s and waits until it
// says it serves (or fails, exits, or ctx ends: then it is stopped and
// this process serves on as before). The successor takes the next
// generation. It is refused while this process's own predecessor still
// drains (two processes at most) and once it has succeeded (this process
// is on its way out).
func (s *Sockets) Upgrade(ctx context.Context, c Command) (*Successor, error) {
	s.mu.Lock()
	if s.succ != nil {
		s.mu.Unlock()
		return nil, errors.New("upgrade: this process has handed over already and is draining")
	}
	s.mu.Unlock()
	if s.pred != nil {
		select {
		case <-s.pred.exited:
		default:
			return nil, fmt.Errorf("upgrade: the previous process (pid %d) is still draining its connections; try again once it has exited (upgrade_grace bounds how long that takes)", s.pred.pid)
		}
	}
	next := (s.gen + 1) % (quiclb.MaxGeneration + 1)
	m := manifest{Generation: next, Mode: s.mode, Parent: os.Getpid()}
	var files []*os.File // the child's, closed here once it started
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	add := func(kind, key, addr string, f *os.File) {
		m.Files = append(m.Files, entry{Kind: kind, Key: key, Addr: addr, FD: 3 + len(files)})
		files = append(files, f)
	}
	ours, theirs, err := socketpair(syscall.SOCK_STREAM, "status")
	if err != nil {
		return nil, err
	}
	m.Status = 3
	files = append(files, theirs)
	sc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, err
	}
	succ := &Successor{s: s, conn: sc.(*net.UnixConn), links: map[string]*net.UnixConn{}, exited: make(chan struct{})}
	fail := func(err error) (*Successor, error) {
		succ.conn.Close()
		for _, l := range succ.links {
			l.Close()
		}
		return nil, err
	}

	s.mu.Lock()
	for _, us := range s.udps {
		addr := us.conn.LocalAddr().String()
		switch {
		case us.bpf != nil:
			f, err := us.bpf.mapFile()
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			add("steer", us.key, addr, f)
		case us.fwd != nil:
			f, err := us.conn.File()
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			add("udp", us.key, addr, f)
			mine, child, err := socketpair(syscall.SOCK_DGRAM, "link "+us.key)
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			lc, err := net.FileConn(mine)
			mine.Close()
			if err != nil {
				child.Close()
				s.mu.Unlock()
				return fail(err)
			}
			succ.links[us.key] = lc.(*net.UnixConn)
			setBuffers(succ.links[us.key], child)
			add("link", us.key, addr, child)
		}
	}
	for _, ts := range s.tcps {
		f, err := fileOf(ts.ln)
		if err != nil {
			s.mu.Unlock()
			return fail(err)
		}
		add("tcp", ts.key, ts.ln.Addr().String(), f)
	}
	for _, us := range s.unixs {
		f, err := us.ln.File()
		if err != nil {
			s.mu.Unlock()
			return fail(err)
		}
		add("unix", us.key, us.key, f)
	}
	s.mu.Unlock()

	b, err := json.Marshal(m)
	if err != nil {
		return fail(err)
	}
	env := c.Env
	if env == nil {
		env = os.Environ()
	}
	env = append(withoutVar(env, EnvVar), EnvVar+"="+string(b))
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env, cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = env, c.Stdout, c.Stderr, files
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("upgrade: start %s: %w", c.Path, err))
	}
	succ.cmd, succ.PID = cmd, cmd.Process.Pid
	s.logger.Info("upgrade: started the new process", zap.String("path", c.Path), zap.Int("pid", succ.PID),
		zap.Int("generation", next), zap.String("mode", string(s.mode)), zap.Int("sockets", len(files)-1))
	go func() {
		succ.err = cmd.Wait()
		close(succ.exited)
	}()

	lines := make(chan status, 1)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(succ.conn)
		for sc.Scan() {
			var st status
			if json.Unmarshal(sc.Bytes(), &st) == nil {
				lines <- st
				if st.Ready || st.Error != "" {
					return
				}
			}
		}
	}()
	stop := func(why error) (*Successor, error) {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-succ.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-succ.exited
		}
		s.reclaim()
		return fail(why)
	}
	for {
		select {
		case st, ok := <-lines:
			switch {
			case !ok:
				<-succ.exited
				s.reclaim()
				return fail(fmt.Errorf("upgrade: the new process (pid %d) exited before serving: %v", succ.PID, succ.err))
			case st.Error != "":
				<-succ.exited
				s.reclaim()
				return fail(fmt.Errorf("upgrade: the new process (pid %d) failed: %s", succ.PID, st.Error))
			case st.Ready:
				s.mu.Lock()
				s.succ = succ
				s.mu.Unlock()
				return succ, nil
			}
		case <-ctx.Done():
			return stop(fmt.Errorf("upgrade: the new process (pid %d) did not serve in time: %w", succ.PID, ctx.Err()))
		}
	}
}

// Release lets the successor have the UDP sockets: in forward mode this
// process stops reading them and reads only what the successor forwards.
// Call it once this process accepts no new connection. If the successor
// exits later, this process reads its sockets again (for the connections
// it has; it accepts no new ones).
func (succ *Successor) Release() error {
	s := succ.s
	s.mu.Lock()
	for _, us := range s.udps {
		if us.fwd != nil {
			if l := succ.links[us.key]; l != nil {
				us.fwd.release(l)
			}
		}
	}
	s.mu.Unlock()
	b, _ := json.Marshal(status{Released: true})
	_, err := succ.conn.Write(append(b, '\n'))
	go func() {
		<-succ.exited
		s.logger.Error("upgrade: the new process exited while this one drains; it serves its open connections and accepts none (restart roamgate)",
			zap.Int("pid", succ.PID), zap.Error(succ.err))
		s.reclaim()
	}()
	return err
}

// Exited is closed when the successor process has exited.
func (succ *Successor) Exited() <-chan struct{} { return succ.exited }

// reclaim makes this process read its UDP sockets again, and in BPF mode
// be the newest, after a successor failed or exited.
func (s *Sockets) reclaim() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, us := range s.udps {
		if us.fwd != nil {
			us.fwd.resume()
		}
		if us.bpf != nil {
			if err := us.bpf.serving(s.gen); err != nil {
				s.logger.Warn("upgrade: steering back to this process", zap.String("udp", us.key), zap.Error(err))
			}
		}
	}
}

// setBuffers gives a link room for bursts: 4 MiB each way (the kernel caps
// it at net.core.wmem_max/rmem_max).
func setBuffers(mine *net.UnixConn, theirs *os.File) {
	_ = mine.SetReadBuffer(4 << 20)
	_ = mine.SetWriteBuffer(4 << 20)
	if rc, err := theirs.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4<<20)
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<20)
		})
	}
}

func withoutVar(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
