package configs

import (
	"net"
	"slices"
	"strconv"
	"time"
)

// globalOptions read the options of the global block into b.cfg. Each is
// called with the cursor on the option's name and returns the first error
// that stops it; errors it can read past go to b.report.
var globalOptions = map[string]func(b *builder, c *Cursor) error{
	"acme_ca":       acmeCA,
	"acme_ca_root":  acmeCARoot,
	"admin":         admin,
	"data_dir":      dataDir,
	"default_bind":  defaultBind,
	"email":         emailOption,
	"http_port":     func(b *builder, c *Cursor) error { return b.portArg(c, &b.cfg.HTTPPort) },
	"https_port":    func(b *builder, c *Cursor) error { return b.portArg(c, &b.cfg.HTTPSPort) },
	"log":           logOption,
	"on_demand_tls": onDemandTLSOption,
	"storage":       storage,
}

// exclusiveOptions maps a global option to the other option that makes the
// same setting, and names the setting: only one of the two may be written.
var exclusiveOptions = map[string]struct{ other, setting string }{
	"data_dir": {"storage", "data directory"},
	"storage":  {"data_dir", "data directory"},
}

// siteDirectives read the directives of a site block into s, like
// globalOptions.
var siteDirectives = map[string]func(b *builder, c *Cursor, s *Site) error{
	"reverse_proxy": reverseProxy,
	"tls":           tlsDirective,
}

// portArg reads "https_port N" or "http_port N" into *port and records
// where in b.ports.
func (b *builder) portArg(c *Cursor, port *int) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	p, ok := parsePort(t.Text)
	if !ok {
		return c.Errf("invalid port %q (want 0-65535)", t.Text)
	}
	*port = p
	b.ports[c.seg.Directive()] = t.Pos()
	return nil
}

// dataDir reads "data_dir PATH".
func dataDir(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	if t.Text == "" {
		return c.Err("empty path")
	}
	b.cfg.DataDir = t.Text
	return nil
}

var storageOptions = []string{"root"}

// storage reads "storage file_system PATH" or
//
//	storage file_system {
//		root PATH
//	}
//
// into DataDir. file_system is the only storage module.
func storage(b *builder, c *Cursor) error {
	if !c.NextArg() {
		return c.ArgErr()
	}
	module := c.Token()
	if module.Text != "file_system" {
		return c.Errf("unknown storage module %q (want file_system)", module.Text)
	}
	if c.NextArg() {
		if c.Val() == "" {
			return c.Err("empty path")
		}
		b.cfg.DataDir = c.Val()
		return nil
	}
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		b.report(storageSubdirective(b, c, seen))
	}
	if _, ok := seen["root"]; !ok {
		return newError(module.Pos(), "storage", nil,
			"file_system needs a path (want storage file_system PATH or storage file_system { root PATH })")
	}
	return nil
}

func storageSubdirective(b *builder, c *Cursor, seen map[string]Position) error {
	name := c.Val()
	if !slices.Contains(storageOptions, name) {
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, storageOptions))
	}
	if !setOnce(c, seen) {
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	if t.Text == "" {
		return c.Errf("%s: empty path", name)
	}
	b.cfg.DataDir = t.Text
	return nil
}

// defaultBind reads "default_bind HOST...".
func defaultBind(b *builder, c *Cursor) error {
	if c.CountRemainingArgs() == 0 {
		return c.ArgErr()
	}
	for c.NextArg() {
		if !validHost(c.Val(), false) {
			b.report(c.Errf("invalid host %q (want an IP address or a hostname, without port)", c.Val()))
			continue
		}
		b.cfg.DefaultBind = append(b.cfg.DefaultBind, c.Val())
	}
	return nil
}

// admin reads "admin HOST:PORT" or "admin off".
func admin(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil || t.Text == "off" {
		return err
	}
	host, port, err := net.SplitHostPort(t.Text)
	if err != nil {
		return c.Wrapf(err, "invalid address %q (want host:port, as in 127.0.0.1:2019)", t.Text)
	}
	if host != "" && !validHost(host, false) {
		return c.Errf("invalid host %q", host)
	}
	if _, ok := parsePort(port); !ok {
		return c.Errf("invalid port %q (want 0-65535)", port)
	}
	b.cfg.Admin = t.Text
	return nil
}

var (
	logOptions = []string{"format", "level"}
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"console", "json"}
)

// logOption reads "log { level L; format F }".
func logOption(b *builder, c *Cursor) error {
	if c.CountRemainingArgs() > 0 {
		return c.ArgErr()
	}
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		b.report(logSubdirective(b, c, seen))
	}
	return nil
}

func logSubdirective(b *builder, c *Cursor, seen map[string]Position) error {
	name := c.Val()
	if !slices.Contains(logOptions, name) {
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, logOptions))
	}
	if !setOnce(c, seen) {
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	switch {
	case name == "level" && slices.Contains(logLevels, t.Text):
		b.cfg.Log.Level = t.Text
	case name == "level":
		return c.Errf("unknown level %q (want debug, info, warn, error)", t.Text)
	case slices.Contains(logFormats, t.Text):
		b.cfg.Log.Format = t.Text
	default:
		return c.Errf("unknown format %q (want console, json)", t.Text)
	}
	return nil
}

var reverseProxyOptions = []string{"dial_timeout", "max_conns_per_session", "response_header_timeout", "to"}

// reverseProxy reads
//
//	reverse_proxy UPSTREAM... {
//		to UPSTREAM...
//		max_conns_per_session N
//		dial_timeout DURATION
//		response_header_timeout DURATION
//	}
//
// reporting each bad upstream and subdirective on its own.
func reverseProxy(b *builder, c *Cursor, s *Site) error {
	rp := &ReverseProxy{
		Pos:                   c.Token().Pos(),
		MaxConnsPerSession:    DefaultMaxConnsPerSession,
		DialTimeout:           DefaultDialTimeout,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
	}
	s.ReverseProxy = rp
	written := false // some upstream was written, valid or not
	upstreams := func() {
		for c.NextArg() {
			written = true
			u, err := parseUpstream(c)
			b.report(err)
			if err == nil {
				rp.Upstreams = append(rp.Upstreams, u)
			}
		}
	}
	upstreams()
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		b.report(reverseProxySubdirective(c, rp, seen, upstreams))
	}
	if !written {
		return newError(rp.Pos, "reverse_proxy", nil, "missing upstream address")
	}
	return nil
}

func reverseProxySubdirective(c *Cursor, rp *ReverseProxy, seen map[string]Position, upstreams func()) error {
	name := c.Val()
	if !slices.Contains(reverseProxyOptions, name) {
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, reverseProxyOptions))
	}
	if name == "to" {
		if c.CountRemainingArgs() == 0 {
			return c.ArgErr()
		}
		upstreams()
		return c.endOfLine()
	}
	if !setOnce(c, seen) {
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	if name == "max_conns_per_session" {
		n, err := strconv.Atoi(t.Text)
		if err != nil {
			return c.Wrapf(err, "%s: invalid number %q", name, t.Text)
		}
		if n < 1 || n > 1024 {
			return c.Errf("%s: %d out of range (want 1-1024)", name, n)
		}
		rp.MaxConnsPerSession = n
		return nil
	}
	d, err := time.ParseDuration(t.Text)
	switch {
	case err != nil:
		return c.Wrapf(err, "%s: invalid duration %q", name, t.Text)
	case name == "dial_timeout" && d <= 0:
		return c.Errf("%s: duration %q must be positive", name, t.Text)
	case d < 0:
		return c.Errf("%s: duration %q must not be negative", name, t.Text)
	case name == "dial_timeout":
		rp.DialTimeout = d
	default:
		rp.ResponseHeaderTimeout = d
	}
	return nil
}

// oneArg reads the single argument of the current line.
func oneArg(c *Cursor) (Token, error) {
	if !c.NextArg() {
		return Token{}, c.ArgErr()
	}
	return c.Token(), c.endOfLine()
}
