package configs

import (
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
)

// globalOptions read the options of the global block into b.cfg. Each is
// called with the cursor on the option's name and returns the first error
// that stops it; errors it can read past go to b.report.
var globalOptions = map[string]func(b *builder, c *Cursor) error{
	"acme_ca":                acmeCA,
	"acme_ca_root":           acmeCARoot,
	"admin":                  admin,
	"data_dir":               dataDir,
	"default_bind":           defaultBind,
	"email":                  emailOption,
	"handshake_rate":         handshakeRate(func(c *Config) *int { return &c.HandshakeRate }),
	"handshake_rate_per_ip":  handshakeRate(func(c *Config) *int { return &c.HandshakeRatePerIP }),
	"http_port":              func(b *builder, c *Cursor) error { return b.portArg(c, &b.cfg.HTTPPort) },
	"https_port":             func(b *builder, c *Cursor) error { return b.portArg(c, &b.cfg.HTTPSPort) },
	"log":                    logOption,
	"max_header_bytes":       globalHeaderSize(func(c *Config) *int { return &c.MaxHeaderBytes }),
	"max_header_field_bytes": globalHeaderSize(func(c *Config) *int { return &c.MaxHeaderFieldBytes }),
	"on_demand_tls":          onDemandTLSOption,
	"quic_lb":                quicLBOption,
	"shared_keys":            sharedKeysOption,
	"storage":                storage,
	"upgrade_grace":          upgradeGrace,
	"upgrade_timeout":        upgradeTimeout,
	"upgrade_steering":       upgradeSteering,
	"zero_rtt":               zeroRTT,
}

// exclusiveOptions maps a global option (by exclusiveKey) to the other
// option that makes the same setting, and names the setting: only one of
// the two may be written. "storage redis" keeps the data directory, for
// what is each instance's own, so data_dir goes with it.
var exclusiveOptions = map[string]struct{ other, setting string }{
	"data_dir":            {"storage file_system", "data directory"},
	"storage file_system": {"data_dir", "data directory"},
}

// exclusiveKey names a global option for exclusiveOptions: storage with
// its module, any other by its name.
func exclusiveKey(seg Segment) string {
	c := NewCursor(seg)
	c.Next()
	if name := c.Val(); name == "storage" && c.NextArg() {
		return name + " " + c.Val()
	}
	return c.Val()
}

// siteDirectives read the directives of a site block, or of one of its
// handle blocks, into sc, like globalOptions. handle and handle_path are
// added by init: they read their blocks with siteDirectives.
var siteDirectives = map[string]func(b *builder, c *Cursor, sc *scope) error{
	"header":                 headerDirective,
	"max_header_bytes":       siteHeaderSize(func(l *Limits) *int { return &l.HeaderBytes }),
	"max_header_field_bytes": siteHeaderSize(func(l *Limits) *int { return &l.FieldBytes }),
	"redir":                  redir,
	"respond":                respond,
	"reverse_proxy":          reverseProxy,
	"tls":                    tlsDirective,
	"tunnel":                 tunnel,
}

func init() {
	siteDirectives["handle"] = handle
	siteDirectives["handle_path"] = handle
}

var (
	// handlers are the site directives that answer requests. A handle
	// block has one; a site has at most one outside its handle blocks.
	handlers = []string{"reverse_proxy", "respond", "redir"}
	// blockDirectives are the site directives a handle block may hold.
	blockDirectives = []string{"header", "redir", "respond", "reverse_proxy"}
	// repeatable are the site directives that may be written more than
	// once in a scope; handlers are checked on their own.
	repeatable = []string{"handle", "handle_path", "header"}
)

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

var storageModules = []string{"file_system", "redis"}

// storage reads "storage file_system PATH" or
//
//	storage file_system {
//		root PATH
//	}
//
// into DataDir, or "storage redis { ... }" into Redis (see RedisStorage).
func storage(b *builder, c *Cursor) error {
	pos := c.Token().Pos()
	if !c.NextArg() {
		return c.ArgErr()
	}
	module := c.Token()
	switch module.Text {
	case "redis":
		return redisStorage(b, c, pos)
	case "file_system":
	default:
		return c.Errf("unknown storage module %q%s", module.Text, orWant(didYouMean(module.Text, storageModules), " (want file_system, redis)"))
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
	logOptions       = []string{"format", "level", "output"}
	accessLogOptions = []string{"format", "output"}
	logNames         = []string{"access"}
	logLevels        = []string{"debug", "info", "warn", "error"}
	logFormats       = []string{"console", "json"}
	logOutputs       = []string{"stderr", "stdout", "discard", "file"}
)

// logOption reads the process log's block, "log { output O; level L;
// format F }", and the access log's, "log access { output O; format F }"
// or "log access off".
func logOption(b *builder, c *Cursor) error {
	if !c.NextArg() {
		seen := make(map[string]Position)
		for c.NextBlock(0) {
			b.report(logSubdirective(b, c, false, seen))
		}
		return nil
	}
	if name := c.Val(); name != "access" {
		return c.Errf("unknown log %q%s", name, orWant(didYouMean(name, logNames), " (want log { ... } for the process log, log access { ... } or log access off)"))
	}
	if c.NextArg() {
		if c.Val() != "off" {
			return c.Errf("unknown value %q (want log access off, or a block)", c.Val())
		}
		b.cfg.Log.Access.Off = true
		return c.endOfLine()
	}
	if !c.opensBlock() {
		return c.Err("missing block or off (want log access { output ...; format ... } or log access off)")
	}
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		b.report(logSubdirective(b, c, true, seen))
	}
	return nil
}

// orWant returns hint, or want when there is none.
func orWant(hint, want string) string {
	if hint != "" {
		return hint
	}
	return want
}

// logSubdirective reads one line of the process log's block, or of the
// access log's.
func logSubdirective(b *builder, c *Cursor, access bool, seen map[string]Position) error {
	name := c.Val()
	known := logOptions
	if access {
		known = accessLogOptions
	}
	switch {
	case access && name == "level":
		return c.Err("level: the access log has no level (its lines are info; use log access off)")
	case !slices.Contains(known, name):
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, known))
	case !setOnce(c, seen):
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	if name == "output" {
		out, err := logOutput(c)
		if err != nil {
			return err
		}
		if access {
			b.cfg.Log.Access.Output = out
		} else {
			b.cfg.Log.Output = out
		}
		return nil
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
	case !slices.Contains(logFormats, t.Text):
		return c.Errf("unknown format %q (want console, json)", t.Text)
	case access:
		b.cfg.Log.Access.Format = t.Text
	default:
		b.cfg.Log.Format = t.Text
	}
	return nil
}

// logOutput reads "output stderr|stdout|discard|file PATH".
func logOutput(c *Cursor) (LogOutput, error) {
	out := LogOutput{Pos: c.Token().Pos()}
	if !c.NextArg() {
		return out, c.ArgErr()
	}
	out.Kind = c.Val()
	if !slices.Contains(logOutputs, out.Kind) {
		return out, c.Errf("unknown output %q%s", out.Kind, orWant(didYouMean(out.Kind, logOutputs), " (want stderr, stdout, discard or file PATH)"))
	}
	if out.Kind == "file" {
		if !c.NextArg() {
			return out, c.Err("output: missing path (want output file PATH)")
		}
		if c.Val() == "" {
			return out, c.Err("output: empty path")
		}
		out.Path = c.Val()
	}
	return out, c.endOfLine()
}

// zeroRTT reads "zero_rtt on|off".
func zeroRTT(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	switch t.Text {
	case "on":
		b.cfg.ZeroRTT = true
	case "off":
		b.cfg.ZeroRTT = false
	default:
		return c.Errf("unknown value %q (want on, off)", t.Text)
	}
	return nil
}

// upgradeGrace reads "upgrade_grace DURATION".
func upgradeGrace(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	return durationArg(c, t, &b.cfg.UpgradeGrace, true)
}

// upgradeTimeout reads "upgrade_timeout DURATION".
func upgradeTimeout(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	return durationArg(c, t, &b.cfg.UpgradeTimeout, true)
}

// upgradeSteering reads "upgrade_steering auto|bpf|forward".
func upgradeSteering(b *builder, c *Cursor) error {
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	switch t.Text {
	case "auto", "bpf", "forward":
		b.cfg.UpgradeSteering = t.Text
		return nil
	}
	return c.Errf("unknown value %q (want auto, bpf, forward)", t.Text)
}

// maxHandshakeRate bounds handshake_rate and handshake_rate_per_ip.
const maxHandshakeRate = 1_000_000

// handshakeRate reads "handshake_rate N" or "handshake_rate_per_ip N": new
// connections a second, 0 to maxHandshakeRate.
func handshakeRate(dst func(*Config) *int) func(b *builder, c *Cursor) error {
	return func(b *builder, c *Cursor) error {
		t, err := oneArg(c)
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(t.Text)
		if err != nil || n < 0 || n > maxHandshakeRate {
			return c.Errf("invalid rate %q (want new connections a second, 0 to %d)", t.Text, maxHandshakeRate)
		}
		*dst(b.cfg) = n
		return nil
	}
}

// sizeUnits are the units parseSize knows, lower-cased.
var sizeUnits = map[string]int64{"": 1, "b": 1, "kb": 1000, "kib": 1 << 10, "mb": 1000 * 1000, "mib": 1 << 20}

// parseSize parses a whole number of bytes with an optional unit, any case:
// B, KB (1000), KiB (1024), MB or MiB. A number too large for an int64
// after its unit gives math.MaxInt64, which no bound accepts.
func parseSize(s string) (int64, bool) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	unit, ok := sizeUnits[strings.ToLower(s[i:])]
	if i == 0 || !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil || n > math.MaxInt64/unit {
		return math.MaxInt64, true // only a range error is possible: s[:i] is digits
	}
	return n * unit, true
}

// oneArg reads the single argument of the current line.
func oneArg(c *Cursor) (Token, error) {
	if !c.NextArg() {
		return Token{}, c.ArgErr()
	}
	return c.Token(), c.endOfLine()
}
