// Package h3client is an HTTP/3 client pinned to one QUIC connection that
// can move that connection to a new local socket on demand: the client side
// of a network change (Wi-Fi to cellular), done the way quic-go supports it
// (RFC 9000 §9: AddPath, Probe, Switch).
//
// roamgate's demo uses it to show a migration end to end, and the tests use
// it to migrate real connections through the proxy. It follows the client
// pitfalls of quic-go v0.65.0: every socket of a connection is a
// *net.UDPConn, the dialing socket stays open for the connection's life, the
// local address is tracked here rather than read from the connection while a
// switch may run, and requests must not be in flight during Migrate.
package h3client

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Conn is one HTTP/3 connection that can migrate.
type Conn struct {
	qconn *quic.Conn
	cc    *http3.ClientConn

	mu         sync.Mutex // guards the following
	local      *net.UDPAddr
	transports []*quic.Transport // all of them, the dialing one first; closed by Close
	path       *quic.Path        // the path Migrate switched to last; nil on the dialing path
	migrations int
}

// Dial opens a QUIC connection to addr ("host:port") with HTTP/3 on it. The
// local socket is bound to the loopback address of addr's family when addr
// is a loopback address, else to any address. tlsConf gets NextProtos h3.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, qconf *quic.Config) (*Conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", addr, err)
	}
	c := &Conn{}
	tr, err := c.newTransport(localFor(raddr.IP))
	if err != nil {
		return nil, err
	}
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
	return c, nil
}

// localFor picks the local IP for a socket that talks to remote.
func localFor(remote net.IP) net.IP {
	switch {
	case remote.IsLoopback() && remote.To4() != nil:
		return net.IPv4(127, 0, 0, 1)
	case remote.IsLoopback():
		return net.IPv6loopback
	}
	return nil
}

func (c *Conn) newTransport(ip net.IP) (*quic.Transport, error) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, fmt.Errorf("listen udp: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	c.mu.Lock()
	c.transports = append(c.transports, tr)
	c.local = udp.LocalAddr().(*net.UDPAddr)
	c.mu.Unlock()
	return tr, nil
}

// RoundTrip sends one request on the connection.
func (c *Conn) RoundTrip(req *http.Request) (*http.Response, error) {
	return c.cc.RoundTrip(req)
}

// Migrate moves the connection to a new UDP socket: it probes the new path
// (PATH_CHALLENGE/PATH_RESPONSE) and switches to it once validated. The
// server learns the new address from the next packet the client sends, so
// send a request right after. No request may be in flight on the connection
// while Migrate runs (quic-go races the switch against in-flight requests).
func (c *Conn) Migrate(ctx context.Context) error {
	c.mu.Lock()
	ip := c.local.IP
	c.mu.Unlock()
	tr, err := c.newTransport(ip)
	if err != nil {
		return err
	}
	path, err := c.qconn.AddPath(tr)
	if err != nil {
		return fmt.Errorf("add path: %w", err)
	}
	if err := path.Probe(ctx); err != nil {
		_ = path.Close()
		return fmt.Errorf("probe path: %w", err)
	}
	if err := path.Switch(); err != nil {
		_ = path.Close()
		return fmt.Errorf("switch path: %w", err)
	}
	c.mu.Lock()
	prev := c.path
	c.path = path
	c.migrations++
	c.mu.Unlock()
	if prev != nil {
		// Abandon the path left behind so its connection ID is retired and
		// the server can issue a fresh one. (Its transport stays: closing
		// it would destroy the connection, which is still registered there.)
		_ = prev.Close()
	}
	return nil
}

// LocalAddr is the address of the socket the connection uses now.
func (c *Conn) LocalAddr() *net.UDPAddr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local
}

// Migrations reports how many times Migrate switched the connection.
func (c *Conn) Migrations() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.migrations
}

// QUIC returns the underlying QUIC connection.
func (c *Conn) QUIC() *quic.Conn { return c.qconn }

// Close closes the connection and every socket it used.
func (c *Conn) Close() error {
	err := c.qconn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	c.closeTransports()
	return err
}

func (c *Conn) closeTransports() {
	c.mu.Lock()
	trs := c.transports
	c.transports = nil
	c.mu.Unlock()
	for _, tr := range trs {
		_ = tr.Close()
		_ = tr.Conn.Close()
	}
}
