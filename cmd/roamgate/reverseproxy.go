package main

import (
	"context"
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
func reverseProxyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reverse-proxy", flag.ContinueOnError)
	from := fs.String("from", "", "the site address to serve, HOST:PORT (e.g. localhost:8443, :443)")
	to := fs.String("to", "", "the upstream(s), HOST:PORT or unix//SOCKET[,...]")
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
	cfg, err := reverseProxyConfig(*from, *to, *bind)
	if err != nil {
		return err
	}
	return serveLogged(ctx, cfg, serveOptions{dataDir: *dataDir, grace: *grace}, stdout, stderr)
}

// reverseProxyConfig writes the flags as a Roamfile and parses it, so the
// flags get exactly the Roamfile's checks and defaults.
func reverseProxyConfig(from, to, bind string) (*configs.Config, error) {
	for name, v := range map[string]string{"--from": from, "--to": to, "--bind": bind} {
		if strings.ContainsAny(v, " \t\r\n\"'`{}#;") {
			return nil, fmt.Errorf("%s %q: unexpected character", name, v)
		}
	}
	var b strings.Builder
	if bind != "" {
		fmt.Fprintf(&b, "{\n\tdefault_bind %s\n}\n", bind)
	}
	fmt.Fprintf(&b, "%s {\n\treverse_proxy %s\n}\n", from, strings.ReplaceAll(to, ",", " "))
	return configs.Parse("reverse-proxy", []byte(b.String()), func(string) (string, bool) { return "", false })
}
