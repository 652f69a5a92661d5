package configs

import (
	"net/url"
	"slices"
	"strings"
	"unicode"
)

// The global options and the site directive that say where certificates
// come from: the ACME account and CA, on-demand TLS, and a site's tls.

// emailOption reads "email ADDRESS", the ACME account email.
func emailOption(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	if !validEmail(t.Text) {
		return errInvalidEmail(c, "")
	}
	b.cfg.Email = t.Text
	return nil
}

// acmeCA reads "acme_ca URL", the ACME directory.
func acmeCA(b *builder, c *Cursor) error {
	if _, err := oneArg(c); err != nil {
		return err
	}
	if err := checkURL(c, "", true); err != nil {
		return err
	}
	b.cfg.ACMECA = c.Val()
	return nil
}

// acmeCARoot reads "acme_ca_root PEM_FILE". The file is read by whoever
// talks to the CA, not here.
func acmeCARoot(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	if t.Text == "" {
		return c.Err("empty path")
	}
	b.cfg.ACMECARoot = t.Text
	return nil
}

var onDemandTLSOptions = []string{"ask"}

// whyAsk ends the errors about on-demand TLS without an ask endpoint.
const whyAsk = "(roamgate never issues certificates without asking)"

// onDemandTLSOption reads
//
//	on_demand_tls {
//		ask URL
//	}
//
// The block and its ask are required: without an endpoint that vets each
// name, anyone could make the server request certificates for any name
// pointed at it, and exhaust the CA's rate limits.
func onDemandTLSOption(b *builder, c *Cursor) error {
	b.onDemandTLS = true
	pos := c.Token().Pos()
	if c.CountRemainingArgs() > 0 {
		return c.ArgErr()
	}
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		b.report(onDemandTLSSubdirective(b, c, seen))
	}
	if _, ok := seen["ask"]; !ok {
		return newError(pos, "on_demand_tls", nil, "ask is required "+whyAsk)
	}
	return nil
}

func onDemandTLSSubdirective(b *builder, c *Cursor, seen map[string]Position) error {
	name := c.Val()
	if !slices.Contains(onDemandTLSOptions, name) {
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, onDemandTLSOptions))
	}
	if !setOnce(c, seen) {
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	if _, err := oneArg(c); err != nil {
		return err
	}
	if err := checkURL(c, "ask: ", false); err != nil {
		return err
	}
	b.cfg.OnDemandAsk = c.Val()
	return nil
}

var (
	tlsOptions = []string{"ca", "ca_root", "client_auth", "email", "issuer", "on_demand"}
	tlsIssuers = []string{"acme", "internal"}
	// acmeOnly are the tls settings that an internal issuer has no use for.
	acmeOnly = []string{"ca", "ca_root", "email"}

	clientAuthOptions = []string{"trusted_ca_cert_file"}
)

// tlsDirective reads
//
//	tls internal
//	tls CERT_FILE KEY_FILE [{
//		client_auth { ... }
//	}]
//	tls EMAIL
//	tls [EMAIL|internal] {
//		issuer acme|internal
//		ca URL
//		ca_root PEM_FILE
//		email EMAIL
//		on_demand
//		client_auth {
//			trusted_ca_cert_file PEM_FILE...
//		}
//	}
//
// where "tls internal" stands for "issuer internal". After CERT_FILE
// KEY_FILE a block holds client_auth only: there is nothing to obtain.
// Errors mark the site's client authentication as hidden (see scope).
func tlsDirective(b *builder, c *Cursor, sc *scope) (err error) {
	sc.site.TLS = TLS{Pos: c.Token().Pos()}
	tls := &sc.site.TLS
	errs := len(b.errs)
	defer func() {
		if err != nil || len(b.errs) > errs {
			sc.authHidden = true
		}
	}()
	seen := make(map[string]Position) // settings made, by argument or subdirective → where
	switch n := c.CountRemainingArgs(); {
	case n == 0 && !c.opensBlock():
		return c.ArgErr()
	case n >= 2:
		if err := tlsFiles(c, tls); err != nil {
			return err
		}
	case n == 1:
		c.NextArg()
		switch arg := c.Val(); {
		case arg == "internal":
			tls.Mode = TLSInternal
			seen["issuer"] = c.Token().Pos()
		case strings.Contains(arg, "@"):
			if !validEmail(arg) {
				return errInvalidEmail(c, "")
			}
			tls.Email = arg
			seen["email"] = c.Token().Pos()
		case suggest(arg, []string{"internal"}) != "":
			return c.Errf("unknown mode %q (did you mean internal?)", arg)
		default:
			return c.Errf("missing key file after %q (want tls internal, tls EMAIL or tls CERT_FILE KEY_FILE)", arg)
		}
	}
	for c.NextBlock(0) {
		b.report(tlsSubdirective(b, c, tls, seen))
	}
	if tls.Mode == TLSInternal {
		for _, name := range acmeOnly {
			if pos, ok := seen[name]; ok {
				b.report(newError(pos, "tls", nil, name+": only applies to ACME, not to the internal issuer"))
			}
		}
	}
	return nil
}

// tlsFiles reads "tls CERT_FILE KEY_FILE" with the cursor on "tls".
func tlsFiles(c *Cursor, tls *TLS) error {
	c.NextArg()
	cert := c.Val()
	switch n := c.CountRemainingArgs(); {
	case cert == "internal":
		return c.ArgErr()
	case n > 1:
		c.NextArg()
		return c.ArgErr()
	case cert == "":
		return c.Err("empty certificate file name")
	}
	c.NextArg()
	if c.Val() == "" {
		return c.Err("empty key file name")
	}
	tls.Mode, tls.CertFile, tls.KeyFile = TLSFiles, cert, c.Val()
	return nil
}

func tlsSubdirective(b *builder, c *Cursor, tls *TLS, seen map[string]Position) error {
	name := c.Val()
	if !slices.Contains(tlsOptions, name) {
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, tlsOptions))
	}
	if !setOnce(c, seen) {
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	switch {
	case name == "client_auth":
		return clientAuth(b, c, tls)
	case tls.Mode == TLSFiles:
		return c.Errf("%s: does not apply to certificate files (only client_auth does)", name)
	}
	if name == "on_demand" {
		if err := c.endOfLine(); err != nil {
			return err
		}
		if !b.onDemandTLS {
			return c.Err("on_demand needs the global on_demand_tls { ask URL } " + whyAsk)
		}
		tls.OnDemand = true
		return nil
	}
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	switch name {
	case "issuer":
		switch t.Text {
		case "acme":
			tls.Mode = TLSACME
		case "internal":
			tls.Mode = TLSInternal
		default:
			hint := didYouMean(t.Text, tlsIssuers)
			if hint == "" {
				hint = " (want acme, internal)"
			}
			return c.Errf("issuer: unknown issuer %q%s", t.Text, hint)
		}
	case "ca":
		if err := checkURL(c, "ca: ", true); err != nil {
			return err
		}
		tls.CA = t.Text
	case "ca_root":
		if t.Text == "" {
			return c.Err("ca_root: empty path")
		}
		tls.CARoot = t.Text
	case "email":
		if !validEmail(t.Text) {
			return errInvalidEmail(c, "email: ")
		}
		tls.Email = t.Text
	}
	return nil
}

// clientAuth reads, with the cursor on client_auth in a tls block,
//
//	client_auth {
//		trusted_ca_cert_file PEM_FILE...
//	}
//
// into tls.ClientCAFiles, as written: the files are read by tlsmgr, not
// here. trusted_ca_cert_file may repeat; a file listed twice is kept once.
func clientAuth(b *builder, c *Cursor, tls *TLS) error {
	pos := c.Token().Pos()
	if c.CountRemainingArgs() > 0 {
		return c.ArgErr()
	}
	if !c.opensBlock() {
		return c.Err("client_auth: missing block (want client_auth { trusted_ca_cert_file FILE })")
	}
	written := false // a trusted_ca_cert_file line, valid or misspelt
	for nesting := c.Nesting(); c.NextBlock(nesting); {
		written = written || suggest(c.Val(), clientAuthOptions) != ""
		b.report(clientAuthSubdirective(c, tls))
	}
	if !written {
		return newError(pos, "tls", nil, "client_auth: no trusted_ca_cert_file (want client_auth { trusted_ca_cert_file FILE })")
	}
	return nil
}

func clientAuthSubdirective(c *Cursor, tls *TLS) error {
	name := c.Val()
	if !slices.Contains(clientAuthOptions, name) {
		return c.Errf("client_auth: unknown subdirective %q%s", name, didYouMean(name, clientAuthOptions))
	}
	if c.CountRemainingArgs() == 0 {
		return c.ArgErr()
	}
	for c.NextArg() {
		if c.Val() == "" {
			return c.Errf("%s: empty path", name)
		}
		if !slices.Contains(tls.ClientCAFiles, c.Val()) {
			tls.ClientCAFiles = append(tls.ClientCAFiles, c.Val())
		}
	}
	return c.endOfLine()
}

// validEmail reports whether s looks like an email address: one "@" with
// text on both sides, and no spaces or control characters. Whether it
// reaches anyone is the CA's business.
func validEmail(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	return ok && local != "" && domain != "" && !strings.Contains(domain, "@") &&
		!strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) })
}

// errInvalidEmail returns the error for the invalid email address at the
// cursor; prefix names the subdirective, as in "email: ".
func errInvalidEmail(c *Cursor, prefix string) error {
	return c.Errf("%sinvalid email address %q (want NAME@DOMAIN, as in ops@example.com)", prefix, c.Val())
}

// checkURL checks the URL at the cursor: an absolute http:// or https://
// URL with a valid host, a valid port if any, and no spaces. For an ACME
// directory (acme) plain http:// is allowed only on a loopback host, for a
// test CA such as Pebble: anywhere else the account key and certificates
// would cross the network in the clear. prefix names the subdirective, as
// in "ca: ".
func checkURL(c *Cursor, prefix string, acme bool) error {
	s := c.Val()
	u, err := url.Parse(s)
	valid := err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" &&
		validHost(u.Hostname(), false) && !strings.ContainsFunc(s, unicode.IsSpace)
	if valid && u.Port() != "" {
		_, valid = parsePort(u.Port())
	}
	switch {
	case !valid && acme:
		return c.Wrapf(err, "%sinvalid URL %q (want an https:// URL, as in https://acme-v02.api.letsencrypt.org/directory)", prefix, s)
	case !valid:
		return c.Wrapf(err, "%sinvalid URL %q (want an http:// or https:// URL, as in http://localhost:9123/check)", prefix, s)
	case acme && u.Scheme == "http" && !slices.Contains(loopbackNames, canonicalHost(u.Hostname())):
		return c.Errf("%sURL %q: http:// is allowed only for localhost, 127.0.0.1 and ::1 (want https://)", prefix, s)
	}
	return nil
}

// loopbackNames are the hosts an ACME directory may be reached on over
// plain http://.
var loopbackNames = []string{"localhost", "127.0.0.1", "::1"}
