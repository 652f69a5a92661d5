package handoff

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

// EnvVar names the environment variable through which a process hands its
// sockets to its successor: a JSON manifest of the inherited descriptors.
const EnvVar = "ROAMGATE_HANDOFF"

// Mode is how the packets of the old process's QUIC connections reach it
// once its successor serves the same UDP ports.
type Mode string

const (
	// Auto is BPF where this process may load BPF programs, else Forward.
	Auto Mode = "auto"
	// BPF: each process has its own socket in one SO_REUSEPORT group, and
	// an SK_REUSEPORT program (package steer) picks the socket of the
	// generation a packet's connection ID names. Packets take no detour.
	BPF Mode = "bpf"
	// Forward: the processes share one socket, read by the newest, which
	// forwards older generations' packets to their process over a unix
	// socket. It needs no privilege; each packet is read with one syscall
	// (quic-go's batch reads and GSO are off), and forwarded ones with two
	// more.
	Forward Mode = "forward"
)

// ParseMode reads a Mode; "" is Auto.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return Auto, nil
	case Auto, BPF, Forward:
		return m, nil
	}
	return "", fmt.Errorf("unknown upgrade steering %q (want auto, bpf or forward)", s)
}

// manifest is what a process tells its successor about the descriptors it
// passes (fd 3 and up).
type manifest struct {
	Generation int     `json:"generation"` // the successor's
	Mode       Mode    `json:"mode"`
	Parent     int     `json:"parent"` // the predecessor's process ID
	Status     int     `json:"status"` // the status socket's descriptor
	Files      []entry `json:"files"`
}

// entry is one passed descriptor.
type entry struct {
	Kind string `json:"kind"` // "udp", "tcp", "unix", "steer" and "newest" (BPF maps of a UDP address), "link" (forward mode)
	Key  string `json:"key"`  // the address or path as the listener asked for it
	Addr string `json:"addr"` // the bound address
	FD   int    `json:"fd"`
}

// Sockets are a process's listening sockets: inherited from its
// predecessor in a binary upgrade, bound fresh otherwise. It implements
// proxy.Sockets. A socket is known by the address it was asked for (port
// 0 included), so a successor with the same configuration asks for, and
// gets, the same sockets.
type Sockets struct {
	logger *zap.Logger
	mode   Mode
	gen    int

	inherited map[string]inherited // by kind+" "+key
	pred      *predecessor         // nil in a first process

	mu    sync.Mutex
	udps  []*udpSocket
	tcps  []*tcpSocket
	unixs []*unixSocket
	succ  *Successor // the upgrade in progress or done; nil before
}

type inherited struct {
	entry
	file *os.File
}

type udpSocket struct {
	key  string
	conn *net.UDPConn // the socket this process's QUIC transport uses
	fwd  *fwdConn     // forward mode
	bpf  *bpfSocket   // BPF mode
}

type tcpSocket struct {
	key string
	ln  net.Listener
}

type unixSocket struct {
	key string
	ln  *net.UnixListener
}

// New returns the sockets of this process: its predecessor's when the
// environment has a handoff manifest (which it then removes, so no child
// takes it for its own), else none yet, in mode (Auto resolved here).
func New(mode Mode, logger *zap.Logger) (*Sockets, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	s := &Sockets{logger: logger.Named("upgrade"), inherited: map[string]inherited{}}
	v, ok := os.LookupEnv(EnvVar)
	if !ok {
		m, why := resolve(mode)
		s.mode = m
		s.logger.Info("upgrade steering", zap.String("mode", string(m)), zap.String("why", why))
		return s, nil
	}
	os.Unsetenv(EnvVar)
	var m manifest
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		return nil, fmt.Errorf("upgrade: %s: %w", EnvVar, err)
	}
	if m.Generation < 0 || m.Generation > quiclb.MaxGeneration {
		return nil, fmt.Errorf("upgrade: %s: generation %d out of range", EnvVar, m.Generation)
	}
	s.mode, s.gen = m.Mode, m.Generation
	for _, e := range m.Files {
		s.inherited[e.Kind+" "+e.Key] = inherited{entry: e, file: os.NewFile(uintptr(e.FD), e.Kind+" "+e.Key)}
	}
	pred, err := newPredecessor(m, s.logger)
	if err != nil {
		s.CloseUnused()
		return nil, err
	}
	s.pred = pred
	s.logger.Info("taking over from the previous process", zap.Int("pid", m.Parent), zap.Int("generation", s.gen),
		zap.String("mode", string(s.mode)), zap.Int("sockets", len(m.Files)))
	return s, nil
}

// resolve turns Auto into the mode this process can use, and says why.
func resolve(mode Mode) (Mode, string) {
	switch mode {
	case BPF:
		if err := bpfSupported(); err != nil {
			return Forward, "bpf asked for but not available: " + err.Error()
		}
		return BPF, "configured"
	case Forward:
		return Forward, "configured"
	}
	if err := bpfSupported(); err != nil {
		return Forward, "bpf not available: " + err.Error()
	}
	return BPF, "bpf available"
}

// Mode is the steering mode in use.
func (s *Sockets) Mode() Mode { return s.mode }

// Generation is the process generation this process's connection IDs
// carry (proxy.Options.Generation).
func (s *Sockets) Generation() int { return s.gen }

// Inherited says whether this process took over from a predecessor.
func (s *Sockets) Inherited() bool { return s.pred != nil }

func (s *Sockets) take(kind, key string) (inherited, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.inherited[kind+" "+key]
	if ok {
		delete(s.inherited, kind+" "+key)
	}
	return in, ok
}

// ListenUDP binds, or takes over, the UDP socket for address.
func (s *Sockets) ListenUDP(address string) (*net.UDPConn, error) {
	us := &udpSocket{key: address}
	switch s.mode {
	case BPF:
		b, err := s.listenBPF(address)
		if err != nil {
			return nil, err
		}
		us.conn, us.bpf = b.conn, b
	default:
		if in, ok := s.take("udp", address); ok {
			pc, err := net.FilePacketConn(in.file)
			in.file.Close()
			if err != nil {
				return nil, fmt.Errorf("upgrade: inherited udp %s: %w", address, err)
			}
			us.conn = pc.(*net.UDPConn)
		} else {
			ua, err := net.ResolveUDPAddr("udp", address)
			if err != nil {
				return nil, fmt.Errorf("listen udp %s: %w", address, err)
			}
			if us.conn, err = net.ListenUDP("udp", ua); err != nil {
				return nil, err
			}
		}
	}
	s.mu.Lock()
	s.udps = append(s.udps, us)
	s.mu.Unlock()
	return us.conn, nil
}

func (s *Sockets) udp(conn *net.UDPConn) *udpSocket {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, us := range s.udps {
		if us.conn == conn {
			return us
		}
	}
	return nil
}

// PacketConn is what the QUIC transport on conn uses: conn itself in BPF
// mode, a forwarding conn in forward mode (which, in a successor, reads
// nothing until the predecessor has let go of the socket).
func (s *Sockets) PacketConn(conn *net.UDPConn) (net.PacketConn, error) {
	us := s.udp(conn)
	if us == nil {
		return nil, errors.New("upgrade: a UDP socket these sockets did not bind")
	}
	if s.mode == BPF {
		return conn, nil
	}
	var hold <-chan struct{}
	if s.pred != nil {
		hold = s.pred.released
	}
	fwd := newFwdConn(conn, s.gen, hold, s.logger)
	s.mu.Lock()
	us.fwd = fwd // Upgrade reads it under the lock
	s.mu.Unlock()
	if s.pred != nil {
		if in, ok := s.take("link", us.key); ok {
			c, err := net.FileConn(in.file)
			in.file.Close()
			if err != nil {
				return nil, fmt.Errorf("upgrade: link for %s: %w", us.key, err)
			}
			uc := c.(*net.UnixConn)
			raw, err := uc.SyscallConn()
			if err != nil {
				uc.Close()
				return nil, err
			}
			us.fwd.link.Store(&link{conn: uc, raw: raw, gen: s.pred.gen, logger: s.logger})
		}
	}
	return us.fwd, nil
}

// Serving is told that conn's QUIC transport accepts connections: in BPF
// mode, new clients' packets now go to conn.
func (s *Sockets) Serving(conn *net.UDPConn) error {
	us := s.udp(conn)
	if us == nil || us.bpf == nil {
		return nil
	}
	return us.bpf.serving(s.gen)
}

// Closing forgets conn, which is being closed for good, and closes what
// was kept for it (BPF maps, a forwarding link).
func (s *Sockets) Closing(conn *net.UDPConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.udps = slices.DeleteFunc(s.udps, func(us *udpSocket) bool {
		if us.conn != conn {
			return false
		}
		if us.bpf != nil {
			us.bpf.close()
		}
		if us.fwd != nil {
			if l := us.fwd.link.Load(); l != nil {
				l.conn.Close()
			}
		}
		return true
	})
}

// ListenTCP binds, or takes over, the TCP listener for address.
func (s *Sockets) ListenTCP(address string) (net.Listener, error) {
	var ln net.Listener
	if in, ok := s.take("tcp", address); ok {
		l, err := net.FileListener(in.file)
		in.file.Close()
		if err != nil {
			return nil, fmt.Errorf("upgrade: inherited tcp %s: %w", address, err)
		}
		ln = l
	} else {
		l, err := net.Listen("tcp", address)
		if err != nil {
			return nil, err
		}
		ln = l
	}
	s.mu.Lock()
	s.tcps = append(s.tcps, &tcpSocket{key: address, ln: ln})
	s.mu.Unlock()
	return ln, nil
}

// ListenUnix binds, or takes over, the unix stream socket at path. Closing
// the listener leaves the file, which a successor may be listening on:
// removing it is the caller's, when it is the last.
func (s *Sockets) ListenUnix(path string) (*net.UnixListener, bool, error) {
	var ln *net.UnixListener
	in, took := s.take("unix", path)
	if took {
		l, err := net.FileListener(in.file)
		in.file.Close()
		if err != nil {
			return nil, false, fmt.Errorf("upgrade: inherited unix %s: %w", path, err)
		}
		ln = l.(*net.UnixListener)
	} else {
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, false, err
		}
		ln = l.(*net.UnixListener)
	}
	ln.SetUnlinkOnClose(false)
	s.mu.Lock()
	s.unixs = append(s.unixs, &unixSocket{key: path, ln: ln})
	s.mu.Unlock()
	return ln, took, nil
}

// CloseUnused closes the inherited descriptors nothing asked for (the new
// configuration no longer listens there; the predecessor still serves
// them until it exits).
func (s *Sockets) CloseUnused() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, in := range s.inherited {
		in.file.Close()
		delete(s.inherited, k)
	}
}

// Ready tells the predecessor that this process serves: it stops
// accepting and lets go of its sockets. Without a predecessor it does
// nothing.
func (s *Sockets) Ready() error {
	if s.pred == nil {
		return nil
	}
	s.CloseUnused()
	return s.pred.send(status{Ready: true, PID: os.Getpid()})
}

// Failed tells the predecessor that this process will not serve, and why;
// the predecessor goes on serving as before.
func (s *Sockets) Failed(err error) {
	if s.pred != nil && err != nil {
		_ = s.pred.send(status{Error: err.Error()})
	}
}

// PredecessorDone is closed once the predecessor has exited (at once in a
// first process).
func (s *Sockets) PredecessorDone() <-chan struct{} {
	if s.pred == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return s.pred.exited
}

// Close closes what the sockets hold beyond the listeners' own descriptors
// (links, BPF maps, inherited descriptors never used).
func (s *Sockets) Close() error {
	s.CloseUnused()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, us := range s.udps {
		if us.fwd != nil {
			if l := us.fwd.link.Load(); l != nil {
				l.conn.Close()
			}
			if src := us.fwd.src.Load(); src.unix != nil {
				src.unix.Close()
			}
		}
		if us.bpf != nil {
			us.bpf.close()
		}
	}
	if s.pred != nil {
		s.pred.conn.Close()
	}
	if s.succ != nil {
		s.succ.conn.Close()
	}
	return nil
}

// status is a line of the status socket, successor to predecessor (Ready
// or Error) or back (Released).
type status struct {
	Ready    bool   `json:"ready,omitempty"`
	PID      int    `json:"pid,omitempty"`
	Error    string `json:"error,omitempty"`
	Released bool   `json:"released,omitempty"`
}

// predecessor is the process this one took over from, as seen over the
// status socket.
type predecessor struct {
	pid      int
	gen      int
	conn     *net.UnixConn
	released chan struct{} // its UDP sockets are ours to read (or it is gone)
	exited   chan struct{}
	mu       sync.Mutex // serializes sends
}

func newPredecessor(m manifest, logger *zap.Logger) (*predecessor, error) {
	f := os.NewFile(uintptr(m.Status), "status")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("upgrade: status socket: %w", err)
	}
	p := &predecessor{pid: m.Parent, gen: (m.Generation + quiclb.MaxGeneration) % (quiclb.MaxGeneration + 1),
		conn: c.(*net.UnixConn), released: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		defer close(p.exited)
		var once sync.Once
		release := func() { once.Do(func() { close(p.released) }) }
		defer release() // gone: nothing left to wait for
		sc := bufio.NewScanner(p.conn)
		for sc.Scan() {
			var st status
			if json.Unmarshal(sc.Bytes(), &st) == nil && st.Released {
				release()
			}
		}
		logger.Info("the previous process has exited", zap.Int("pid", p.pid), zap.Int("generation", p.gen))
	}()
	return p, nil
}

func (p *predecessor) send(st status) error {
	b, _ := json.Marshal(st)
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.conn.Write(append(b, '\n'))
	return err
}

// dupOf returns a duplicate of a socket's descriptor (close-on-exec; the
// child gets its own with ForkExec), leaving the socket's mode alone.
func dupOf(v any) (int, error) {
	sc, ok := v.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("upgrade: %T has no descriptor", v)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = dupCloexec(int(fd)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("upgrade: dup: %w", derr)
	}
	return nfd, nil
}

// rawFD returns f's descriptor without putting it in blocking mode (as
// File.Fd does); valid while f is open.
func rawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	var out int
	if err := rc.Control(func(fd uintptr) { out = int(fd) }); err != nil {
		return -1, err
	}
	return out, nil
}

// forgetClosed drops the sockets that were closed since they were bound
// (a reload removed their port): nothing to hand on. s.mu is held.
func (s *Sockets) forgetClosed() {
	s.udps = slices.DeleteFunc(s.udps, func(us *udpSocket) bool {
		if isClosed(us.conn) {
			if us.bpf != nil {
				us.bpf.close()
			}
			return true
		}
		return false
	})
	s.tcps = slices.DeleteFunc(s.tcps, func(ts *tcpSocket) bool { return isClosed(ts.ln) })
	s.unixs = slices.DeleteFunc(s.unixs, func(us *unixSocket) bool { return isClosed(us.ln) })
}

// isClosed reports whether a socket's descriptor is closed.
func isClosed(v any) bool {
	sc, ok := v.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	return rc.Control(func(uintptr) {}) != nil
}

// takeFD returns a close-on-exec duplicate of f's descriptor and closes f.
func takeFD(f *os.File) (int, error) {
	defer f.Close()
	fd, err := rawFD(f)
	if err != nil {
		return -1, err
	}
	return dupCloexec(fd)
}

func dupCloexec(fd int) (int, error) {
	nfd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(nfd), nil
}

// socketpair returns the two ends of a unix socket pair of typ
// (syscall.SOCK_STREAM, SOCK_DGRAM), close-on-exec.
func socketpair(typ int) (int, int, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("upgrade: socketpair: %w", err)
	}
	return fds[0], fds[1], nil
}

// fdConn makes a *net.UnixConn of a raw descriptor, which it takes over.
func fdConn(fd int, name string) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("upgrade: %s: %w", name, err)
	}
	return c.(*net.UnixConn), nil
}

// BPFSupported returns nil when this process may load the SK_REUSEPORT
// program of the BPF mode, else why not.
func BPFSupported() error { return bpfSupported() }
