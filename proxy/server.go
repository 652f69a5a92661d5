package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy/keys"
	"github.com/roamgate/roamgate/proxy/quiclb"
	"github.com/roamgate/roamgate/upstream"
)

// CertSource supplies the TLS configurations of the listeners;
// *tlsmgr.Manager is one.
type CertSource interface {
	// TLSConfig is for the TCP listener: h2, http/1.1 (and acme-tls/1).
	TLSConfig() *tls.Config
	// QUICTLSConfig is for HTTP/3: h3, TLS 1.3.
	QUICTLSConfig() *tls.Config
}

// ClientCertVerifier is implemented by certificate sources that do mutual
// TLS (*tlsmgr.Manager): the proxy checks each request to a site with
// client CAs against them, as a handshake names a host and a request may
// name another.
type ClientCertVerifier interface {
	VerifyClientCert(caFiles []string, cs *tls.ConnectionState) error
}

// Options are the optional parts of a Server.
type Options struct {
	// Logger receives the server's logs; nil logs nothing.
	Logger *zap.Logger
	// AccessLogger receives one line per request; nil uses
	// Logger.Named("access"). zap.NewNop() turns access logs off.
	AccessLogger *zap.Logger
	// Registry receives the metrics and backs the admin endpoint's /metrics;
	// nil uses a private registry.
	Registry *prometheus.Registry
	// QUICConfig overrides the QUIC transport settings; nil uses defaults
	// (30 s idle timeout; 0-RTT as the Roamfile's zero_rtt says).
	QUICConfig *quic.Config
	// Generation is the process generation every server connection ID
	// carries (0 to quiclb.MaxGeneration; default 0), by which packets reach
	// the old or the new process during a binary upgrade (issue 14).
	Generation int
	// Sockets binds the listening sockets; nil binds new ones (NetSockets).
	// A binary upgrade's new process gets its predecessor's through it.
	Sockets Sockets
	// SharedSecret, when set (the Roamfile's shared_keys, resolved), is
	// the secret the token, session-ticket, cookie and (with quic_lb)
	// stateless-reset keys derive from (package keys), the same on every
	// instance that has it. It takes the place of CookieSecret.
	SharedSecret []byte
	// CookieSecret signs lb_policy cookie values. It should persist across
	// restarts (roamgate keeps one in the data directory) so clients keep
	// their backend; nil uses a random one for this process.
	CookieSecret []byte
}

// Server is roamgate's listening side: for every port of the configuration,
// HTTP/3 on UDP through a quic.Transport of its own, and HTTP/1.1 and HTTP/2
// over TLS on the TCP port of the same number.
type Server struct {
	cfg      *configs.Config
	certs    CertSource
	logger   *zap.Logger
	errLog   lazyLogger // per-request failures, rate-limited
	access   *zap.Logger
	registry *prometheus.Registry
	metrics  *metrics
	quicConf *quic.Config
	// cids issues the server connection IDs of every QUIC transport.
	cids          *quiclb.Generator
	admit         *admission    // for every QUIC transport
	keys          *keys.Keys    // shared keys; nil: each transport's own
	tickets       *keys.Tickets // seals session tickets with shared keys; nil: crypto/tls's own
	sockets       Sockets
	ports         []*portServer
	drainingPorts map[int]*portServer // by configured port (not 0): removed by a reload, still draining
	secret        []byte              // the cookie key, for the pools
	upMetrics     *upstream.Metrics
	poolStop      context.CancelFunc
	poolCtx       context.Context // the pools' health checks run until it ends; nil before Serve
	http          *httpPort       // nil unless some certificate comes from ACME
	admin         *adminServer
	sessions      sync.WaitGroup     // one per open session
	open          atomic.Int64       // open sessions, for Idle
	idle          chan struct{}      // closed when a draining server has no session left; guarded by mu
	idleClosed    bool               // guarded by mu
	drainStop     context.CancelFunc // ends StopAccepting's TCP shutdowns
	stopCtx       context.Context    // ends when Shutdown begins
	stop          context.CancelFunc
	serving       sync.WaitGroup // the Serve goroutines

	nextSessionID atomic.Uint64
	pathSample    time.Duration // how often a session with long-lived streams checks its path

	mu        sync.Mutex // guards the following
	snap      *snapshot  // the configuration being served (see Reload)
	listening bool
	served    bool
	shutdown  bool
	draining  bool // StopAccepting was called
	// loopsStopped describes the serving loops that returned while the
	// server was not shutting down: /healthz fails while there are any.
	loopsStopped []string
}

// portServer is everything listening on one port number.
type portServer struct {
	port    int                    // as configured; 0 picks a free port shared by UDP and TCP
	bound   int                    // the port listened on
	rt      atomic.Pointer[router] // swapped by Reload
	removed atomic.Bool            // a reload took the port out: its serving loops end

	h3         *http3.Server
	h1         *http.Server
	udp        []*net.UDPConn
	transports []*quic.Transport
	qlns       []http3.QUICListener // *quic.Listener, or *quic.EarlyListener with 0-RTT
	tcp        []net.Listener

	// A port that a reload adds back while it still drains from an
	// earlier one takes over the draining port's UDP sockets and QUIC
	// transports (from): their connections stay with from's servers,
	// new ones come to this port's. Until the reload commits they are
	// borrowed (from closes them); then from is handedOn (this port
	// closes them). Guarded by Server.mu.
	from               *portServer
	borrowed, handedOn bool
}

// Listener describes one bound port.
type Listener struct {
	Port int
	UDP  []net.Addr // HTTP/3
	TCP  []net.Addr // HTTP/1.1 and HTTP/2
}

// New builds a Server for cfg: a pool per reverse_proxy and a router per
// port. It does not listen yet; see Listen and Serve, or Start.
func New(cfg *configs.Config, opts Options) (*Server, error) {
	if cfg == nil {
		return nil, errors.New("proxy: nil config")
	}
	logger := opts.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	qconf := opts.QUICConfig
	if qconf == nil {
		qconf = &quic.Config{MaxIdleTimeout: 30 * time.Second, Allow0RTT: cfg.ZeroRTT}
	}
	access := opts.AccessLogger
	if access == nil {
		access = logger.Named("access")
	}
	s := &Server{
		cfg:        cfg,
		logger:     logger,
		errLog:     lazyLogger{base: logger},
		access:     access,
		pathSample: time.Second,
		registry:   reg,
		metrics:    newMetrics(reg),
		quicConf:   qconf,
		sockets:    opts.Sockets,
		idle:       make(chan struct{}),
	}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	if s.sockets == nil {
		s.sockets = NetSockets{}
	}
	s.admit = newAdmission(cfg.HandshakeRate, cfg.HandshakeRatePerIP, s.metrics.admission, &s.errLog)
	cids, err := newCIDGenerator(cfg.QUICLB, opts.Generation, logger)
	if err != nil {
		return nil, err
	}
	s.cids = cids
	secret := opts.CookieSecret
	if opts.SharedSecret != nil {
		var serverID []byte
		if cfg.QUICLB != nil {
			serverID = cfg.QUICLB.ServerID
		}
		k := keys.Derive(opts.SharedSecret, serverID)
		s.keys, secret = &k, k.Cookie
		rotation := configs.DefaultTicketRotation
		if cfg.SharedKeys != nil {
			rotation = cfg.SharedKeys.TicketRotation
		}
		s.tickets = keys.NewTickets(opts.SharedSecret, rotation)
		logger.Info("shared keys: tokens, session tickets and cookies from the shared secret",
			zap.Bool("stateless_reset", k.Reset != nil), zap.Duration("ticket_rotation", rotation))
	}
	if secret == nil {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, fmt.Errorf("proxy: cookie secret: %w", err)
		}
	}
	s.secret = secret
	s.upMetrics = upstream.NewMetrics(reg)
	snap, _, err := s.compile(cfg, nil)
	if err != nil {
		return nil, err
	}
	s.snap = snap
	for _, port := range snap.order {
		ps := &portServer{port: port}
		ps.rt.Store(snap.routers[port])
		s.ports = append(s.ports, ps)
	}
	if cfg.Admin != "" {
		s.admin = newAdminServer(cfg.Admin, reg, s, logger)
	}
	return s, nil
}

// Start binds every listener and serves with certs: Listen, with the HTTP
// port when certs obtains certificates from ACME, then Serve.
func (s *Server) Start(certs CertSource) error {
	ch, ok := certs.(HTTPChallenger)
	if err := s.Listen(ok && ch.UsesACME()); err != nil {
		return err
	}
	return s.Serve(certs)
}

// Listen binds every socket: UDP and TCP on each site port and bind host,
// the plain-HTTP port (http_port) when withHTTP is set (ACME HTTP-01
// challenges and redirects; it needs a certs that is an HTTPChallenger),
// and the admin endpoint. Nothing is served yet, so the bound ports can be
// read (Listeners, HTTPAddrs) and handed to the certificate manager, which
// must find its challenge ports taken by their owner. On error nothing
// stays bound.
func (s *Server) Listen(withHTTP bool) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listening || s.shutdown {
		return errors.New("proxy: server already listening")
	}
	s.listening = true
	defer func() {
		if err != nil {
			s.closeListeners()
		}
	}()
	hosts := s.bindHosts()
	for _, ps := range s.ports {
		if err := s.listenPort(ps); err != nil {
			return err
		}
	}
	if withHTTP {
		if err := s.listenHTTP(hosts); err != nil {
			return err
		}
	}
	if s.admin != nil {
		if err := s.admin.listen(); err != nil {
			return err
		}
	}
	return nil
}

// bindHosts are the hosts every port listens on: default_bind's, else all
// interfaces ("").
func (s *Server) bindHosts() []string {
	if hosts := s.cfg.DefaultBind; len(hosts) > 0 {
		return hosts
	}
	return []string{""}
}

// listenPort binds a port's UDP and TCP sockets on every bind host.
func (s *Server) listenPort(ps *portServer) error {
	port := ps.port
	for _, host := range s.bindHosts() {
		udp, tcp, err := listenPair(s.sockets, host, port)
		if err != nil {
			return err
		}
		ps.udp = append(ps.udp, udp)
		ps.tcp = append(ps.tcp, tcp)
		port = udp.LocalAddr().(*net.UDPAddr).Port // several hosts share one ephemeral port
	}
	ps.bound = port
	return nil
}

// Serve starts serving on the sockets Listen bound, with certificates from
// certs. On error the sockets are closed.
func (s *Server) Serve(certs CertSource) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case certs == nil:
		return errors.New("proxy: nil certificate source")
	case !s.listening:
		return errors.New("proxy: Serve before Listen")
	case s.served || s.shutdown:
		return errors.New("proxy: server already serving")
	}
	s.served = true
	s.certs = certs
	defer func() {
		if err != nil {
			s.closeListeners()
		}
	}()
	if s.http != nil {
		ch, ok := certs.(HTTPChallenger)
		if !ok {
			return errors.New("proxy: the HTTP port needs a certificate source that answers ACME challenges")
		}
		s.http.srv.Handler = ch.HTTPChallengeHandler(&redirectHandler{srv: s})
	}
	for _, ps := range s.ports {
		if err := s.serve(ps); err != nil {
			return err
		}
	}
	s.serveHTTP()
	if s.admin != nil {
		s.goServe("admin serving stopped", "admin", s.admin.ln.Addr(), s.admin.serve)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.poolStop = cancel
	s.poolCtx = ctx
	for _, p := range s.snap.pools {
		p.pool.Start(ctx) // active health checks, when configured
	}
	return nil
}

// BoundPort returns the port the sites configured on port listen on (they
// differ when the configuration says 0), or 0 when no site uses port.
func (s *Server) BoundPort(port int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ps := range s.ports {
		if ps.port == port {
			return ps.bound
		}
	}
	return 0
}

// serve starts HTTP/3 and TCP serving on a port's bound sockets.
func (s *Server) serve(ps *portServer) error {
	slogger := slog.New(zapslog.NewHandler(s.logger.Named("http3").Core()))
	maxHeader := protocolHeaderLimit(s.cfg)
	ps.h3 = &http3.Server{
		MaxHeaderBytes: maxHeader,
		Handler:        &handler{srv: s, router: &ps.rt},
		QUICConfig:     s.quicConf,
		ConnContext:    s.h3ConnContext,
		Logger:         slogger,
	}
	tcpTLS, qtls := s.tlsConfigs()
	ps.h1 = s.tcpServer(ps, tcpTLS)
	for i, udp := range ps.udp {
		var tr *quic.Transport
		if i < len(ps.transports) {
			tr = ps.transports[i] // taken over from the port's drain
		} else {
			pc, err := s.sockets.PacketConn(udp)
			if err != nil {
				return fmt.Errorf("listen quic %s: %w", udp.LocalAddr(), err)
			}
			tr = &quic.Transport{Conn: pc}
			if s.keys != nil {
				tr.TokenGeneratorKey = &s.keys.Token
				tr.StatelessResetKey = s.keys.Reset
			}
			s.admit.configure(tr)
			tr.ConnectionIDGenerator = s.cids
			ps.transports = append(ps.transports, tr)
		}
		ln, err := listenQUIC(tr, qtls, s.quicConf)
		if err != nil {
			return fmt.Errorf("listen quic %s: %w", udp.LocalAddr(), err)
		}
		ps.qlns = append(ps.qlns, ln)
		if err := s.sockets.Serving(udp); err != nil {
			return fmt.Errorf("listen quic %s: %w", udp.LocalAddr(), err)
		}
		s.servePair(ps, i)
	}
	return nil
}

// tlsConfigs are the TLS configurations of the TCP servers and of QUIC
// (with HTTP/3's ALPN), sealing session tickets with the shared keys when
// there are some.
func (s *Server) tlsConfigs() (tcpTLS, quicTLS *tls.Config) {
	tcpTLS, quicTLS = s.certs.TLSConfig(), s.certs.QUICTLSConfig()
	if s.tickets != nil {
		s.tickets.Install(tcpTLS)
		s.tickets.Install(quicTLS)
	}
	return tcpTLS, http3.ConfigureTLSConfig(quicTLS)
}

// tcpServer is a port's HTTP/1.1 and HTTP/2 server.
func (s *Server) tcpServer(ps *portServer, tcpTLS *tls.Config) *http.Server {
	return &http.Server{
		MaxHeaderBytes:    protocolHeaderLimit(s.cfg),
		Handler:           &handler{srv: s, router: &ps.rt, altSvc: []string{`h3=":` + strconv.Itoa(ps.bound) + `"; ma=2592000`}},
		TLSConfig:         tcpTLS,
		ConnContext:       tcpConnContext,
		ReadHeaderTimeout: time.Minute,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          zap.NewStdLog(s.logger.Named("tcp").WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
}

// servePair serves the port's i-th QUIC listener with its HTTP/3 server and
// its i-th TCP listener with its TCP server.
func (s *Server) servePair(ps *portServer, i int) {
	h3, h1, ln, udp := ps.h3, ps.h1, ps.qlns[i], ps.udp[i]
	s.goServe("http3 serving stopped", "http3", udp.LocalAddr(), func() error { return ps.removedOr(h3.ServeListener(ln)) })
	tcp := &sessionListener{Listener: ps.tcp[i], srv: s}
	s.goServe("tcp serving stopped", "tcp", tcp.Addr(), func() error { return ps.removedOr(h1.ServeTLS(tcp, "", "")) })
	s.logger.Info("listening", zap.Stringer("udp", udp.LocalAddr()), zap.Stringer("tcp", tcp.Addr()),
		zap.Strings("protocols", []string{"h3", "h2", "http/1.1"}))
}

// listenQUIC listens on tr, accepting 0-RTT (early data) when the config
// allows it: connections are then handed over before the handshake
// completes, and the handler answers unsafe early requests 425.
func listenQUIC(tr *quic.Transport, tlsConf *tls.Config, conf *quic.Config) (http3.QUICListener, error) {
	if conf.Allow0RTT {
		return tr.ListenEarly(tlsConf, conf)
	}
	return tr.Listen(tlsConf, conf)
}

// h3ConnContext starts the session of a new QUIC connection and ties its end
// to the connection's: when the connection closes (either side, idle
// timeout, shutdown), the session's upstream connections close.
func (s *Server) h3ConnContext(ctx context.Context, c *quic.Conn) context.Context {
	sess := s.newSession("h3", c.RemoteAddr(), c)
	context.AfterFunc(c.Context(), sess.close)
	return withSession(ctx, sess)
}

// Listeners reports the bound ports and addresses, in configuration order.
func (s *Server) Listeners() []Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Listener, 0, len(s.ports))
	for _, ps := range s.ports {
		l := Listener{Port: ps.bound}
		for _, u := range ps.udp {
			l.UDP = append(l.UDP, u.LocalAddr())
		}
		for _, t := range ps.tcp {
			l.TCP = append(l.TCP, t.Addr())
		}
		out = append(out, l)
	}
	return out
}

// AdminAddr is the bound admin address, or nil when the admin endpoint is off.
func (s *Server) AdminAddr() net.Addr {
	if s.admin == nil || s.admin.ln == nil {
		return nil
	}
	return s.admin.ln.Addr()
}

// Shutdown stops accepting, tells HTTP/3 clients to go away (GOAWAY) and
// HTTP/2 clients likewise, lets in-flight requests finish until ctx ends,
// then closes whatever is left and waits for every session to release its
// upstream connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return nil
	}
	s.shutdown = true
	listening := s.listening
	s.mu.Unlock()
	s.stop()
	if !listening {
		return nil
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	record := func(err error) {
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	for _, ps := range s.ports {
		if ps.h3 == nil {
			continue // Start failed before serving this port
		}
		wg.Go(func() { record(ps.h3.Shutdown(ctx)) })
		wg.Go(func() { record(ps.h1.Shutdown(ctx)) })
		// http3.Server.Shutdown leaves listeners given to ServeListener
		// open: close them so no new handshake completes.
		for _, ln := range ps.qlns {
			_ = ln.Close()
		}
	}
	if s.http != nil {
		wg.Go(func() { record(s.http.srv.Shutdown(ctx)) })
	}
	if s.admin != nil {
		wg.Go(func() { record(s.admin.srv.Shutdown(ctx)) })
	}
	wg.Wait()
	if s.drainStop != nil {
		s.drainStop()
	}
	for _, ps := range s.ports {
		if ps.h3 != nil {
			_ = ps.h3.Close()
			_ = ps.h1.Close()
		}
	}
	s.closeListeners()
	s.serving.Wait()
	s.sessions.Wait()
	if s.poolStop != nil {
		s.poolStop()
	}
	s.mu.Lock()
	pools := s.snap.pools
	s.mu.Unlock()
	for _, p := range pools {
		record(p.pool.Close())
	}
	return errors.Join(errs...)
}

// Close stops the server at once: connections are closed without waiting.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// closeListeners closes every socket, after the HTTP servers let go.
func (s *Server) closeListeners() {
	for _, ps := range s.ports {
		for _, ln := range ps.qlns {
			_ = ln.Close()
		}
		for _, tr := range ps.transports {
			_ = tr.Close() // abruptly ends connections still open
		}
		for _, u := range ps.udp {
			_ = u.Close()
		}
		for _, t := range ps.tcp {
			_ = t.Close()
		}
	}
	if s.http != nil {
		for _, ln := range s.http.lns {
			_ = ln.Close()
		}
	}
	if s.admin != nil && s.admin.ln != nil {
		_ = s.admin.ln.Close()
	}
}

// lazyLogger is the logger of per-request failures: a flood of failing
// requests must not become a flood of log lines, so per message it writes
// the first 20 a second, then every 100th. It is made at its first use:
// zap's sampler allocates a 458 KB table, which a proxy whose requests
// succeed never needs.
type lazyLogger struct {
	base   *zap.Logger
	once   sync.Once
	logger *zap.Logger
}

func (l *lazyLogger) get() *zap.Logger {
	l.once.Do(func() {
		l.logger = l.base.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
			return zapcore.NewSamplerWithOptions(c, time.Second, 20, 100)
		}))
	})
	return l.logger
}
