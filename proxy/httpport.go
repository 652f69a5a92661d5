package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// HTTPChallenger is implemented by certificate sources that obtain
// certificates from an ACME CA (*tlsmgr.Manager): they answer ACME HTTP-01
// challenges on the plain-HTTP port.
type HTTPChallenger interface {
	// UsesACME reports whether any site's certificates come from ACME, so
	// the HTTP port is needed.
	UsesACME() bool
	// HTTPChallengeHandler answers HTTP-01 challenge requests and passes
	// everything else to next.
	HTTPChallengeHandler(next http.Handler) http.Handler
}

// httpPort is the plain-HTTP listener (http_port): ACME HTTP-01 challenges
// first, a redirect to HTTPS for everything else. It runs only when some
// site's certificates come from ACME; HTTP/3 needs TLS, and a sidecar with
// a local or file certificate has no use for port 80.
type httpPort struct {
	srv    *http.Server
	lns    []net.Listener
	closed atomic.Bool // by CloseHTTPPort: its serving loops end as planned
}

// listenHTTP binds the HTTP port on every bind host. Serve installs its
// handler.
func (s *Server) listenHTTP(hosts []string) error {
	hp := &httpPort{}
	port := s.cfg.HTTPPort
	for _, host := range hosts {
		ln, err := s.sockets.ListenTCP(net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			for _, l := range hp.lns {
				l.Close()
			}
			return fmt.Errorf("listen http: %w", err)
		}
		hp.lns = append(hp.lns, ln)
		port = ln.Addr().(*net.TCPAddr).Port // several hosts share one ephemeral port
	}
	hp.srv = s.httpPortServer(nil)
	s.http = hp
	return nil
}

// httpPortServer is the plain-HTTP port's server, with handler.
func (s *Server) httpPortServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          zap.NewStdLog(s.logger.Named("http").WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
}

func (s *Server) serveHTTP() {
	hp := s.http
	if hp == nil {
		return
	}
	for _, ln := range hp.lns {
		s.goServe("http serving stopped", "http", ln.Addr(), func() error {
			err := hp.srv.Serve(ln)
			if hp.closed.Load() {
				return errPortRemoved
			}
			return err
		})
		s.logger.Info("listening", zap.Stringer("http", ln.Addr()), zap.Strings("protocols", []string{"http/1.1 (acme, redirect)"}))
	}
}

// OpenHTTPPort binds and serves the plain-HTTP port (http_port) on a
// serving server that runs without it, which a reload needs when its
// configuration obtains certificates from ACME for the first time:
// HTTP-01 challenges are answered there, and plain-HTTP requests are
// redirected. It reports whether it opened the port (false when it was
// open already); CloseHTTPPort undoes it. Once open, the port stays open
// until the server stops.
func (s *Server) OpenHTTPPort() (opened bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.http != nil:
		return false, nil
	case !s.served || s.shutdown || s.draining:
		return false, errors.New("proxy: the HTTP port opens on a serving server only")
	}
	ch, ok := s.certs.(HTTPChallenger)
	if !ok {
		return false, errors.New("proxy: the HTTP port needs a certificate source that answers ACME challenges")
	}
	if err := s.listenHTTP(s.bindHosts()); err != nil {
		return false, err
	}
	s.http.srv.Handler = ch.HTTPChallengeHandler(&redirectHandler{srv: s})
	s.serveHTTP()
	return true, nil
}

// CloseHTTPPort closes the plain-HTTP port at once: a reload that opened it
// and then failed puts the server back as it was. A server that shuts down
// or drains closes it itself.
func (s *Server) CloseHTTPPort() {
	s.mu.Lock()
	hp := s.http
	if hp == nil || s.shutdown || s.draining {
		s.mu.Unlock()
		return
	}
	s.http = nil
	s.mu.Unlock()
	hp.closed.Store(true)
	_ = hp.srv.Close()
	for _, ln := range hp.lns {
		_ = ln.Close()
	}
}

// HTTPAddrs reports the addresses of the plain-HTTP port, or nil when it is
// not running.
func (s *Server) HTTPAddrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.http == nil {
		return nil
	}
	out := make([]net.Addr, len(s.http.lns))
	for i, ln := range s.http.lns {
		out[i] = ln.Addr()
	}
	return out
}

// ChallengePorts reports the bound ports where ACME challenges are answered:
// HTTP-01 on the plain-HTTP port (0 when it is not listening), TLS-ALPN-01
// on the TCP listener of the global https_port (that port as configured
// when no site listens on it). Call it after Listen.
func (s *Server) ChallengePorts() (httpPort, tlsPort int) {
	if addrs := s.HTTPAddrs(); len(addrs) > 0 {
		httpPort = addrs[0].(*net.TCPAddr).Port
	}
	tlsPort = s.BoundPort(s.cfg.HTTPSPort)
	if tlsPort == 0 {
		tlsPort = s.cfg.HTTPSPort
	}
	return httpPort, tlsPort
}

// redirectHandler sends plain-HTTP requests to HTTPS with 308 Permanent
// Redirect (RFC 9110 §15.4.9: the method and body are kept), to the same
// host and path, on the port of the site that serves the host (the global
// https_port when none does), omitting :443.
type redirectHandler struct{ srv *Server }

func (h *redirectHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := hostOnly(r.Host)
	if host == "" {
		http.Error(w, "a Host header is required", http.StatusBadRequest)
		return
	}
	port := h.srv.httpsPortFor(host)
	target := "https://" + bracketIPv6(host)
	if port != 443 {
		target += ":" + strconv.Itoa(port)
	}
	target += r.URL.RequestURI()
	w.Header().Set("Location", target)
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusPermanentRedirect)
}

// httpsPortFor is the bound port of the site that serves host by name
// (exact or wildcard), else of a catch-all site, else the global https_port.
func (s *Server) httpsPortFor(host string) int {
	s.mu.Lock()
	ports := s.ports // a reload replaces the slice, never changes it
	s.mu.Unlock()
	catchAll := 0
	for _, ps := range ports {
		rt := ps.rt.Load()
		if rt.exact[host] != nil || rt.matchWildcard(host) != nil {
			return ps.bound
		}
		if rt.catchAll != nil && catchAll == 0 {
			catchAll = ps.bound
		}
	}
	if catchAll != 0 {
		return catchAll
	}
	return s.cfg.HTTPSPort
}

func bracketIPv6(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return "[" + host + "]"
	}
	return host
}
