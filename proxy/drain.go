package proxy

import (
	"context"
	"errors"
	"net/http"

	"go.uber.org/zap"
)

// StopAccepting makes the server take no new connection while it keeps
// serving every one it has: the last step of a binary upgrade in the old
// process, whose successor now accepts on the same ports. QUIC
// connections carry on as before (no GOAWAY: a client migrating or
// rebinding while the old process drains keeps its session and its
// upstream connections); TCP connections (HTTP/1.1, HTTP/2) are finished
// the way Shutdown does (GOAWAY, Connection: close), as a new TCP
// connection costs them nothing the successor cannot give. Idle says when
// the last session has ended; Shutdown then stops what is left.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	if s.draining || s.shutdown || !s.served {
		s.mu.Unlock()
		return
	}
	s.draining = true
	s.mu.Unlock()
	for _, ps := range s.ports {
		// Closing a listener of a quic.Transport ends its handshakes in
		// progress and nothing else: the transport keeps routing packets to
		// the connections it has.
		for _, ln := range ps.qlns {
			_ = ln.Close()
		}
	}
	// The TCP servers close their listeners (the successor has its own
	// descriptors of the same sockets), answer in-flight requests and
	// close; Shutdown waits for them.
	ctx, cancel := context.WithCancel(context.Background())
	s.drainStop = cancel
	stop := func(name string, srv *http.Server) {
		s.serving.Go(func() {
			if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
				s.logger.Warn("draining: "+name, zap.Error(err))
			}
		})
	}
	for _, ps := range s.ports {
		if ps.h1 != nil {
			stop("tcp", ps.h1)
		}
	}
	if s.http != nil {
		stop("http port", s.http.srv)
	}
	if s.admin != nil {
		stop("admin", s.admin.srv)
	}
	s.logger.Info("draining: no new connections; serving the open ones", zap.Int64("sessions", s.open.Load()))
	if s.open.Load() == 0 {
		s.idleOnce.Do(func() { close(s.idle) })
	}
}

// Idle is closed once a server that stopped accepting has no session left.
func (s *Server) Idle() <-chan struct{} { return s.idle }

// Sessions reports the open sessions (QUIC and TCP connections).
func (s *Server) Sessions() int64 { return s.open.Load() }

func (s *Server) sessionEnded() {
	if s.open.Add(-1) != 0 {
		return
	}
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		s.idleOnce.Do(func() { close(s.idle) })
	}
}
