package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy/h3client"
)

const (
	// connectDialTimeout bounds the first connection to the edge.
	connectDialTimeout = 15 * time.Second
	// tunnelOpenTimeout bounds opening one tunnel, waiting for a new
	// connection to the edge included.
	tunnelOpenTimeout = 15 * time.Second
)

// connectOptions are the flags of connect.
type connectOptions struct {
	edge       string // the edge's host:port: where QUIC goes
	authority  string // the CONNECT :authority: --server-name:port, else edge
	listen     string
	token      string
	tokenFile  string
	cert, key  string
	ca         string
	serverName string
	interval   time.Duration
}

// connectCmd accepts local TCP connections and carries each over a CONNECT
// tunnel (RFC 9114 §4.4) on one QUIC connection to the edge, which splices
// it to its configured backend. The connection follows network changes
// (h3client.Roamer): it migrates when the route or the path changes, and
// reconnects when it cannot. ctx ending closes everything.
func connectCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseConnect(args, stdout, stderr)
	if err != nil {
		return err
	}
	tlsConf, err := o.tlsConfig()
	if err != nil {
		return err
	}
	hdr, err := o.header()
	if err != nil {
		return err
	}
	// Warnings and errors only: the events a user wants are printed as
	// lines of their own.
	logger, err := newLogger(configs.Log{Level: "warn"}, stderr)
	if err != nil {
		return err
	}
	defer logger.Sync()
	return runConnect(ctx, o, tlsConf, hdr, logger, stderr)
}

// parseConnect reads connect's arguments: the edge's URL, before or after
// the flags, and the flags.
func parseConnect(args []string, stdout, stderr io.Writer) (*connectOptions, error) {
	o := &connectOptions{}
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:2222", "the local TCP address to accept connections on")
	fs.StringVar(&o.token, "token", "", "bearer token for the edge (other local users can see it in the process list; prefer --token-file)")
	fs.StringVar(&o.tokenFile, "token-file", "", "a file holding the bearer token")
	fs.StringVar(&o.cert, "cert", "", "client certificate (PEM) for mutual TLS, with --key")
	fs.StringVar(&o.key, "key", "", "private key (PEM) of --cert")
	fs.StringVar(&o.ca, "ca", "", "trust this root (PEM) instead of the system's, e.g. roamgate's local CA: roamgate trust > root.crt")
	fs.StringVar(&o.serverName, "server-name", "", "the edge's name, for TLS (sent and verified) and the tunnels' :authority, when the URL names an address (default: the URL's host)")
	o.interval = time.Second
	fs.Var(durationValue{&o.interval}, "interval", "how often to check the route and the path to the edge (a `duration`)")
	helpOutput(fs, args, stdout, stderr)
	usageErr := func(format string, a ...any) (*connectOptions, error) {
		fmt.Fprintf(stderr, "roamgate connect: "+format+"\n", a...)
		return nil, errUsage
	}

	// flag stops at the first argument that is not a flag: take it as the
	// URL and parse on, so the URL may stand anywhere.
	var urls []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		urls = append(urls, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(urls) != 1 {
		return usageErr("want one edge URL, https://EDGE[:PORT]; got %d", len(urls))
	}
	u, err := url.Parse(urls[0])
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return usageErr("edge %q: want https://EDGE[:PORT]", urls[0])
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	o.edge = net.JoinHostPort(u.Hostname(), port)
	o.authority = o.edge
	if o.serverName == "" {
		o.serverName = u.Hostname()
	} else {
		// The edge routes a CONNECT by its :authority: the name, not
		// the address it was reached at.
		o.authority = net.JoinHostPort(o.serverName, port)
	}
	switch {
	case o.token != "" && o.tokenFile != "":
		return usageErr("--token and --token-file exclude each other")
	case (o.cert == "") != (o.key == ""):
		return usageErr("--cert and --key go together")
	case o.interval <= 0:
		return usageErr("--interval %s: want a positive duration", o.interval)
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return usageErr("--listen %q: want HOST:PORT", o.listen)
	}
	return o, nil
}

// tlsConfig is the client's TLS configuration: the system roots or --ca,
// --server-name, and the client certificate of --cert/--key.
func (o *connectOptions) tlsConfig() (*tls.Config, error) {
	conf := &tls.Config{ServerName: o.serverName, MinVersion: tls.VersionTLS13}
	if o.ca != "" {
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return nil, fmt.Errorf("read --ca: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate in it", o.ca)
		}
	}
	if o.cert != "" {
		cert, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, fmt.Errorf("load --cert and --key: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// header is what every CONNECT carries besides :method and :authority.
func (o *connectOptions) header() (http.Header, error) {
	hdr := http.Header{"User-Agent": {"roamgate-connect/" + version()}}
	token := o.token
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read --token-file: %w", err)
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return nil, fmt.Errorf("--token-file %s is empty", o.tokenFile)
		}
	}
	if strings.ContainsFunc(token, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return nil, errors.New("token: control characters in it")
	}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	return hdr, nil
}

// runConnect listens, dials the edge and serves until ctx ends.
func runConnect(ctx context.Context, o *connectOptions, tlsConf *tls.Config, hdr http.Header, logger *zap.Logger, stderr io.Writer) error {
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	dial := func(ctx context.Context) (*h3client.Conn, error) {
		return h3client.Dial(ctx, o.edge, tlsConf, nil)
	}
	dctx, cancel := context.WithTimeout(ctx, connectDialTimeout)
	c, err := dial(dctx)
	cancel()
	if err != nil {
		return fmt.Errorf("connect to the edge: %w", err)
	}
	cn := &connector{
		authority: o.authority,
		header:    hdr,
		log:       logger.Named("connect"),
		stderr:    stderr,
		replaced:  make(chan struct{}),
	}
	cn.roamer, err = h3client.NewRoamer(c, h3client.RoamerConfig{
		Redial:   dial,
		Interval: o.interval,
		OnEvent:  cn.onEvent,
	}, logger.Named("roam"))
	if err != nil {
		c.Close()
		return err
	}
	cn.say("roamgate connect: listening on %s; tunnels go to %s over HTTP/3 from %s", ln.Addr(), o.edge, c.LocalAddr())

	ctx, cancel = context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { cn.roamer.Run(ctx) })
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	backoff := 5 * time.Millisecond
	for {
		local, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			// Out of file descriptors and the like: wait, as net/http does.
			cn.log.Warn("accept", zap.Error(err), zap.Duration("retry_in", backoff))
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		wg.Go(func() { cn.serve(ctx, local.(*net.TCPConn)) })
	}
	cancel()
	wg.Wait()
	return nil
}

// connector carries local TCP connections over the Roamer's connection.
type connector struct {
	authority string
	header    http.Header
	roamer    *h3client.Roamer
	log       *zap.Logger
	stderr    io.Writer

	mu       sync.Mutex    // guards the following and writes to stderr
	replaced chan struct{} // closed when the roamer hands over a new connection
}

// say prints one line on stderr.
func (cn *connector) say(format string, a ...any) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	fmt.Fprintf(cn.stderr, format+"\n", a...)
}

// onEvent prints the Roamer's migrations and reconnects and wakes tunnel
// opens waiting for a new connection. The Roamer closes the old connection
// after it returns, which ends that connection's tunnels (serve says so).
func (cn *connector) onEvent(ev h3client.Event) {
	cn.say("%s", ev)
	if ev.Kind == h3client.Reconnected {
		cn.mu.Lock()
		close(cn.replaced)
		cn.replaced = make(chan struct{})
		cn.mu.Unlock()
	}
}

// serve carries one local connection through a tunnel.
func (cn *connector) serve(ctx context.Context, local *net.TCPConn) {
	defer local.Close()
	from := local.RemoteAddr().String()
	tun, err := cn.open(ctx)
	if err != nil {
		if ctx.Err() == nil {
			cn.say("tunnel from %s: %v", from, err)
		}
		return
	}
	cn.log.Info("tunnel opened", zap.String("from", from))
	err = splice(ctx, local, tun)
	switch {
	case ctx.Err() != nil:
		// Shutting down: everything closes.
	case errors.Is(err, h3client.ErrConnectionLost):
		cn.say("tunnel from %s closed: its QUIC connection to the edge was lost", from)
		cn.log.Info("tunnel closed", zap.String("from", from), zap.Error(err))
	case err != nil:
		cn.say("tunnel from %s: %v", from, err)
	default:
		cn.log.Info("tunnel closed", zap.String("from", from))
	}
}

// open opens a tunnel on the Roamer's connection. When that connection is
// gone, it waits for the Roamer's next one and tries again.
func (cn *connector) open(ctx context.Context) (*h3client.Tunnel, error) {
	octx, cancel := context.WithTimeout(ctx, tunnelOpenTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		cn.mu.Lock()
		replaced := cn.replaced
		cn.mu.Unlock()
		c := cn.roamer.Conn()
		tun, err := c.Tunnel(octx, cn.authority, cn.header)
		if err == nil {
			return tun, nil
		}
		if !errors.Is(err, h3client.ErrConnectionLost) || attempt == 3 {
			return nil, err
		}
		select {
		case <-replaced:
		case <-octx.Done():
			return nil, fmt.Errorf("%w (no new connection to the edge yet)", err)
		}
	}
}

// splice copies between the local connection and the tunnel until both
// directions have ended, passing each end's EOF on as a half-close: the
// local EOF becomes the stream's FIN, the edge's FIN a CloseWrite of the
// local connection. A failure on either side resets both (the local
// connection with RST, the stream with H3_CONNECT_ERROR); so does ctx
// ending. It returns the first failure.
func splice(ctx context.Context, local *net.TCPConn, tun *h3client.Tunnel) error {
	var mu sync.Mutex // guards first: ctx's AfterFunc may still run as splice returns
	var first error
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		tun.Abort()
		_ = local.SetLinger(0)
		_ = local.Close()
	}
	stop := context.AfterFunc(ctx, func() { fail(context.Cause(ctx)) })
	defer stop()

	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := io.Copy(tun, local)
		if err == nil {
			err = tun.CloseWrite()
		}
		if err != nil {
			fail(fmt.Errorf("local to edge: %w", err))
		}
	})
	_, err := io.Copy(local, tun)
	if err == nil {
		err = local.CloseWrite()
	}
	if err != nil {
		fail(fmt.Errorf("edge to local: %w", err))
	}
	wg.Wait()
	_ = tun.Close()
	mu.Lock()
	defer mu.Unlock()
	return first
}
