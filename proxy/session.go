package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/zap"

	"github.com/roamgate/roamgate/upstream"
)

// errSessionClosed is returned for a request whose session already ended
// (its connection closed while the request was being read).
var errSessionClosed = errors.New("session closed")

// session is one client connection's state: one per QUIC connection, or one
// per TCP connection on the TCP listener. It owns a lease on each upstream
// pool the client has used (usually one) and closes them when the
// connection ends. See DESIGN.md, "The one invariant".
type session struct {
	id    uint64
	proto string     // "h3" or "tcp"
	qconn *quic.Conn // nil on TCP

	// The address the connection started from, as the forwarding headers
	// carry it for the session's whole life (a migration never changes what
	// the backend sees), precomputed once.
	startAddr string   // "ip:port"
	xff       []string // X-Forwarded-For value: the start IP
	fwdFor    string   // Forwarded "for=" parameter

	// fwdHost caches the forwarding headers for the host the session's
	// requests name (nearly always one): they are the same strings every
	// request, so they are built once.
	fwdHost atomic.Pointer[forwardedHost]

	lastAddr    atomic.Value // net.Addr: the remote address last seen (h3)
	pathChanges atomic.Int64

	srv *Server

	mu     sync.Mutex // guards the following
	leases []poolLease
	held   map[io.Closer]struct{} // tunnel connections, closed with the session
	// streams counts long-lived streams in progress (WebSocket, tunnel):
	// while there are any, a sampler watches the path between requests.
	streams     int
	stopSampler chan struct{}
	closed      bool
}

type poolLease struct {
	pool  *upstream.Pool
	lease *upstream.Lease
}

type sessionKey struct{}

func withSession(ctx context.Context, s *session) context.Context {
	return context.WithValue(ctx, sessionKey{}, s)
}

func sessionFrom(ctx context.Context) *session {
	s, _ := ctx.Value(sessionKey{}).(*session)
	return s
}

// newSession starts a session for a connection from remote.
func (srv *Server) newSession(proto string, remote net.Addr, qconn *quic.Conn) *session {
	s := &session{id: srv.nextSessionID.Add(1), proto: proto, qconn: qconn, srv: srv}
	s.startAddr = remote.String()
	ap := addrPort(remote)
	s.xff = []string{ap.Addr().String()}
	s.fwdFor = forwardedFor(ap)
	if qconn != nil {
		s.lastAddr.Store(remote)
	}
	srv.sessions.Add(1)
	srv.open.Add(1)
	srv.metrics.sessionsOpened.WithLabelValues(proto).Inc()
	srv.metrics.sessionsActive.Inc()
	if ce := srv.logger.Check(zap.DebugLevel, "session opened"); ce != nil {
		ce.Write(zap.Uint64("session", s.id), zap.String("proto", proto), zap.String("remote", s.startAddr))
	}
	return s
}

// forwardedHost holds the X-Forwarded-Host and Forwarded values of one
// host. They are shared by the session's requests: never modified.
type forwardedHost struct {
	host string
	xfh  []string
	fwd  []string
}

// forwardedFor returns the forwarding header values for a request to host.
func (s *session) forwardedFor(host string) *forwardedHost {
	if fh := s.fwdHost.Load(); fh != nil && fh.host == host {
		return fh
	}
	fh := &forwardedHost{
		host: host,
		xfh:  []string{host},
		fwd:  []string{s.fwdFor + ";host=" + quoteForwarded(host) + ";proto=https"},
	}
	s.fwdHost.Store(fh)
	return fh
}

// lease returns the session's lease on pool, taking one on first use: the
// pool's policy picks the session's backend then (from r, the session's
// first request to this pool, for the cookie and header policies), once.
func (s *session) lease(pool *upstream.Pool, r *http.Request) (*upstream.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errSessionClosed
	}
	for _, pl := range s.leases {
		if pl.pool == pool {
			return pl.lease, nil
		}
	}
	l := pool.Lease(s.id, r)
	s.leases = append(s.leases, poolLease{pool, l})
	return l, nil
}

// hold makes c the session's until release: if the session ends first, it
// closes c (a tunnel's backend connection dies with the client's QUIC
// connection). A session already closed closes c at once.
func (s *session) hold(c io.Closer) (release func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.Close()
		return func() {}
	}
	if s.held == nil {
		s.held = make(map[io.Closer]struct{})
	}
	s.held[c] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.held, c)
		s.mu.Unlock()
		_ = c.Close()
	}
}

// longStream notes a long-lived stream (a WebSocket, a tunnel) for as long
// as it runs, and returns its end. A path change is otherwise seen at the
// start and end of requests; a stream can live for hours, so while one
// runs the session also checks every Server.pathSample (one atomic load a
// tick; one sampler per session, however many streams).
func (s *session) longStream() (end func()) {
	if s.qconn == nil {
		return func() {}
	}
	s.mu.Lock()
	s.streams++
	if s.streams == 1 && !s.closed {
		stop := make(chan struct{})
		s.stopSampler = stop
		go s.sample(stop)
	}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.streams--
		if s.streams == 0 && s.stopSampler != nil {
			close(s.stopSampler)
			s.stopSampler = nil
		}
		s.mu.Unlock()
	}
}

func (s *session) sample(stop <-chan struct{}) {
	t := time.NewTicker(s.srv.pathSample)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.observePath()
		}
	}
}

// close ends the session and closes its upstream connections. It is
// idempotent.
func (s *session) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	if s.stopSampler != nil {
		close(s.stopSampler)
		s.stopSampler = nil
	}
	leases := s.leases
	s.leases = nil
	held := make([]io.Closer, 0, len(s.held))
	for c := range s.held {
		held = append(held, c)
	}
	s.mu.Unlock()
	for _, pl := range leases {
		_ = pl.lease.Close()
	}
	for _, c := range held {
		_ = c.Close()
	}
	s.srv.metrics.sessionsActive.Dec()
	s.srv.sessionEnded()
	s.srv.sessions.Done()
	if ce := s.srv.logger.Check(zap.DebugLevel, "session closed"); ce != nil {
		ce.Write(zap.Uint64("session", s.id), zap.String("proto", s.proto),
			zap.Int64("path_changes", s.pathChanges.Load()))
	}
}

// observePath compares the QUIC connection's current remote address with the
// last one seen and reports a change: a log line (old → new, session) and a
// counter. It is one atomic load when nothing changed, cheap enough for every
// request; a tracer on every packet would cost far more (see the quic-go
// notes). quic-go switches paths only after validating the new one (RFC 9000
// §9), so what it reports here is a validated path.
func (s *session) observePath() {
	if s.qconn == nil {
		return
	}
	cur := s.qconn.RemoteAddr()
	last, _ := s.lastAddr.Load().(net.Addr)
	if cur == last || sameAddr(cur, last) {
		return
	}
	if !s.lastAddr.CompareAndSwap(last, cur) {
		return // a concurrent request reported this change
	}
	s.pathChanges.Add(1)
	// The server cannot tell an active migration from a NAT rebinding
	// (quic-go handles both alike); the kind only says what changed. A new
	// port on the same IP is typically a NAT rebinding or a new socket on
	// the same network, a new IP a move to another network.
	kind := "address"
	if addrPort(cur).Addr() == addrPort(last).Addr() {
		kind = "port"
	}
	s.srv.metrics.pathChanges.WithLabelValues(kind).Inc()
	s.srv.logger.Info("client path changed",
		zap.Uint64("session", s.id), zap.String("from", last.String()), zap.String("to", cur.String()),
		zap.String("kind", kind), zap.Int64("changes", s.pathChanges.Load()))
}

func sameAddr(a, b net.Addr) bool {
	ua, ok1 := a.(*net.UDPAddr)
	ub, ok2 := b.(*net.UDPAddr)
	return ok1 && ok2 && ua.Port == ub.Port && ua.IP.Equal(ub.IP)
}

// addrPort returns a UDP or TCP address as an AddrPort, IPv4-mapped IPv6
// unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// forwardedFor formats the "for" parameter of a Forwarded header with the
// client's address and port (RFC 7239 §6: a quoted node, IPv6 bracketed).
// X-Forwarded-For carries the IP alone, which is what its parsers expect.
func forwardedFor(ap netip.AddrPort) string {
	if !ap.Addr().IsValid() {
		return "for=unknown"
	}
	return `for="` + ap.String() + `"`
}
