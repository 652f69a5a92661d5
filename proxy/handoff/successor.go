package handoff

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
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
	Stdout, Stderr *os.File // nil: /dev/null
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
	// The child's descriptors 3 and up, as raw duplicates: an *os.File
	// handed to os/exec is put in blocking mode (File.Fd), and blocking
	// mode belongs to the open file description, which this process's
	// sockets share with their duplicates: its reads and accepts would
	// then block threads and ignore deadlines and Close.
	var fds []int
	closeFDs := func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		fds = nil
	}
	defer closeFDs()
	add := func(kind, key, addr string, fd int) {
		m.Files = append(m.Files, entry{Kind: kind, Key: key, Addr: addr, FD: 3 + len(fds)})
		fds = append(fds, fd)
	}
	ours, theirs, err := socketpair(syscall.SOCK_STREAM)
	if err != nil {
		return nil, err
	}
	m.Status = 3
	fds = append(fds, theirs)
	sc, err := fdConn(ours, "status")
	if err != nil {
		return nil, err
	}
	succ := &Successor{s: s, conn: sc, links: map[string]*net.UnixConn{}, exited: make(chan struct{})}
	fail := func(err error) (*Successor, error) {
		succ.conn.Close()
		for _, l := range succ.links {
			l.Close()
		}
		return nil, err
	}

	s.mu.Lock()
	s.forgetClosed()
	for _, us := range s.udps {
		addr := us.conn.LocalAddr().String()
		switch {
		case us.bpf != nil:
			socks, newest, err := us.bpf.mapFDs()
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			add("steer", us.key, addr, socks)
			add("newest", us.key, addr, newest)
		case us.fwd != nil:
			fd, err := dupOf(us.conn)
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			add("udp", us.key, addr, fd)
			mine, child, err := socketpair(syscall.SOCK_DGRAM)
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			setBuffers(child)
			add("link", us.key, addr, child)
			lc, err := fdConn(mine, "link "+us.key)
			if err != nil {
				s.mu.Unlock()
				return fail(err)
			}
			_ = lc.SetReadBuffer(4 << 20)
			succ.links[us.key] = lc
		}
	}
	for _, ts := range s.tcps {
		fd, err := dupOf(ts.ln)
		if err != nil {
			s.mu.Unlock()
			return fail(err)
		}
		add("tcp", ts.key, ts.ln.Addr().String(), fd)
	}
	for _, us := range s.unixs {
		fd, err := dupOf(us.ln)
		if err != nil {
			s.mu.Unlock()
			return fail(err)
		}
		add("unix", us.key, us.key, fd)
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
	stdio := make([]uintptr, 0, 3+len(fds))
	devNull, err := syscall.Open(os.DevNull, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	defer syscall.Close(devNull)
	stdio = append(stdio, uintptr(devNull))
	for _, f := range []*os.File{c.Stdout, c.Stderr} {
		fd := devNull
		if f != nil {
			if fd, err = rawFD(f); err != nil {
				return fail(err)
			}
		}
		stdio = append(stdio, uintptr(fd))
	}
	for _, fd := range fds {
		stdio = append(stdio, uintptr(fd))
	}
	passed := len(fds) - 1 // the status socket aside
	pid, err := syscall.ForkExec(c.Path, append([]string{c.Path}, c.Args...), &syscall.ProcAttr{Env: env, Files: stdio})
	// The child has its copies now (or none): without closing ours, its
	// end of the status socket would never report that it exited.
	closeFDs()
	if err != nil {
		return fail(fmt.Errorf("upgrade: start %s: %w", c.Path, err))
	}
	proc, _ := os.FindProcess(pid) // a child: never fails on Unix
	succ.PID = pid
	s.logger.Info("upgrade: started the new process", zap.String("path", c.Path), zap.Int("pid", succ.PID),
		zap.Int("generation", next), zap.String("mode", string(s.mode)), zap.Int("sockets", passed))
	go func() {
		st, err := proc.Wait()
		if err == nil && !st.Success() {
			err = errors.New(st.String())
		}
		succ.err = err
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
		_ = proc.Signal(syscall.SIGTERM)
		select {
		case <-succ.exited:
		case <-time.After(10 * time.Second):
			_ = proc.Kill()
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
		case <-succ.exited:
			// Its last status line, if any, may still be in the socket.
			select {
			case st, ok := <-lines:
				if ok && st.Error != "" {
					s.reclaim()
					return fail(fmt.Errorf("upgrade: the new process (pid %d) failed: %s", succ.PID, st.Error))
				}
			case <-time.After(100 * time.Millisecond):
			}
			s.reclaim()
			return fail(fmt.Errorf("upgrade: the new process (pid %d) exited before serving: %v", succ.PID, succ.err))
		case <-ctx.Done():
			return stop(fmt.Errorf("upgrade: the new process (pid %d) did not serve in time: %w", succ.PID, ctx.Err()))
		}
	}
}

// Release lets the successor have the UDP sockets: in forward mode this
// process stops reading them and reads only what the successor forwards.
// Call it once this process accepts no new connection. If the successor
// exits later, Reclaim takes them back.
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
	return err
}

// Reclaim makes this process read its UDP sockets again, and in BPF mode
// get new clients' packets, after the successor it released them to has
// exited (see Exited); a later Upgrade may then start another.
func (succ *Successor) Reclaim() {
	s := succ.s
	s.reclaim()
	s.mu.Lock()
	if s.succ == succ {
		s.succ = nil
	}
	s.mu.Unlock()
}

// Exited is closed when the successor process has exited.
func (succ *Successor) Exited() <-chan struct{} { return succ.exited }

// Err is why the successor exited, once Exited is closed.
func (succ *Successor) Err() error {
	select {
	case <-succ.exited:
		return succ.err
	default:
		return nil
	}
}

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
func setBuffers(fd int) {
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4<<20)
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<20)
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
