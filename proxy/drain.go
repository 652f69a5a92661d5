package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/quic-go/quic-go/http3"
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
	if prev := s.drainStop; prev != nil { // an earlier drain's, resumed since
		s.drainStop = func() { prev(); cancel() }
	} else {
		s.drainStop = cancel
	}
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
		s.mu.Lock()
		s.closeIdleLocked()
		s.mu.Unlock()
	}
}

// closeIdleLocked closes s.idle, once. s.mu is held.
func (s *Server) closeIdleLocked() {
	if s.draining && !s.idleClosed {
		s.idleClosed = true
		close(s.idle)
	}
}

// Idle is closed once a server that stopped accepting has no session left
// (a server that resumes accepting has a new one).
func (s *Server) Idle() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idle
}

// ResumeAccepting undoes StopAccepting: the successor of an upgrade exited
// while this process drained, so new connections are this process's again.
// The QUIC transports kept their sockets and get new listeners; the TCP
// listeners, the plain-HTTP port and the admin endpoint, which
// StopAccepting closed, are bound again at their addresses (a connection
// that waited in the successor's accept queue is lost with it); readiness
// passes again. The connections of the drain are served on as they were.
// On error (an address taken meanwhile) the server drains on, unchanged.
func (s *Server) ResumeAccepting() (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.draining || s.shutdown {
		return errors.New("proxy: resume accepting: the server does not drain")
	}
	var opened []io.Closer
	defer func() {
		if err != nil {
			for _, c := range opened {
				_ = c.Close()
			}
		}
	}()
	relisten := func(old []net.Listener) ([]net.Listener, error) {
		var out []net.Listener
		for _, ln := range old {
			nl, err := s.sockets.ListenTCP(ln.Addr().String())
			if err != nil {
				return nil, fmt.Errorf("proxy: resume accepting: %w", inUse(err, ln.Addr().(*net.TCPAddr).Port))
			}
			opened = append(opened, nl)
			out = append(out, nl)
		}
		return out, nil
	}
	tcpTLS, qtls := s.tlsConfigs()
	tcps := make([][]net.Listener, len(s.ports))
	qlns := make([][]http3.QUICListener, len(s.ports))
	for k, ps := range s.ports {
		if tcps[k], err = relisten(ps.tcp); err != nil {
			return err
		}
		for _, tr := range ps.transports {
			ln, err := listenQUIC(tr, qtls, s.quicConf)
			if err != nil {
				return fmt.Errorf("proxy: resume accepting: quic: %w", err)
			}
			opened = append(opened, ln)
			qlns[k] = append(qlns[k], ln)
		}
	}
	var httpLns, adminLns []net.Listener
	if s.http != nil {
		if httpLns, err = relisten(s.http.lns); err != nil {
			return err
		}
	}
	if s.admin != nil && s.admin.ln != nil {
		if adminLns, err = relisten([]net.Listener{s.admin.ln}); err != nil {
			return err
		}
	}

	// Everything is bound: serve.
	s.draining = false
	s.idle, s.idleClosed = make(chan struct{}), false
	for k, ps := range s.ports {
		ps.tcp, ps.qlns = tcps[k], qlns[k]
		ps.h1 = s.tcpServer(ps, tcpTLS)
		for i, udp := range ps.udp {
			if err := s.sockets.Serving(udp); err != nil {
				s.logger.Warn("resume accepting: steering new clients here", zap.Stringer("udp", udp.LocalAddr()), zap.Error(err))
			}
			s.servePair(ps, i)
		}
	}
	if s.http != nil {
		s.http = &httpPort{srv: s.httpPortServer(s.http.srv.Handler), lns: httpLns}
		s.serveHTTP()
	}
	if adminLns != nil {
		s.admin.ln = adminLns[0]
		s.admin.srv = &http.Server{Handler: s.admin.srv.Handler, ReadHeaderTimeout: s.admin.srv.ReadHeaderTimeout}
		s.goServe("admin serving stopped", "admin", s.admin.ln.Addr(), s.admin.serve)
	}
	s.logger.Info("accepting new connections again", zap.Int64("sessions", s.open.Load()))
	return nil
}

// Sessions reports the open sessions (QUIC and TCP connections).
func (s *Server) Sessions() int64 { return s.open.Load() }

func (s *Server) sessionEnded() {
	if s.open.Add(-1) != 0 {
		return
	}
	s.mu.Lock()
	s.closeIdleLocked()
	s.mu.Unlock()
}
