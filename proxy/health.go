package proxy

import (
	"errors"
	"net"
	"net/http"
	"strings"

	"go.uber.org/zap"
)

// CertReadiness is implemented by certificate sources that know whether the
// certificates they are to serve are loaded (*tlsmgr.Manager); /readyz
// asks it.
type CertReadiness interface {
	// CertificatesReady returns nil when they are, else what is missing.
	CertificatesReady() error
}

// check is one line of a health endpoint's answer: its name, and why it
// failed (nil: it passed).
type check struct {
	name string
	err  error
}

// liveness is /healthz's one check, "serving": every serving loop
// (HTTP/3, TCP, the plain-HTTP port, the admin endpoint) is running. The
// endpoint answering at all says the process serves its admin endpoint.
func (s *Server) liveness() []check {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []check{{"serving", s.loopsStoppedLocked()}}
}

// readiness is /readyz's checks, in order:
//
//   - listeners: the server is serving (not starting, not shutting down)
//     and every serving loop runs;
//   - certificates: the certificate source has loaded what it serves from
//     the start (see tlsmgr.Manager.CertificatesReady: certificate files,
//     local-CA names, and ACME names once obtained; on-demand names are not
//     waited for);
//   - upstreams: every reverse_proxy has at least one healthy backend, as
//     its health checks see it (a backend is healthy until an active or
//     passive check fails it; without checks, always).
func (s *Server) readiness() []check {
	s.mu.Lock()
	var listeners error
	switch {
	case s.shutdown:
		listeners = errors.New("shutting down")
	case s.draining:
		listeners = errors.New("draining: another process accepts the new connections (an upgrade)")
	case !s.served:
		listeners = errors.New("not serving yet")
	default:
		listeners = s.loopsStoppedLocked()
	}
	certs := s.certs
	s.mu.Unlock()

	var certErr error
	if cr, ok := certs.(CertReadiness); ok {
		certErr = cr.CertificatesReady()
	}
	return []check{{"listeners", listeners}, {"certificates", certErr}, {"upstreams", s.upstreamsReady()}}
}

// upstreamsReady returns nil when every pool has a healthy backend, else
// one line per pool that has none.
func (s *Server) upstreamsReady() error {
	var down []string
	s.mu.Lock()
	pools := s.snap.pools
	s.mu.Unlock()
	for _, pe := range pools {
		p := pe.pool
		healthy := false
		var addrs []string
		for _, b := range p.Backends() {
			if b.Healthy() {
				healthy = true
				break
			}
			addrs = append(addrs, b.Addr)
		}
		if !healthy {
			down = append(down, pe.pos.String()+": reverse_proxy: no healthy backend ("+strings.Join(addrs, ", ")+")")
		}
	}
	if len(down) == 0 {
		return nil
	}
	return errors.New(strings.Join(down, "; "))
}

// loopsStoppedLocked returns nil while every serving loop runs, else which
// stopped and why. s.mu must be held.
func (s *Server) loopsStoppedLocked() error {
	if len(s.loopsStopped) == 0 {
		return nil
	}
	return errors.New("stopped: " + strings.Join(s.loopsStopped, "; "))
}

// goServe runs a serving loop (an http3, TCP, plain-HTTP or admin server's
// Serve on addr) on s.serving. A loop that returns while the server is not
// shutting down has failed, whatever it returned: it is logged with msg
// and the health endpoints report it.
func (s *Server) goServe(msg, what string, addr net.Addr, serve func() error) {
	s.serving.Go(func() {
		err := serve()
		s.mu.Lock()
		stopping := s.shutdown || s.draining || errors.Is(err, errPortRemoved)
		if !stopping {
			why := "returned"
			if err != nil {
				why = err.Error()
			}
			s.loopsStopped = append(s.loopsStopped, what+" "+addr.String()+": "+why)
		}
		s.mu.Unlock()
		if !stopping {
			s.logger.Error(msg, zap.Stringer("addr", addr), zap.Error(err))
		}
	})
}

// serveHealth answers a health endpoint with checks: 200 when all pass,
// else 503; the body has one line per check, "NAME ok" or "NAME failed:
// REASON".
func serveHealth(w http.ResponseWriter, checks []check) {
	var b strings.Builder
	status := http.StatusOK
	for _, c := range checks {
		b.WriteString(c.name)
		if c.err == nil {
			b.WriteString(" ok\n")
			continue
		}
		status = http.StatusServiceUnavailable
		b.WriteString(" failed: ")
		b.WriteString(strings.ReplaceAll(c.err.Error(), "\n", "; "))
		b.WriteString("\n")
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}
