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
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/tlsmgr"
)

// demoCmd runs the real proxy (local CA, HTTP/3 + TCP) in front of an
// embedded legacy app, then a built-in HTTP/3 client that sends requests,
// migrates its QUIC connection to a new UDP socket and sends more, and shows
// that the app saw the same TCP connection and client address throughout.
// It keeps serving for the user's own clients until interrupted (or exits
// after the client with --once).
func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "the proxy's address (UDP and TCP); port 0 picks a free one")
	dataDir := fs.String("data-dir", "", "where the local CA lives (default "+tlsmgr.DefaultDataDir()+")")
	once := fs.Bool("once", false, "exit after the demo client instead of serving on")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(*listen)
	if err != nil || net.ParseIP(host) == nil {
		return fmt.Errorf("--listen %q: want IP:PORT", *listen)
	}
	app, err := legacyapp.Start("127.0.0.1:0", "legacy-app", nil)
	if err != nil {
		return err
	}
	defer app.Close()

	roamfile := fmt.Sprintf("{\n\tdefault_bind %s\n}\nlocalhost:%s, %s {\n\treverse_proxy %s\n}\n",
		host, port, net.JoinHostPort(host, port), app.Addr())
	cfg, err := configs.Parse("demo", []byte(roamfile), nil)
	if err != nil {
		return err
	}
	logger, err := newLogger(configs.Log{Level: "info"}, stderr)
	if err != nil {
		return err
	}
	defer logger.Sync()
	if *dataDir == "" {
		*dataDir = tlsmgr.DefaultDataDir()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	return serve(ctx, cfg, serveOptions{
		dataDir:      *dataDir,
		grace:        5 * time.Second,
		logger:       logger,
		accessLogger: zap.NewNop(), // the demo prints its own table
		started: func(ctx context.Context, srv *proxy.Server, certs *tlsmgr.Manager) error {
			if err := demoClient(ctx, srv, certs, app, stdout); err != nil {
				return err
			}
			l := srv.Listeners()[0]
			fmt.Fprintf(stdout, "\nroamgate serves https://localhost:%d/ (HTTP/3 on UDP, HTTP/2 and HTTP/1.1 on TCP) in front of the legacy app at %s.\n", l.Port, app.Addr())
			fmt.Fprintf(stdout, "Its certificate comes from roamgate's local CA; the root is %s\n", tlsmgr.RootCertPath(*dataDir))
			fmt.Fprintf(stdout, "Try:  roamgate probe --migrate --ca %s https://localhost:%d/\n", tlsmgr.RootCertPath(*dataDir), l.Port)
			if *once {
				cancel()
				return nil
			}
			fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
			return nil
		},
	})
}

// demoClient does three requests, migrates, does three more, and prints what
// the legacy app saw of each.
func demoClient(ctx context.Context, srv *proxy.Server, certs *tlsmgr.Manager, app *legacyapp.App, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	l := srv.Listeners()[0]
	c, err := h3client.Dial(ctx, l.UDP[0].String(), &tls.Config{RootCAs: certs.LocalCA().RootPool(), ServerName: "localhost"}, nil)
	if err != nil {
		return fmt.Errorf("demo client: %w", err)
	}
	defer c.Close()
	url := fmt.Sprintf("https://localhost:%d/", l.Port)

	fmt.Fprintf(stdout, "\nAn HTTP/3 client sends requests through roamgate to a legacy HTTP/1.1 app,\nmoves its QUIC connection to a new UDP socket (a network change), and sends more.\n\n")
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "request\tclient UDP socket\tapp saw: TCP connection\trequest on it\tclient address (Forwarded)\tX-Forwarded-For")
	var seen []legacyapp.Request
	get := func(n int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.RoundTrip(req)
		if err != nil {
			return fmt.Errorf("demo request %d: %w", n, err)
		}
		defer resp.Body.Close()
		var r legacyapp.Request
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return fmt.Errorf("demo request %d: status %d: %w", n, resp.StatusCode, err)
		}
		seen = append(seen, r)
		fmt.Fprintf(tw, "%d\t%s\t#%d from %s\t%d\t%s\t%s\n", n, c.LocalAddr(), r.Conn, r.Remote, r.ConnRequest, forwardedFor(r.Forwarded), r.XForwardedFor)
		return nil
	}
	for n := 1; n <= 3; n++ {
		if err := get(n); err != nil {
			return err
		}
	}
	before := c.LocalAddr()
	if err := c.Migrate(ctx); err != nil {
		return fmt.Errorf("demo migration: %w", err)
	}
	fmt.Fprintf(tw, "migrate\t%s → %s\t(same QUIC connection, no new handshake)\t\t\t\n", before, c.LocalAddr())
	for n := 4; n <= 6; n++ {
		if err := get(n); err != nil {
			return err
		}
	}
	tw.Flush()

	first := seen[0]
	for _, r := range seen {
		if r.Conn != first.Conn || r.XForwardedFor != first.XForwardedFor || r.Forwarded != first.Forwarded {
			return errors.New("demo: the app saw the client change: this is a bug, please report it")
		}
	}
	fmt.Fprintf(stdout, "\nThe app saw one TCP connection (#%d) and one client address (%s) before and after the migration:\nthe client's network change never reached it.\n", first.Conn, forwardedFor(first.Forwarded))
	return nil
}

// forwardedFor extracts the node of a Forwarded header's for= parameter.
func forwardedFor(v string) string {
	v, _, _ = strings.Cut(v, ";")
	return strings.Trim(strings.TrimPrefix(v, "for="), `"`)
}
