package tlsmgr

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/idna"
)

// Client authentication (mutual TLS, RFC 8446 §4.3.2) for the sites with
// Site.ClientCAFiles: both TLS configs ask those sites' handshakes for a
// client certificate that chains to the site's CAs, and no others.

// ErrClientCertRequired is the error of VerifyClientCert for a connection
// without a client certificate that the site's CAs trust.
var ErrClientCertRequired = errors.New("client certificate required")

// clientCAs is the pool of one set of client CA files.
type clientCAs struct {
	files []string       // sorted, each once
	pool  *x509.CertPool // the files' certificates
	// anchors holds the DER of each certificate of pool: a chain that a
	// handshake verified (against any site's pool) is trusted here if it
	// passes through one of them.
	anchors map[string]bool
}

// clientCAsKey returns the key of a set of client CA files in
// plan.clientCAs: the order of the files and repeats do not matter.
func clientCAsKey(files []string) string {
	return strings.Join(slices.Compact(slices.Sorted(slices.Values(files))), "\x00")
}

// loadClientCAs returns the pool of files, the client CA files of the site
// label, reading each file not in certs yet into it (nil after an error,
// which is reported once, labelled with the first site that names the
// file). It returns nil for no files or after an error.
func (p *plan) loadClientCAs(files []string, label string, certs map[string][]*x509.Certificate) (*clientCAs, []error) {
	if len(files) == 0 {
		return nil, nil
	}
	key := clientCAsKey(files)
	if cas, ok := p.clientCAs[key]; ok {
		return cas, nil
	}
	var errs []error
	cas := &clientCAs{files: strings.Split(key, "\x00"), pool: x509.NewCertPool(), anchors: map[string]bool{}}
	for _, f := range cas.files {
		if _, done := certs[f]; !done {
			var err error
			if certs[f], err = loadClientCAFile(f); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", label, err))
			}
		}
		if certs[f] == nil {
			cas = nil // the error is reported where the file was first read
			continue
		}
		if cas != nil {
			for _, c := range certs[f] {
				cas.pool.AddCert(c)
				cas.anchors[string(c.Raw)] = true
			}
		}
	}
	if cas == nil {
		return nil, errs
	}
	p.clientCAs[key] = cas
	return cas, errs
}

// loadClientCAFile reads the certificates of a PEM file of client CAs.
// Blocks other than CERTIFICATE are skipped.
func loadClientCAFile(name string) ([]*x509.Certificate, error) {
	certs, err := readCertificates(name)
	if err != nil {
		return nil, fmt.Errorf("client CA file %q: %w", name, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("client CA file %q: no certificates found", name)
	}
	return certs, nil
}

// readCertificates parses the CERTIFICATE blocks of a PEM file, in order,
// skipping other blocks; an error names the certificate by its position.
func readCertificates(name string) ([]*x509.Certificate, error) {
	data, err := readPEMFile(name)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
}

// hasClientAuth reports whether any site requires client certificates.
func (p *plan) hasClientAuth() bool { return len(p.clientCAs) > 0 }

// clientCAsFor returns the client CAs that a handshake for serverName, on a
// connection to the local address local (nil if unknown), must present a
// certificate from; nil if none. Names route as certificates do: the name
// in ASCII (as certmagic converts it) exactly, then a wildcard one label
// up, then the catch-all. Without a server name certmagic serves the local
// IP address's certificate, else the default name's: so do these.
func (p *plan) clientCAsFor(serverName string, local net.Addr) *clientCAs {
	name := strings.ToLower(strings.TrimSuffix(serverName, "."))
	if a, err := idna.Lookup.ToASCII(name); err == nil {
		name = a
	}
	if name == "" {
		if ip := localIP(local); ip != "" {
			if cas, ok := p.clientAuth[ip]; ok {
				return cas
			}
		}
		if p.defaultName == "" {
			return p.clientAuthAny
		}
		name = asciiName(p.defaultName)
	}
	if cas, ok := p.clientAuth[name]; ok {
		return cas
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if cas, ok := p.clientAuth["*"+name[i:]]; ok {
			return cas
		}
	}
	return p.clientAuthAny
}

// localIP returns the IP address of addr as normalizeName writes it, or
// "" if addr has none.
func localIP(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return ""
	}
	return ap.Addr().WithZone("").Unmap().String()
}

// getConfigForClient returns the GetConfigForClient of base, a config that
// TLSConfig or QUICTLSConfig hands out: for a handshake of a site with
// client CAs, a copy of base, as it is at the handshake, that requires and
// verifies a client certificate from them; else nil, which keeps base.
//
// A TLS-ALPN-01 challenge is exempt (RFC 8737 §3: a ClientHello with SNI
// that offers acme-tls/1 alone, where base offers it): the ACME CA's
// validation has no client certificate, and certmagic answers it from
// GetCertificate with the challenge certificate only while a challenge is
// pending.
//
// quic-go's wrappers (http3.ConfigureTLSConfig, and the listener's own)
// apply to the returned config too: h3 and TLS 1.3 stay.
func (m *Manager) getConfigForClient(base *tls.Config) func(*tls.ClientHelloInfo) (*tls.Config, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		var local net.Addr
		if hello.Conn != nil {
			local = hello.Conn.LocalAddr()
		}
		cas := m.plan().clientCAsFor(hello.ServerName, local)
		if cas == nil || isTLSALPNChallenge(hello) && slices.Contains(base.NextProtos, acmeTLS1Protocol) {
			return nil, nil
		}
		c := cloneTLSConfig(base)
		c.GetConfigForClient = nil
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = cas.pool
		return c, nil
	}
}

// isTLSALPNChallenge reports whether hello is that of an ACME CA validating
// a TLS-ALPN-01 challenge, as certmagic tells it: a server name, and ALPN
// acme-tls/1 alone (RFC 8737 §3).
func isTLSALPNChallenge(hello *tls.ClientHelloInfo) bool {
	return hello.ServerName != "" && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmeTLS1Protocol
}

// VerifyClientCert reports whether the connection whose TLS state is cs
// carries a client certificate that chains to the client CAs of caFiles,
// the Site.ClientCAFiles of a site of the manager (in any order), for
// client authentication; nil when caFiles is empty. Otherwise the error
// wraps ErrClientCertRequired.
//
// The proxy calls it for each request to a site with client CAs, with the
// request's TLS state: the handshake asked for the certificate of the
// site its server name routes to, and a request may name another host
// (its Host or :authority differs from the SNI), one that other sites
// share on another port, or one that a catch-all answers on another port.
// A chain the handshake verified is trusted when it passes through one
// of the site's CAs (a map lookup); otherwise the peer's certificates are
// verified against them anew.
func (m *Manager) VerifyClientCert(caFiles []string, cs *tls.ConnectionState) error {
	if len(caFiles) == 0 {
		return nil
	}
	cas := m.plan().clientCAs[clientCAsKey(caFiles)]
	switch {
	case cas == nil:
		return fmt.Errorf("verify client certificate: client CA files %q are no site's: %w", caFiles, ErrClientCertRequired)
	case cs == nil || len(cs.PeerCertificates) == 0:
		return fmt.Errorf("verify client certificate: none presented: %w", ErrClientCertRequired)
	}
	now := time.Now()
	for _, chain := range cs.VerifiedChains {
		if slices.ContainsFunc(chain, func(c *x509.Certificate) bool { return now.Before(c.NotBefore) || now.After(c.NotAfter) }) {
			continue
		}
		if slices.ContainsFunc(chain, func(c *x509.Certificate) bool { return cas.anchors[string(c.Raw)] }) {
			return nil
		}
	}
	opts := x509.VerifyOptions{
		Roots:         cas.pool,
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("verify client certificate: %w: %w", ErrClientCertRequired, err)
	}
	return nil
}
