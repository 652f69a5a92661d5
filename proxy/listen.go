package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
)

// Sockets binds the server's listening sockets. The default binds new
// ones; during a binary upgrade (package handoff) the new process gets its
// predecessor's, so no connection waiting in a queue is lost and the old
// process's QUIC connections keep their packets.
type Sockets interface {
	// ListenUDP binds a UDP socket on address ("host:port", port 0 for any).
	ListenUDP(address string) (*net.UDPConn, error)
	// ListenTCP binds a TCP listener on address.
	ListenTCP(address string) (net.Listener, error)
	// PacketConn returns what the QUIC transport of a socket ListenUDP
	// bound reads and writes: the socket itself, or a conn that forwards
	// other processes' packets to them.
	PacketConn(udp *net.UDPConn) (net.PacketConn, error)
	// Serving says the QUIC transport of udp accepts connections: new
	// clients' packets may be sent to it.
	Serving(udp *net.UDPConn) error
	// Closing says udp is being closed for good (a reload removed its
	// port): what the Sockets keep for it goes.
	Closing(udp *net.UDPConn)
}

// NetSockets are the default Sockets: new ones, bound with package net.
type NetSockets struct{}

func (NetSockets) ListenUDP(address string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", address)
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", address, err)
	}
	return net.ListenUDP("udp", ua)
}

func (NetSockets) ListenTCP(address string) (net.Listener, error) { return net.Listen("tcp", address) }

func (NetSockets) PacketConn(udp *net.UDPConn) (net.PacketConn, error) { return udp, nil }

func (NetSockets) Serving(*net.UDPConn) error { return nil }

func (NetSockets) Closing(*net.UDPConn) {}

// listenPair binds the UDP (HTTP/3) and TCP (HTTP/1.1, HTTP/2) sockets of
// one host and port. Port 0 picks a free port that both protocols get, as
// Alt-Svc advertises one port number for both.
func listenPair(sockets Sockets, host string, port int) (*net.UDPConn, net.Listener, error) {
	for attempt := 0; ; attempt++ {
		udp, err := sockets.ListenUDP(net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return nil, nil, inUse(err, port) // the error says "listen udp ADDR" itself
		}
		ua := udp.LocalAddr().(*net.UDPAddr)
		tcpHost := host // all interfaces, like the UDP socket, when ""
		if h, _, err := net.SplitHostPort(ua.String()); err == nil && host != "" {
			tcpHost = h
		}
		tcp, err := sockets.ListenTCP(net.JoinHostPort(tcpHost, strconv.Itoa(ua.Port)))
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if port != 0 || !errors.Is(err, syscall.EADDRINUSE) || attempt >= 20 {
			return nil, nil, inUse(err, ua.Port)
		}
		// The free UDP port is taken on TCP: try another.
	}
}

// inUse adds to a port-in-use error how to find its owner.
func inUse(err error, port int) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w (another process has the port: ss -lntup 'sport = :%d' names it)", err, port)
	}
	return err
}

// sessionListener starts a session for every TCP connection it accepts; the
// session ends when the connection closes.
type sessionListener struct {
	net.Listener
	srv *Server
}

func (l *sessionListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sessionConn{Conn: c, sess: l.srv.newSession("tcp", c.RemoteAddr(), nil)}, nil
}

// sessionConn is a TCP connection with its session.
type sessionConn struct {
	net.Conn
	sess *session
	once sync.Once
}

func (c *sessionConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.sess.close)
	return err
}

// tcpConnContext puts the TCP connection's session into the context of its
// requests (net/http hands over the TLS connection; the session is on the
// connection under it).
func tcpConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if sc, ok := c.(*sessionConn); ok {
		return withSession(ctx, sc.sess)
	}
	return ctx
}
