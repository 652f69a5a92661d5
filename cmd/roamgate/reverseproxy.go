package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy"
	"github.com/roamgate/roamgate/tlsmgr"
)

// reverseProxyCmd serves one site in front of the given upstreams with no
// config file, like caddy reverse-proxy: HTTP/3 on UDP and HTTP/1.1 and
// HTTP/2 on TCP, both on the --from port and no other, with a certificate
// from the local CA.
func reverseProxyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reverse-proxy", flag.ContinueOnError)
	from := fs.String("from", "", "the site address to serve, HOST:PORT (e.g. localhost:8443, :443)")
	to := fs.String("to", "", "the upstream(s), HOST:PORT, https://HOST:PORT (TLS) or unix//SOCKET[,...]")
	var up upstreamTLSFlags
	fs.StringVar(&up.ca, "upstream-ca", "", "PEM file(s)[,...] of the roots that verify https:// upstreams (default: the system roots)")
	fs.StringVar(&up.serverName, "upstream-server-name", "", "the name https:// upstreams are asked for (SNI) and their certificates must have (default: each upstream's host)")
	fs.StringVar(&up.cert, "upstream-cert", "", "a PEM client certificate to present to https:// upstreams (mutual TLS; with --upstream-key)")
	fs.StringVar(&up.key, "upstream-key", "", "the PEM private key of --upstream-cert")
	fs.BoolVar(&up.insecure, "upstream-insecure", false, "accept any certificate from https:// upstreams (DANGEROUS: no verification)")
	bind := fs.String("bind", "", "the host address to listen on (default: --from's host when it is an IP address, else all interfaces)")
	dataDir := fs.String("data-dir", "", "where certificates and the local CA live")
	grace := durationFlag(fs, "grace", defaultGrace, "how long in-flight requests may finish on shutdown (a `duration`)")
	var g globalFlags
	fs.StringVar(&g.admin, "admin", "", "serve /metrics, /healthz and /readyz on this HOST:PORT (default: off)")
	fs.StringVar(&g.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fs.StringVar(&g.logFormat, "log-format", "", "console or json (default console)")
	fs.BoolVar(&g.accessLog, "access-log", true, "write an access-log line per request (--access-log=false: none)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		fmt.Fprintln(stderr, "roamgate reverse-proxy: --from and --to are required")
		return errUsage
	}
	cfg, err := reverseProxyConfig(*from, *to, *bind, up, g)
	if err != nil {
		return err
	}
	if err := checkUpstreamFiles(cfg, *from, *to, *bind, up, g); err != nil {
		return err
	}
	// Where it listens, on stderr whatever the log settings: the one line
	// a user of this command looks for.
	started := func(_ context.Context, srv *proxy.Server, _ *tlsmgr.Manager) error {
		for _, l := range srv.Listeners() {
			fmt.Fprintf(stderr, "roamgate reverse-proxy: serving %s on UDP %s (HTTP/3) and TCP %s (HTTP/2, HTTP/1.1), to %s\n",
				*from, joinAddrs(l.UDP), joinAddrs(l.TCP), *to)
		}
		return nil
	}
	return serveLogged(ctx, cfg, serveOptions{dataDir: *dataDir, grace: *grace, started: started}, stdout, stderr)
}

func joinAddrs(as []net.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// fromBind is the address --from names when it is an IP literal
// (127.0.0.1:8443, [::1]:8443): the one to listen on. A name (localhost)
// or no host gives "", all interfaces.
func fromBind(from string) string {
	hostport := from
	if _, rest, ok := strings.Cut(from, "://"); ok {
		hostport = rest
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return ip.String()
	}
	return ""
}

// upstreamTLSFlags are reverse-proxy's flags for TLS to https:// upstreams,
// each a reverse_proxy tls_* subdirective.
type upstreamTLSFlags struct {
	ca, serverName, cert, key string
	insecure                  bool
}

// lines returns the flags as reverse_proxy subdirectives.
func (f upstreamTLSFlags) lines() []string {
	var lines []string
	if f.ca != "" {
		lines = append(lines, "tls_ca "+strings.ReplaceAll(f.ca, ",", " "))
	}
	if f.serverName != "" {
		lines = append(lines, "tls_server_name "+f.serverName)
	}
	if f.cert != "" || f.key != "" {
		lines = append(lines, "tls_client_certificate "+f.cert+" "+f.key)
	}
	if f.insecure {
		lines = append(lines, "tls_insecure_skip_verify")
	}
	return lines
}

// reverseProxyConfig writes the flags as a Roamfile and parses it, so the
// flags get exactly the Roamfile's checks and defaults.
func reverseProxyConfig(from, to, bind string, up upstreamTLSFlags, globals ...globalFlags) (*configs.Config, error) {
	var g globalFlags
	if len(globals) > 0 {
		g = globals[0]
	} else {
		g.accessLog = true
	}
	flags := map[string]string{"--from": from, "--to": to, "--bind": bind,
		"--upstream-ca": up.ca, "--upstream-server-name": up.serverName, "--upstream-cert": up.cert, "--upstream-key": up.key}
	for name, v := range flags {
		if strings.ContainsAny(v, " \t\r\n\"'`{}#;") {
			return nil, fmt.Errorf("%s %q: unexpected character", name, v)
		}
	}
	if (up.cert == "") != (up.key == "") {
		return nil, errors.New("--upstream-cert and --upstream-key go together")
	}
	for name, v := range map[string]string{"--admin": g.admin, "--log-level": g.logLevel, "--log-format": g.logFormat} {
		if strings.ContainsAny(v, " \t\r\n\"'`{}#;") {
			return nil, fmt.Errorf("%s %q: unexpected character", name, v)
		}
	}
	text, flagOf := reverseProxyRoamfile(from, to, bind, up, g)
	cfg, err := configs.Parse("reverse-proxy", []byte(text), func(string) (string, bool) { return "", false })
	if err != nil {
		return nil, flagErrors(err, flagOf, flagValues(from, to, bind, g))
	}
	return cfg, nil
}

// globalFlags are reverse-proxy's flags for the global options.
type globalFlags struct {
	admin, logLevel, logFormat string
	accessLog                  bool
}

func flagValues(from, to, bind string, g globalFlags) map[string]string {
	if bind == "" {
		bind = fromBind(from)
	}
	return map[string]string{"--bind": bind, "--from": from, "--to": to,
		"--admin": g.admin, "--log-level": g.logLevel, "--log-format": g.logFormat}
}

// reverseProxyRoamfile is the Roamfile the flags stand for, and which flag
// each of its lines comes from (by line, from 1; "" for none): its errors
// name the flag, not a file the user never wrote.
func reverseProxyRoamfile(from, to, bind string, up upstreamTLSFlags, g globalFlags) (string, []string) {
	var b strings.Builder
	var flagOf []string
	line := func(flag, format string, a ...any) {
		fmt.Fprintf(&b, format+"\n", a...)
		flagOf = append(flagOf, flag)
	}
	if bind == "" {
		bind = fromBind(from)
	}
	var globals [][2]string // flag, line
	if bind != "" {
		globals = append(globals, [2]string{"--bind", "default_bind " + bind})
	}
	if g.admin != "" {
		globals = append(globals, [2]string{"--admin", "admin " + g.admin})
	}
	if g.logLevel != "" || g.logFormat != "" {
		globals = append(globals, [2]string{"", "log {"})
		if g.logLevel != "" {
			globals = append(globals, [2]string{"--log-level", "\tlevel " + g.logLevel})
		}
		if g.logFormat != "" {
			globals = append(globals, [2]string{"--log-format", "\tformat " + g.logFormat})
		}
		globals = append(globals, [2]string{"", "}"})
	}
	if !g.accessLog {
		globals = append(globals, [2]string{"--access-log", "log access off"})
	}
	if len(globals) > 0 {
		line("", "{")
		for _, gl := range globals {
			line(gl[0], "\t%s", gl[1])
		}
		line("", "}")
	}
	line("--from", "%s {", from)
	if tls := up.lines(); len(tls) > 0 {
		line("--to", "\treverse_proxy %s {", strings.ReplaceAll(to, ",", " "))
		for _, l := range tls {
			line(upstreamFlagOf(l), "\t\t%s", l)
		}
		line("", "\t}")
	} else {
		line("--to", "\treverse_proxy %s", strings.ReplaceAll(to, ",", " "))
	}
	line("", "}")
	return b.String(), flagOf
}

// checkUpstreamFiles reads the files the upstream flags name (CA, client
// pair), so that their errors are the flags' too.
func checkUpstreamFiles(cfg *configs.Config, from, to, bind string, up upstreamTLSFlags, g globalFlags) error {
	_, flagOf := reverseProxyRoamfile(from, to, bind, up, g)
	for _, rt := range cfg.Sites[0].Routes {
		if rp := rt.ReverseProxy; rp != nil && rp.TLS != nil {
			if _, err := rp.TLS.Load(); err != nil {
				return flagErrors(err, flagOf, flagValues(from, to, bind, g))
			}
		}
	}
	return nil
}

// upstreamFlagOf is the flag a tls_* line of the generated Roamfile comes
// from.
func upstreamFlagOf(line string) string {
	switch strings.Fields(line)[0] {
	case "tls_ca":
		return "--upstream-ca"
	case "tls_server_name":
		return "--upstream-server-name"
	case "tls_client_certificate":
		return "--upstream-cert"
	case "tls_insecure_skip_verify":
		return "--upstream-insecure"
	}
	return ""
}

// flagErrors rewrites the generated Roamfile's errors in terms of the
// flags their lines come from: `--from "20443": site address "20443":
// invalid host "20443"`, not `reverse-proxy:4:1: ...`.
func flagErrors(err error, flagOf []string, values map[string]string) error {
	var errs []error
	for _, e := range unjoin(err) {
		var ce *configs.Error
		if !errors.As(e, &ce) || ce.Pos.Line < 1 || ce.Pos.Line > len(flagOf) || flagOf[ce.Pos.Line-1] == "" {
			errs = append(errs, e)
			continue
		}
		flag := flagOf[ce.Pos.Line-1]
		msg := ce.Msg
		if ce.Directive != "" && ce.Directive != "reverse_proxy" && ce.Directive != "default_bind" {
			msg = ce.Directive + ": " + msg
		}
		if v, ok := values[flag]; ok {
			errs = append(errs, fmt.Errorf("%s %q: %s", flag, v, msg))
		} else {
			errs = append(errs, fmt.Errorf("%s: %s", flag, msg))
		}
	}
	return errors.Join(errs...)
}
