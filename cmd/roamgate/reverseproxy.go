package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/roamgate/roamgate/configs"
)

// reverseProxyCmd serves one site in front of the given upstreams with no
// config file, like caddy reverse-proxy: HTTP/3 on UDP and HTTP/1.1 and
// HTTP/2 on TCP, both on the --from port and no other, with a certificate
// from the local CA.
func reverseProxyCmd(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("reverse-proxy", flag.ContinueOnError)
	from := fs.String("from", "", "the site address to serve, HOST:PORT (e.g. localhost:8443, :443)")
	to := fs.String("to", "", "the upstream(s), HOST:PORT, https://HOST:PORT (TLS) or unix//SOCKET[,...]")
	var up upstreamTLSFlags
	fs.StringVar(&up.ca, "upstream-ca", "", "PEM file(s)[,...] of the roots that verify https:// upstreams (default: the system roots)")
	fs.StringVar(&up.serverName, "upstream-server-name", "", "the name https:// upstreams are asked for (SNI) and their certificates must have (default: each upstream's host)")
	fs.StringVar(&up.cert, "upstream-cert", "", "a PEM client certificate to present to https:// upstreams (mutual TLS; with --upstream-key)")
	fs.StringVar(&up.key, "upstream-key", "", "the PEM private key of --upstream-cert")
	fs.BoolVar(&up.insecure, "upstream-insecure", false, "accept any certificate from https:// upstreams (DANGEROUS: no verification)")
	bind := fs.String("bind", "", "the host address to listen on (default: all interfaces)")
	dataDir := fs.String("data-dir", "", "where certificates and the local CA live")
	grace := fs.Duration("grace", defaultGrace, "how long in-flight requests may finish on shutdown")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		fmt.Fprintln(stderr, "roamgate reverse-proxy: --from and --to are required")
		return errUsage
	}
	cfg, err := reverseProxyConfig(*from, *to, *bind, up)
	if err != nil {
		return err
	}
	return serveLogged(ctx, cfg, serveOptions{dataDir: *dataDir, grace: *grace}, stderr)
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
func reverseProxyConfig(from, to, bind string, up upstreamTLSFlags) (*configs.Config, error) {
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
	var b strings.Builder
	if bind != "" {
		fmt.Fprintf(&b, "{\n\tdefault_bind %s\n}\n", bind)
	}
	fmt.Fprintf(&b, "%s {\n\treverse_proxy %s", from, strings.ReplaceAll(to, ",", " "))
	if lines := up.lines(); len(lines) > 0 {
		b.WriteString(" {\n\t\t" + strings.Join(lines, "\n\t\t") + "\n\t}")
	}
	b.WriteString("\n}\n")
	return configs.Parse("reverse-proxy", []byte(b.String()), func(string) (string, bool) { return "", false })
}
