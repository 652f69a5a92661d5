package h3client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// ErrClosed is returned by Migrate and MigrateTo when the connection was
// closed.
var ErrClosed = errors.New("connection closed")

// Conn is one HTTP/3 connection that can migrate. Its methods are safe for
// concurrent use; Migrate documents what overlaps a migration.
type Conn struct {
	qconn  *quic.Conn
	cc     *http3.ClientConn
	remote netip.AddrPort // the edge; a client never changes it

	// pathLock orders path switches against requests (see Migrate).
	pathLock pathLock
	// migrating serializes Migrate calls.
	migrating sync.Mutex

	mu         sync.Mutex // guards the following
	local      netip.AddrPort
	transports []*quic.Transport // all of them, the dialing one first; closed by Close
	path       *quic.Path        // the path Migrate switched to last; nil on the dialing path
	migrations int
	closed     bool
}

// Dial opens a QUIC connection to addr ("host:port") with HTTP/3 on it. The
// local socket is bound to the loopback address of addr's family when addr
// is a loopback address, else to the source address the kernel routes addr
// from (so a later change of that route is visible, see Roamer), or to any
// address when there is no route. tlsConf gets NextProtos h3; qconf may be
// nil. Dial returns once the edge has accepted the handshake, so a refused
// client certificate is Dial's error (see confirmHandshake).
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, qconf *quic.Config) (*Conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", addr, err)
	}
	remote := raddr.AddrPort()
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	c := &Conn{remote: remote}
	tr, local, err := c.newTransport(localFor(ctx, remote))
	if err != nil {
		return nil, err
	}
	c.local = local
	tlsConf = tlsConf.Clone()
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	if qconf == nil {
		qconf = &quic.Config{}
	}
	qc, err := tr.Dial(ctx, raddr, tlsConf, qconf)
	if err != nil {
		c.closeTransports()
		return nil, fmt.Errorf("dial quic %s: %w", addr, err)
	}
	c.qconn = qc
	c.cc = (&http3.Transport{}).NewClientConn(qc)
	if err := c.confirmHandshake(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("dial quic %s: %w", addr, err)
	}
	return c, nil
}

// confirmHandshake waits until the edge has accepted the handshake. In TLS
// 1.3 the client's side of the handshake ends before the server has checked
// the client's certificate (RFC 8446 §4.4.2), so a refused certificate
// shows only after quic-go's Dial returned, as a closed connection. The
// edge can read 1-RTT data only once it accepted the handshake, so its
// STOP_SENDING for a reserved stream confirms it; an edge that ignores
// reserved streams silently costs confirmTimeout.
func (c *Conn) confirmHandshake(ctx context.Context) error {
	err := c.sendReserved(ctx, true)
	switch {
	case c.qconn.Context().Err() != nil:
		return context.Cause(c.qconn.Context())
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case errors.Is(err, errNoStopSending):
		return nil
	}
	return err
}

// localFor picks the local IP for a socket that talks to remote; the zero
// Addr means any address.
func localFor(ctx context.Context, remote netip.AddrPort) netip.Addr {
	ip := remote.Addr()
	switch {
	case ip.IsLoopback() && ip.Is4():
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case ip.IsLoopback():
		return netip.IPv6Loopback()
	}
	if rt, err := SystemRoute(ctx, remote); err == nil {
		return rt.LocalIP
	}
	return netip.Addr{}
}

// newTransport opens a UDP socket on ip (any port) and registers its
// transport with c, which closes it in Close.
func (c *Conn) newTransport(ip netip.Addr) (*quic.Transport, netip.AddrPort, error) {
	laddr := &net.UDPAddr{}
	if ip.IsValid() {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
	}
	udp, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("listen udp %s: %w", laddr, err)
	}
	local := udp.LocalAddr().(*net.UDPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	// Every socket of a connection is a *net.UDPConn: a connection that
	// migrates between socket types panics in quic-go (ECN on a basicConn).
	tr := &quic.Transport{Conn: udp}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		udp.Close()
		return nil, netip.AddrPort{}, ErrClosed
	}
	c.transports = append(c.transports, tr)
	return tr, local, nil
}

// RoundTrip sends one request on the connection. It holds off Migrate until
// the response headers have arrived (see Migrate), so on a connection that
// may migrate a request without a deadline can block a migration; the body
// may be read while the connection migrates.
func (c *Conn) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := c.pathLock.rlock(req.Context()); err != nil {
		return nil, err
	}
	defer c.pathLock.runlock()
	return c.cc.RoundTrip(req)
}

// ConnectionState returns the QUIC connection's state. Unlike calling
// QUIC().ConnectionState(), it is safe while Migrate runs.
func (c *Conn) ConnectionState() quic.ConnectionState {
	_ = c.pathLock.rlock(context.Background()) // cannot fail without a deadline
	defer c.pathLock.runlock()
	return c.qconn.ConnectionState()
}

// LocalAddr is the address of the socket the connection uses now: the one
// Migrate switched to last, else the dialing socket. Unlike the QUIC
// connection's LocalAddr it is safe while Migrate runs.
func (c *Conn) LocalAddr() *net.UDPAddr {
	return net.UDPAddrFromAddrPort(c.LocalAddrPort())
}

// LocalAddrPort is LocalAddr as a netip.AddrPort.
func (c *Conn) LocalAddrPort() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local
}

// RemoteAddr is the edge's address, resolved when the connection was dialed.
func (c *Conn) RemoteAddr() netip.AddrPort { return c.remote }

// Migrations reports how many times Migrate switched the connection.
func (c *Conn) Migrations() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.migrations
}

// Context is canceled when the connection closes, with the reason as its
// cause.
func (c *Conn) Context() context.Context { return c.qconn.Context() }

// QUIC returns the underlying QUIC connection. Its ConnectionState,
// LocalAddr and RemoteAddr race with a path switch; use the methods of Conn
// instead while Migrate may run.
func (c *Conn) QUIC() *quic.Conn { return c.qconn }

// Close closes the connection (H3_NO_ERROR) and every socket it used. It may
// be called more than once.
func (c *Conn) Close() error {
	err := c.qconn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	c.closeTransports()
	return err
}

func (c *Conn) closeTransports() {
	c.mu.Lock()
	trs := c.transports
	c.transports = nil
	c.closed = true
	c.mu.Unlock()
	for _, tr := range trs {
		_ = tr.Close()
		_ = tr.Conn.Close()
	}
}
