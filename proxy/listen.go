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

// listenPair binds the UDP (HTTP/3) and TCP (HTTP/1.1, HTTP/2) sockets of
// one host and port. Port 0 picks a free port that both protocols get, as
// Alt-Svc advertises one port number for both.
func listenPair(host string, port int) (*net.UDPConn, net.Listener, error) {
	for attempt := 0; ; attempt++ {
		ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return nil, nil, fmt.Errorf("listen udp %s: %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
		}
		udp, err := net.ListenUDP("udp", ua)
		if err != nil {
			return nil, nil, inUse(err, ua.Port) // the error says "listen udp ADDR" itself
		}
		p := udp.LocalAddr().(*net.UDPAddr).Port
		tcpHost := "" // all interfaces, like the UDP socket
		if ua.IP != nil {
			tcpHost = ua.IP.String()
		}
		tcp, err := net.Listen("tcp", net.JoinHostPort(tcpHost, strconv.Itoa(p)))
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if port != 0 || !errors.Is(err, syscall.EADDRINUSE) || attempt >= 20 {
			return nil, nil, inUse(err, p)
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
