package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy"
	"github.com/roamgate/roamgate/proxy/handoff"
	"github.com/roamgate/roamgate/tlsmgr"
)

// Child kinds: the servers the benchmark runs in processes of their own.
const (
	childBackend  = "backend"
	childPlain    = "h3-plain"
	childRelay    = "h3-relay"
	childRoamgate = "roamgate"
)

// readyPrefix starts the one stdout line a child prints once it serves:
// the prefix, then its childInfo as JSON.
const readyPrefix = "roamgate-bench-ready "

// childInfo is what a child tells the benchmark once it serves.
type childInfo struct {
	PID      int    `json:"pid"`
	Addr     string `json:"addr"`                // HTTP/1.1 (TCP) for the backend, HTTP/3 (UDP) otherwise
	Unix     string `json:"unix,omitempty"`      // the backend's Unix socket, with --unix
	Control  string `json:"control"`             // the control endpoint: POST /gc, GET /stats
	Admin    string `json:"admin,omitempty"`     // roamgate's admin endpoint (/metrics)
	CertFile string `json:"cert_file,omitempty"` // roamgate's certificate for localhost, from its local CA
	KeyFile  string `json:"key_file,omitempty"`
	RootFile string `json:"root_file,omitempty"` // the local CA's root
}

// childStats is what a child's GET /stats answers.
type childStats struct {
	Goroutines int64 `json:"goroutines"`
	HeapBytes  int64 `json:"heap_bytes"` // live and unswept heap objects
	Opened     int64 `json:"opened"`     // connections accepted since start (TCP for the backend, QUIC for h3-plain)
	Open       int64 `json:"open"`       // connections open now
}

// childShutdownGrace bounds a child's graceful shutdown once the benchmark
// closed its stdin.
const childShutdownGrace = 2 * time.Second

// shutdownWithin runs a server's graceful shutdown, given childShutdownGrace.
func shutdownWithin(shutdown func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), childShutdownGrace)
	defer cancel()
	return shutdown(ctx)
}

// childMain runs one server until ctx ends or stdin closes (the benchmark
// closes it to stop the child, and it closes by itself when the benchmark
// dies, so no child outlives it). args[0] is the kind.
func childMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("child: no kind")
	}
	kind := args[0]
	fs := flag.NewFlagSet(kind, flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.Int64("size", 1024, "body size of GET /")
	cert := fs.String("cert", "", "certificate file (h3-plain, h3-relay)")
	key := fs.String("key", "", "key file (h3-plain, h3-relay)")
	backend := fs.String("backend", "", "the backend's address (roamgate, h3-relay)")
	unixPath := fs.String("unix", "", "also serve on this Unix socket (backend)")
	dataDir := fs.String("data-dir", "", "the data directory (roamgate)")
	accessLog := fs.Bool("access-log", false, "encode access logs (roamgate)")
	steering := fs.String("steering", "", "roamgate's upgrade steering: bpf or forward; none by default")
	removeOnExit := fs.String("remove-on-exit", "", "a directory to remove on exit, so a benchmark killed outright leaves no temporary files")
	if err := fs.Parse(args[1:]); err != nil {
		return fmt.Errorf("child %s: %w", kind, err)
	}
	if *removeOnExit != "" {
		defer os.RemoveAll(*removeOnExit)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()

	h := newBackendHandler(*size)
	var sets *setRecorder
	if kind == childBackend {
		sets = &setRecorder{}
		h.sets = sets
	}
	var conns connCounter
	var info childInfo
	var stop func() error
	var err error
	switch kind {
	case childBackend:
		info, stop, err = serveBackend(h, &conns, *unixPath)
	case childPlain:
		info, stop, err = servePlain(h, nil, &conns, *cert, *key)
	case childRelay:
		if *backend == "" {
			return errors.New("child h3-relay: --backend is required")
		}
		rl := &relay{backend: *backend}
		info, stop, err = servePlain(rl, rl.connContext, &conns, *cert, *key)
	case childRoamgate:
		info, stop, err = serveRoamgate(ctx, *backend, *dataDir, *accessLog, *steering, stderr)
	default:
		return fmt.Errorf("child: unknown kind %q", kind)
	}
	if err != nil {
		return fmt.Errorf("child %s: %w", kind, err)
	}
	ctl, err := startControl(&conns, sets)
	if err != nil {
		return errors.Join(fmt.Errorf("child %s: %w", kind, err), stop())
	}
	info.PID = os.Getpid()
	info.Control = ctl.Addr
	line, _ := json.Marshal(info)
	fmt.Fprintf(stdout, "%s%s\n", readyPrefix, line)
	<-ctx.Done()
	return errors.Join(stop(), ctl.Close())
}

// backendHandler answers like the backend (and, identically, h3-plain):
//
//	GET /             a fixed body of size bytes
//	GET /body?id=ID   size bytes derived from ID (hashedBody), for the faulted storm
//	GET /bytes?n=N    N bytes
//	POST /upload      reads and discards the body; answers its length
type backendHandler struct {
	body  []byte
	chunk []byte       // what /bytes writes, over and over
	sets  *setRecorder // the backend's; nil elsewhere
}

func newBackendHandler(size int64) *backendHandler {
	h := &backendHandler{body: make([]byte, size), chunk: make([]byte, 64<<10)}
	for i := range h.body {
		h.body[i] = 'x'
	}
	for i := range h.chunk {
		h.chunk[i] = 'x'
	}
	return h
}

func (h *backendHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.sets != nil {
		h.sets.record(r)
	}
	switch {
	case r.URL.Path == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(h.body)))
		_, _ = w.Write(h.body)
	case r.URL.Path == "/body" && r.Method == http.MethodGet:
		id := r.URL.Query().Get("id")
		if id == "" {
			http.Error(w, "want ?id=ID", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(h.body)))
		_, _ = w.Write(hashedBody(make([]byte, 0, len(h.body)), id, int64(len(h.body))))
	case r.URL.Path == "/bytes" && r.Method == http.MethodGet:
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want ?n=BYTES", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k, err := w.Write(h.chunk[:min(n, int64(len(h.chunk)))])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	case r.URL.Path == "/upload" && r.Method == http.MethodPost:
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	default:
		http.NotFound(w, r)
	}
}

// connCounter counts a server's connections.
type connCounter struct {
	opened atomic.Int64
	open   atomic.Int64
}

func (c *connCounter) add()  { c.opened.Add(1); c.open.Add(1) }
func (c *connCounter) done() { c.open.Add(-1) }

// serveBackend serves h over HTTP/1.1 on a loopback port, and on the Unix
// socket unixPath unless empty, counting accepted connections.
func serveBackend(h http.Handler, conns *connCounter, unixPath string) (childInfo, func() error, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return childInfo{}, nil, fmt.Errorf("listen: %w", err)
	}
	lns := []net.Listener{ln}
	if unixPath != "" {
		uln, err := net.Listen("unix", unixPath)
		if err != nil {
			ln.Close()
			return childInfo{}, nil, fmt.Errorf("listen: %w", err)
		}
		lns = append(lns, uln)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       func(ctx context.Context, _ net.Conn) context.Context { return withConnID(ctx) },
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				conns.add()
			case http.StateClosed, http.StateHijacked:
				conns.done()
			}
		},
	}
	var wg sync.WaitGroup
	for _, l := range lns {
		wg.Go(func() { _ = srv.Serve(l) })
	}
	stop := func() error {
		err := shutdownWithin(srv.Shutdown)
		if err != nil {
			err = srv.Close()
		}
		wg.Wait()
		return err
	}
	return childInfo{Addr: ln.Addr().String(), Unix: unixPath}, stop, nil
}

// plainQUICConfig is the QUIC configuration of h3-plain: roamgate's
// default (30 s idle timeout, 0-RTT on an early listener), so the two
// differ only by the proxy.
func plainQUICConfig() *quic.Config {
	return &quic.Config{MaxIdleTimeout: 30 * time.Second, Allow0RTT: true}
}

// servePlain serves h over HTTP/3 with quic-go alone, as roamgate serves
// its listeners (own quic.Transport, early listener), with roamgate's
// certificate. connCtx, unless nil, derives each QUIC connection's context.
func servePlain(h http.Handler, connCtx func(context.Context, *quic.Conn) context.Context, conns *connCounter, certFile, keyFile string) (childInfo, func() error, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return childInfo{}, nil, fmt.Errorf("load certificate: %w", err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return childInfo{}, nil, fmt.Errorf("listen udp: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	qconf := plainQUICConfig()
	tlsConf := http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	ln, err := tr.ListenEarly(tlsConf, qconf)
	if err != nil {
		udp.Close()
		return childInfo{}, nil, fmt.Errorf("listen quic: %w", err)
	}
	srv := &http3.Server{
		Handler:    h,
		QUICConfig: qconf,
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			conns.add()
			context.AfterFunc(c.Context(), conns.done)
			if connCtx != nil {
				ctx = connCtx(ctx, c)
			}
			return ctx
		},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeListener(ln)
	}()
	stop := func() error {
		err := shutdownWithin(srv.Shutdown)
		if errors.Is(err, context.DeadlineExceeded) {
			err = nil // Shutdown closed what was left
		}
		// Listeners given to ServeListener are the caller's to close.
		err = errors.Join(err, ln.Close(), tr.Close(), udp.Close())
		<-done
		return err
	}
	return childInfo{Addr: udp.LocalAddr().String()}, stop, nil
}

// benchRoamfile is the Roamfile the roamgate child serves: one site on a
// free loopback port in front of the backend, certificates from the local
// CA, the admin endpoint (metrics) on another free loopback port. Every
// load client comes from 127.0.0.1, so the per-address handshake limit is
// off (the idle scenario opens its connections at once); handshake_rate
// stays at its default.
const benchRoamfile = `{
	default_bind 127.0.0.1
	admin 127.0.0.1:0
	handshake_rate_per_ip 0
}
localhost:0 {
	reverse_proxy %s
	tls internal
}
`

// serveRoamgate runs roamgate as `roamgate run` does (listeners first,
// then the certificate manager, then serving), configured from a generated
// Roamfile, with its local CA in dataDir. Logs at warn level go to stderr;
// access logs are off unless accessLog, when they are encoded (JSON) and
// discarded, to count their cost without a terminal's.
func serveRoamgate(ctx context.Context, backend, dataDir string, accessLog bool, steering string, stderr io.Writer) (childInfo, func() error, error) {
	if backend == "" || dataDir == "" {
		return childInfo{}, nil, errors.New("--backend and --data-dir are required")
	}
	cfg, err := configs.Parse("Roamfile (generated)", fmt.Appendf(nil, benchRoamfile, backend), nil)
	if err != nil {
		return childInfo{}, nil, err
	}
	logger := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(stderr), zap.WarnLevel))
	access := zap.NewNop()
	if accessLog {
		access = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel))
	}
	restore := zap.RedirectStdLog(logger.Named("stdlog")) // quic-go's socket buffer warnings

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := proxy.Options{Logger: logger, AccessLogger: access, Registry: reg}
	var sockets *handoff.Sockets
	if steering != "" {
		if sockets, err = handoff.New(handoff.Mode(steering), logger); err != nil {
			restore()
			return childInfo{}, nil, err
		}
		if sockets.Mode() != handoff.Mode(steering) {
			restore()
			return childInfo{}, nil, fmt.Errorf("--steering %s: not available here (would be %s; see the log)", steering, sockets.Mode())
		}
		opts.Sockets = sockets
	}
	srv, err := proxy.New(cfg, opts)
	if err != nil {
		restore()
		return childInfo{}, nil, err
	}
	if err := srv.Listen(false); err != nil {
		restore()
		return childInfo{}, nil, err
	}
	tcfg := tlsmgr.ConfigFor(cfg, dataDir)
	tcfg.HTTPPort, tcfg.TLSPort = srv.ChallengePorts()
	tcfg.Registerer = reg
	certs, err := tlsmgr.New(tcfg, logger)
	if err != nil {
		restore()
		return childInfo{}, nil, errors.Join(err, srv.Close())
	}
	stop := func() error {
		err := shutdownWithin(srv.Shutdown)
		if errors.Is(err, context.DeadlineExceeded) {
			err = nil // Shutdown closed what was left
		}
		certs.Stop()
		if sockets != nil {
			sockets.Close()
		}
		restore()
		return err
	}
	if err := srv.Serve(certs); err != nil {
		return childInfo{}, nil, errors.Join(err, stop())
	}
	if err := certs.Start(ctx); err != nil {
		return childInfo{}, nil, errors.Join(err, stop())
	}
	ls := srv.Listeners()
	if len(ls) == 0 || len(ls[0].UDP) == 0 || srv.AdminAddr() == nil {
		return childInfo{}, nil, errors.Join(errors.New("no listener"), stop())
	}
	storage := &certmagic.FileStorage{Path: dataDir}
	issuer := certs.LocalCA().IssuerKey()
	return childInfo{
		Addr:     ls[0].UDP[0].String(),
		Admin:    srv.AdminAddr().String(),
		CertFile: storage.Filename(certmagic.StorageKeys.SiteCert(issuer, "localhost")),
		KeyFile:  storage.Filename(certmagic.StorageKeys.SitePrivateKey(issuer, "localhost")),
		RootFile: tlsmgr.RootCertPath(dataDir),
	}, stop, nil
}

// control is a child's control endpoint on a loopback port of its own (so
// its connections count nowhere): POST /gc collects garbage and returns
// freed memory to the kernel, so RSS shows live memory; GET /stats answers
// a childStats; the backend's also GET /sets and POST /sets/reset (see
// setRecorder).
type control struct {
	Addr string
	srv  *http.Server
	done chan struct{}
}

func startControl(conns *connCounter, sets *setRecorder) (*control, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen control: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /gc", func(w http.ResponseWriter, _ *http.Request) {
		runtime.GC()
		debug.FreeOSMemory()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		samples := []rtmetrics.Sample{
			{Name: "/sched/goroutines:goroutines"},
			{Name: "/memory/classes/heap/objects:bytes"},
		}
		rtmetrics.Read(samples)
		st := childStats{Opened: conns.opened.Load(), Open: conns.open.Load()}
		if samples[0].Value.Kind() == rtmetrics.KindUint64 {
			st.Goroutines = int64(samples[0].Value.Uint64())
		}
		if samples[1].Value.Kind() == rtmetrics.KindUint64 {
			st.HeapBytes = int64(samples[1].Value.Uint64())
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	if sets != nil {
		sets.serve(mux)
	}
	c := &control{Addr: ln.Addr().String(), srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_ = c.srv.Serve(ln)
	}()
	return c, nil
}

// Close stops the control endpoint.
func (c *control) Close() error {
	err := c.srv.Close()
	<-c.done
	return err
}
