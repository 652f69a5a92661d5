// Package edgetest runs a minimal HTTP/3 CONNECT edge on loopback for the
// tests of h3client and `roamgate connect`, without roamgate's proxy: a
// quic-go http3.Server with a self-signed certificate whose handler checks a
// bearer token and splices each CONNECT stream to a TCP backend, the TCP
// backends themselves, and a UDP relay that can blackhole a client socket or
// move to another edge.
//
// It sits beside the client in the data flow:
//
//	h3client.Conn ─▶ [Relay] ─▶ Edge (CONNECT, Authorization) ─▶ Backend (TCP echo or banner)
package edgetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Authorities the edge's handler routes on; any other authority goes to
// Options.Backend.
const (
	// BannerAuthority reaches the banner backend.
	BannerAuthority = "banner.test:443"
	// HangAuthority is never answered: the handler waits until the request
	// ends.
	HangAuthority = "hang.test:443"
)

// Cert is a self-signed certificate for localhost, 127.0.0.1 and ::1, its
// own root.
type Cert struct {
	TLS     tls.Certificate
	CertPEM []byte
	KeyPEM  []byte
	Pool    *x509.CertPool // holds just this certificate
}

// NewCert makes a self-signed certificate usable by servers and clients.
func NewCert(t testing.TB, cn string) *Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Pool:    x509.NewCertPool(),
	}
	if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatal(err)
	}
	c.Pool.AppendCertsFromPEM(c.CertPEM)
	return c
}

// Options configure an Edge.
type Options struct {
	// Cert is the edge's certificate; nil makes a new one. Two edges that
	// share one stand for one service (a restarted or failed-over edge).
	Cert *Cert
	// Token is the bearer token CONNECT requests must carry: none is 401,
	// another is 403. Empty: no check.
	Token string
	// ClientCAs, when set, makes the edge require a client certificate
	// signed by one of them (mutual TLS).
	ClientCAs *x509.CertPool
	// Backend is where CONNECTs to other authorities than BannerAuthority
	// and HangAuthority go; the zero value is Echo.
	Backend BackendKind
}

// Edge is a running test edge on 127.0.0.1.
type Edge struct {
	// Addr is the edge's UDP address.
	Addr string
	// Cert is the edge's certificate; trust Cert.Pool with ServerName
	// "localhost".
	Cert *Cert
	// Echo echoes every byte and closes its side after the client's EOF.
	Echo *Backend
	// Banner sends a line, closes its side at once, then reads until EOF.
	Banner *Backend

	opts     Options
	srv      *http3.Server
	tr       *quic.Transport
	ln       *quic.EarlyListener
	done     chan struct{} // closed when the edge shuts down
	handlers sync.WaitGroup
	serving  sync.WaitGroup

	mu    sync.Mutex // guards the following
	conns []*quic.Conn
}

// Start runs an edge until the test ends.
func Start(t testing.TB, opts Options) *Edge {
	t.Helper()
	cert := opts.Cert
	if cert == nil {
		cert = NewCert(t, "edgetest")
	}
	e := &Edge{
		Cert:   cert,
		Echo:   StartBackend(t, Echo),
		Banner: StartBackend(t, Banner),
		opts:   opts,
		done:   make(chan struct{}),
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e.Addr = udp.LocalAddr().String()
	e.tr = &quic.Transport{Conn: udp}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{e.Cert.TLS}}
	if opts.ClientCAs != nil {
		tlsConf.ClientCAs = opts.ClientCAs
		tlsConf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	e.ln, err = e.tr.ListenEarly(http3.ConfigureTLSConfig(tlsConf), &quic.Config{})
	if err != nil {
		udp.Close()
		t.Fatal(err)
	}
	e.srv = &http3.Server{
		Handler: e,
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			e.mu.Lock()
			e.conns = append(e.conns, c)
			e.mu.Unlock()
			return ctx
		},
	}
	e.serving.Go(func() { _ = e.srv.ServeListener(e.ln) })
	t.Cleanup(func() { e.close(t) })
	return e
}

// ClientTLS is a client configuration that trusts the edge.
func (e *Edge) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: e.Cert.Pool, ServerName: "localhost"}
}

// Conns are the QUIC connections the edge accepted, oldest first.
func (e *Edge) Conns() []*quic.Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*quic.Conn(nil), e.conns...)
}

// CloseConns closes every connection the edge accepted (H3_NO_ERROR).
func (e *Edge) CloseConns() {
	for _, c := range e.Conns() {
		_ = c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "edgetest: closed")
	}
}

func (e *Edge) close(t testing.TB) {
	close(e.done)
	_ = e.srv.Close()
	_ = e.ln.Close()
	_ = e.tr.Close()
	_ = e.tr.Conn.Close()
	e.serving.Wait()
	waitOrFail(t, "edge handlers", &e.handlers)
}

// ServeHTTP answers GET with 200 "ok" and CONNECT by splicing the stream to
// a backend after checking the token.
func (e *Edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.handlers.Add(1)
	defer e.handlers.Done()
	if r.Method != http.MethodConnect {
		_, _ = io.WriteString(w, "ok")
		return
	}
	if e.opts.Token != "" {
		switch auth := r.Header.Get("Authorization"); {
		case auth == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="edgetest"`)
			http.Error(w, "missing bearer token", http.StatusUnauthorized)
			return
		case auth != "Bearer "+e.opts.Token:
			http.Error(w, "invalid token", http.StatusForbidden)
			return
		}
	}
	backend := e.Echo
	if e.opts.Backend == Banner {
		backend = e.Banner
	}
	switch r.Host {
	case BannerAuthority:
		backend = e.Banner
	case HangAuthority:
		select {
		case <-r.Context().Done():
		case <-e.done:
		}
		return
	}
	tcp, err := net.Dial("tcp", backend.Addr())
	if err != nil {
		http.Error(w, "backend: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer tcp.Close()
	w.WriteHeader(http.StatusOK)
	str, err := w.(http3.HTTPStreamer).HTTPStream()
	if err != nil {
		return
	}
	defer str.Close()
	Splice(str, tcp.(*net.TCPConn))
}

// Splice copies between an HTTP/3 stream and a TCP connection until both
// directions ended, passing each side's EOF on as a half-close and a
// failure as a reset (H3_CONNECT_ERROR, RFC 9114 §4.4).
func Splice(str *http3.Stream, tcp *net.TCPConn) {
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := io.Copy(tcp, str); err != nil {
			_ = tcp.SetLinger(0)
			_ = tcp.Close()
			return
		}
		_ = tcp.CloseWrite()
	})
	if _, err := io.Copy(str, tcp); err != nil {
		str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeConnectError))
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeConnectError))
	} else {
		_ = str.Close()
	}
	wg.Wait()
}

// BackendKind is how a Backend treats its connections.
type BackendKind int

// The kinds of Backend.
const (
	// Echo writes back every byte and closes its side after the client's.
	Echo BackendKind = iota
	// Banner writes BannerLine, closes its side at once, then reads until
	// EOF and reports what it read on Received.
	Banner
)

// BannerLine is what a Banner backend sends first.
const BannerLine = "hello from the banner backend\n"

// Backend is a TCP server on 127.0.0.1.
type Backend struct {
	// Received gets, per connection to a Banner backend, the bytes read.
	Received chan []byte

	kind     BackendKind
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup

	mu    sync.Mutex // guards the following
	conns map[net.Conn]struct{}
}

// StartBackend runs a backend until the test ends.
func StartBackend(t testing.TB, kind BackendKind) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{Received: make(chan []byte, 16), kind: kind, ln: ln, conns: map[net.Conn]struct{}{}}
	b.wg.Go(b.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			_ = c.Close()
		}
		b.mu.Unlock()
		waitOrFail(t, "backend", &b.wg)
	})
	return b
}

// Addr is the backend's TCP address.
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// Accepted counts the TCP connections the backend accepted.
func (b *Backend) Accepted() int { return int(b.accepted.Load()) }

func (b *Backend) accept() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.accepted.Add(1)
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Go(func() {
			defer func() {
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				_ = c.Close()
			}()
			tcp := c.(*net.TCPConn)
			switch b.kind {
			case Echo:
				if _, err := io.Copy(tcp, tcp); err == nil {
					_ = tcp.CloseWrite()
					_, _ = io.Copy(io.Discard, tcp) // until the client closes
				}
			case Banner:
				if _, err := io.WriteString(tcp, BannerLine); err != nil {
					return
				}
				_ = tcp.CloseWrite()
				got, _ := io.ReadAll(tcp)
				select {
				case b.Received <- got:
				default:
				}
			}
		})
	}
}

// Relay is a UDP relay between clients and an edge that gives each client
// socket its own upstream socket, as a NAT does, so the edge sees one source
// port per client socket. It can blackhole a client socket (both ways: a
// path that died) and move to another edge (the edge was replaced).
type Relay struct {
	front *net.UDPConn
	wg    sync.WaitGroup

	mu       sync.Mutex // guards the following
	target   netip.AddrPort
	upstream map[netip.AddrPort]*net.UDPConn
	blocked  map[netip.AddrPort]bool
	closed   bool
}

// NewRelay runs a relay to target until the test ends.
func NewRelay(t testing.TB, target string) *Relay {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{front: front, upstream: map[netip.AddrPort]*net.UDPConn{}, blocked: map[netip.AddrPort]bool{}}
	r.Retarget(target)
	r.wg.Go(r.forward)
	t.Cleanup(func() {
		r.mu.Lock()
		r.closed = true
		_ = r.front.Close()
		for _, up := range r.upstream {
			_ = up.Close()
		}
		r.mu.Unlock()
		waitOrFail(t, "relay", &r.wg)
	})
	return r
}

// Addr is where clients send to.
func (r *Relay) Addr() string { return r.front.LocalAddr().String() }

// Blackhole drops every packet from and to the client socket at addr.
func (r *Relay) Blackhole(client netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blocked[unmap(client)] = true
}

// Retarget sends everything to the edge at target from now on and drops
// what the previous edge sends.
func (r *Relay) Retarget(target string) {
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		panic("edgetest: relay target " + target + ": " + err.Error())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target = unmap(ap)
}

func (r *Relay) forward() {
	buf := make([]byte, 2048)
	for {
		n, from, err := r.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = unmap(from)
		r.mu.Lock()
		if r.closed || r.blocked[from] {
			r.mu.Unlock()
			continue
		}
		up := r.upstream[from]
		if up == nil {
			if up, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
				r.mu.Unlock()
				continue
			}
			r.upstream[from] = up
			r.wg.Go(func() { r.backward(from, up) })
		}
		target := r.target
		r.mu.Unlock()
		_, _ = up.WriteToUDPAddrPort(buf[:n], target)
	}
}

func (r *Relay) backward(client netip.AddrPort, up *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := up.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		r.mu.Lock()
		drop := r.blocked[client] || unmap(from) != r.target
		r.mu.Unlock()
		if !drop {
			_, _ = r.front.WriteToUDPAddrPort(buf[:n], client)
		}
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// waitOrFail waits for wg, failing the test when that takes more than a
// second: a server must exit within a second of shutdown.
func waitOrFail(t testing.TB, what string, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Errorf("edgetest: %s still running a second after shutdown", what)
		<-done
	}
}

// FreePort returns a port that was free on 127.0.0.1 for both UDP and TCP
// a moment ago, for a test that must name a port before binding it.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		p := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		u.Close()
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}
