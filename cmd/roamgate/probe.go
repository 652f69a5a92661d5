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
	"slices"
	"strings"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client"
)

// headerFlags collects repeated -H "Name: value" flags.
type headerFlags []string

func (h *headerFlags) String() string { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error {
	name, _, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("header %q: want \"Name: value\"", v)
	}
	*h = append(*h, v)
	return nil
}

// probeCmd sends HTTP/3 requests to a URL and prints what came back:
// status, protocol, headers, timing; with --migrate it moves the QUIC
// connection to a new UDP socket between two requests, as a phone changing
// networks does (Debian's curl has no HTTP/3).
func probeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: roamgate probe [flags] URL\n\nSends HTTP/3 requests to URL (https://HOST[:PORT]/PATH) and prints the status, protocol, headers, timing and body.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	method := fs.String("X", "GET", "the request method")
	var headers headerFlags
	fs.Var(&headers, "H", `a request header "Name: value" (repeatable)`)
	caFile := fs.String("ca", "", "trust the roots in this PEM file (e.g. roamgate's local CA: roamgate trust > root.crt)")
	insecure := fs.Bool("insecure", false, "do not verify the server's certificate")
	serverName := fs.String("server-name", "", "the TLS server name (SNI) and :authority, when URL names an address")
	migrate := fs.Bool("migrate", false, "send the request again after moving the connection to a new UDP socket")
	count := fs.Int("count", 1, "requests before (and, with --migrate, after) the move")
	body := fs.Bool("body", true, "print the response body")
	timeout := durationFlag(fs, "timeout", 10*time.Second, "for the whole probe (a `duration`)")
	helpOutput(fs, args, stdout, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "roamgate probe: want one URL")
		fs.Usage()
		return errUsage
	}
	u, err := url.Parse(fs.Arg(0))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("probe: %q: want an https:// URL", fs.Arg(0))
	}
	if *count < 1 {
		return fmt.Errorf("probe: --count %d: want 1 or more", *count)
	}
	tlsConf := &tls.Config{ServerName: u.Hostname(), InsecureSkipVerify: *insecure}
	if *serverName != "" {
		tlsConf.ServerName = *serverName
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return fmt.Errorf("probe: --ca: %w", err)
		}
		tlsConf.RootCAs = x509.NewCertPool()
		if !tlsConf.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("probe: --ca %s: no PEM certificate in it", *caFile)
		}
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	authority := u.Host
	if *serverName != "" {
		authority = net.JoinHostPort(*serverName, port)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	start := time.Now()
	c, err := h3client.Dial(ctx, net.JoinHostPort(u.Hostname(), port), tlsConf, nil)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	fmt.Fprintf(stdout, "* connected to %s from %s in %s: HTTP/3, QUIC %s, %s, %s\n", c.RemoteAddr(), c.LocalAddrPort(),
		since(start), cs.Version, tls.VersionName(cs.TLS.Version), tls.CipherSuiteName(cs.TLS.CipherSuite))

	send := func() error {
		req, err := http.NewRequestWithContext(ctx, *method, u.String(), nil)
		if err != nil {
			return err
		}
		req.Host = authority
		for _, h := range headers {
			name, value, _ := strings.Cut(h, ":")
			req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		fmt.Fprintf(stdout, "> %s %s (from %s)\n", req.Method, u.RequestURI(), c.LocalAddrPort())
		t0 := time.Now()
		resp, err := c.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		head := since(t0)
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("reading the body: %w (after %d bytes)", err, len(b))
		}
		fmt.Fprintf(stdout, "< %s %s: header in %s, %d bytes in %s\n", resp.Proto, resp.Status, head, len(b), since(t0))
		names := make([]string, 0, len(resp.Header))
		for k := range resp.Header {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			for _, v := range resp.Header[k] {
				fmt.Fprintf(stdout, "< %s: %s\n", strings.ToLower(k), v)
			}
		}
		if *body && len(b) > 0 {
			stdout.Write(b)
			if b[len(b)-1] != '\n' {
				fmt.Fprintln(stdout)
			}
		}
		return nil
	}
	for range *count {
		if err := send(); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
	}
	if !*migrate {
		return nil
	}
	from := c.LocalAddrPort()
	t0 := time.Now()
	if err := c.Migrate(ctx); err != nil {
		return fmt.Errorf("probe: migrate: %w", err)
	}
	fmt.Fprintf(stdout, "* migrated %s -> %s in %s: the same QUIC connection, no new handshake\n", from, c.LocalAddrPort(), since(t0))
	for range *count {
		if err := send(); err != nil {
			return fmt.Errorf("probe: after migrating: %w", err)
		}
	}
	return nil
}

// since is the time since t, rounded for reading.
func since(t time.Time) time.Duration {
	d := time.Since(t)
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond)
	case d < time.Second:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
