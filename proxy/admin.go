package proxy

import (
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// adminServer serves /metrics (Prometheus), the health endpoints /healthz
// (liveness) and /readyz (readiness) (see Server.liveness and
// Server.readiness) and, when bound to a loopback address, /debug/pprof/
// for profiling the running proxy.
type adminServer struct {
	addr    string
	sockets Sockets
	srv     *http.Server
	ln      net.Listener
	logger  *zap.Logger
}

func newAdminServer(addr string, reg *prometheus.Registry, s *Server, logger *zap.Logger) *adminServer {
	a := &adminServer{addr: addr, sockets: s.sockets, logger: logger.Named("admin")}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(a.logger)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { serveHealth(w, s.liveness()) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { serveHealth(w, s.readiness()) })
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return a
}

func (a *adminServer) listen() error {
	ln, err := a.sockets.ListenTCP(a.addr)
	if err != nil {
		return err
	}
	a.ln = ln
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsLoopback() {
		mux := a.srv.Handler.(*http.ServeMux)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	} else {
		a.logger.Warn("admin endpoint is not on loopback: /debug/pprof/ is off", zap.Stringer("addr", ln.Addr()))
	}
	a.logger.Info("admin endpoint listening", zap.Stringer("addr", ln.Addr()))
	return nil
}

func (a *adminServer) serve() error { return a.srv.Serve(a.ln) }
