// Package redistest runs a real redis-server for the tests of the Redis
// certificate storage: on a free port of 127.0.0.1, without persistence,
// killed and started again at the test's wish, stopped when the test ends.
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it stands in for the Redis server that the instances of a fleet keep their
// certificates in (tlsmgr/redisstore). Only tests import it.
//
// The binary is $REDIS_SERVER, else redis-server on $PATH. Without it the
// test is skipped, unless $CI is set: then it fails, so that a CI machine
// without Redis does not pass by skipping (.ci/run installs it).
package redistest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Options configures a Server.
type Options struct {
	// Password, when set, is required of clients (--requirepass).
	Password string
	// CertFile and KeyFile, when set, make the server speak TLS only
	// (--tls-port; no plain port), with that certificate and key; clients
	// present no certificate.
	CertFile, KeyFile string
}

// Server is a redis-server process of a test.
type Server struct {
	bin  string
	opts Options
	port int
	dir  string

	mu   sync.Mutex // guards the following
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{} // closed when cmd has exited
}

// Binary returns the path of redis-server, or skips the test (fails it
// when $CI is set) if there is none.
func Binary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("REDIS_SERVER"); bin != "" {
		return bin
	}
	bin, err := exec.LookPath("redis-server")
	if err == nil {
		return bin
	}
	const msg = "redis-server not found (set REDIS_SERVER, or apt-get install redis-server)"
	if os.Getenv("CI") != "" {
		t.Fatalf("redistest: %s; CI is set, so this fails rather than skips", msg)
	}
	t.Skipf("redistest: %s; skipped (it fails when CI is set)", msg)
	return ""
}

// Start starts a redis-server on a free port of 127.0.0.1 and waits until
// it accepts connections. It is stopped when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{bin: Binary(t), opts: opts, dir: t.TempDir()}
	var err error
	for range 5 { // another process may take the free port before redis-server binds it
		s.port = freePort(t)
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(func() { s.Kill(t) })
	return s
}

// Addr returns the server's "127.0.0.1:PORT"; it stays the same across Kill
// and Restart.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Kill kills the server (SIGKILL) and waits for it to exit. It does
// nothing if the server is not running.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Errorf("redistest: redis-server did not exit within 5s of SIGKILL")
	}
}

// Restart starts the server again on the same port after Kill, with an
// empty data set (nothing was persisted).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the port may linger a moment
	}
}

// start runs redis-server on s.port and waits until it accepts connections.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("redis-server is running already")
	}
	args := []string{
		"--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--loglevel", "warning",
	}
	if s.opts.CertFile != "" {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", s.opts.CertFile, "--tls-key-file", s.opts.KeyFile,
			"--tls-auth-clients", "no")
	} else {
		args = append(args, "--port", strconv.Itoa(s.port))
	}
	if s.opts.Password != "" {
		args = append(args, "--requirepass", s.opts.Password)
	}
	cmd := exec.Command(s.bin, args...)
	out := new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test binary
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", filepath.Base(s.bin), err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server exited at start: %s", bytes.TrimSpace(out.Bytes()))
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("redis-server not accepting connections on %s after 10s: %s", s.Addr(), bytes.TrimSpace(out.Bytes()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd, s.out, s.done = cmd, out, done
	return nil
}

// SupportsTLS reports whether the redis-server binary was built with TLS
// (Debian's is): whether it knows --tls-port. (Asked to listen nowhere, it
// exits at once.)
func SupportsTLS(t testing.TB) bool {
	t.Helper()
	out, _ := exec.Command(Binary(t), "--port", "0", "--tls-port", "0", "--save", "").CombinedOutput()
	return !bytes.Contains(out, []byte("Bad directive"))
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// IgnoreGoroutines are the goleak options for go-redis's goroutines that a
// closed client leaves behind for a moment: after a run of failed dials
// (Redis down) its pool probes the server once a second, and notices the
// Close only at its next wake-up.
var IgnoreGoroutines = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"),
}
