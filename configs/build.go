package configs

import (
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
)

// Load reads and parses the Roamfile at path, substituting {$ENV}
// placeholders from the process environment. Positions name the file as
// path, exactly as given.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, src, nil)
}

// Parse parses and validates the Roamfile src; filename is recorded in
// positions. env looks up {$ENV} placeholders (nil means os.LookupEnv).
//
// Parse reports every error in the file it can find, in file order, joined
// with errors.Join; each is an *Error. After 20 errors a last line says how
// many more there were. A lexical or structural error (an unterminated
// quote, an unmatched brace) stops it early.
func Parse(filename string, src []byte, env func(string) (string, bool)) (*Config, error) {
	toks, err := Lex(filename, src, env)
	if err != nil {
		return nil, err
	}
	global, sites, err := ParseBlocks(toks)
	if err != nil {
		return nil, err
	}
	b := &builder{
		cfg: &Config{
			File:                filename,
			HTTPSPort:           DefaultHTTPSPort,
			HTTPPort:            DefaultHTTPPort,
			ZeroRTT:             true,
			MaxHeaderBytes:      DefaultMaxHeaderBytes,
			MaxHeaderFieldBytes: DefaultMaxHeaderFieldBytes,
			HandshakeRate:       DefaultHandshakeRate,
			HandshakeRatePerIP:  DefaultHandshakeRatePerIP,
			UpgradeGrace:        DefaultUpgradeGrace,
			UpgradeTimeout:      DefaultUpgradeTimeout,
			UpgradeSteering:     "auto",
			Log:                 Log{Level: "info", Format: "console"},
		},
		addrs:    make(map[string]Position),
		ports:    make(map[string]Position),
		limitPos: make(map[string]Position),
		hosts:    make(map[string]hostSite),
	}
	if global != nil {
		b.global(global)
	}
	for _, blk := range sites {
		b.site(blk)
	}
	if len(sites) == 0 {
		b.report(newError(Position{File: filename, Line: 1, Col: 1}, "", nil, "no site blocks"))
	}
	if err := joinErrors(b.errs); err != nil {
		return nil, err
	}
	return b.cfg, nil
}

// builder turns blocks into a Config, collecting errors as it goes.
type builder struct {
	cfg   *Config
	errs  []error
	addrs map[string]Position // "host:port" of each site address → where first used
	ports map[string]Position // http_port and https_port, when read without error → where the number is
	// limitPos holds where the global header limits were written.
	limitPos map[string]Position
	// hosts maps each site host ("" for a catch-all) to the first site
	// that has it, on any port: sites of one host must agree on
	// client_auth (see checkClientAuth).
	hosts map[string]hostSite
	// onDemandTLS is set when the global on_demand_tls option is written,
	// valid or not: a site's on_demand needs it, and an error in it is
	// reported once, there.
	onDemandTLS bool
}

func (b *builder) report(err error) {
	if err != nil {
		b.errs = append(b.errs, err)
	}
}

// global applies the global options block. Must run before site, which
// needs HTTPSPort.
func (b *builder) global(blk *Block) {
	seen := make(map[string]Position)
	for _, seg := range blk.Segments {
		c := NewCursor(seg)
		c.Next()
		name := c.Val()
		opt, ok := globalOptions[name]
		switch {
		case !ok && siteDirectives[name] != nil:
			b.report(errAtToken(c.Token(), fmt.Sprintf("%s is a site directive, not a global option", name)))
		case !ok:
			b.report(errAtToken(c.Token(), fmt.Sprintf("unknown global option %q%s",
				name, didYouMean(name, slices.Sorted(maps.Keys(globalOptions))))))
		case seen[optionKey(seg)] != (Position{}):
			b.report(c.Errf("already set at %s", seen[optionKey(seg)]))
		default:
			seen[optionKey(seg)] = c.Token().Pos()
			key := exclusiveKey(seg)
			seen[key] = c.Token().Pos()
			if ex, ok := exclusiveOptions[key]; ok {
				if first, dup := seen[ex.other]; dup {
					b.report(c.Errf("%s already set by %s at %s", ex.setting, ex.other, first))
					continue
				}
			}
			b.run(c, func() error { return opt(b, c) })
		}
	}
	b.checkPorts(seen)
	b.checkLimits(Limits{HeaderBytes: b.cfg.MaxHeaderBytes, FieldBytes: b.cfg.MaxHeaderFieldBytes}, b.limitPos)
}

// optionKey names what a global option sets, for "already set" errors: its
// name, and for a named log ("log access") the name too.
func optionKey(seg Segment) string {
	c := NewCursor(seg)
	c.Next()
	if name := c.Val(); name == "log" && c.NextArg() {
		return name + " " + c.Val()
	}
	return c.Val()
}

// checkPorts reports http_port and https_port that are equal, after
// defaults, at the later of the two. Port 0 is exempt: each listener gets
// its own ephemeral port. seen holds the global options written.
func (b *builder) checkPorts(seen map[string]Position) {
	port := b.cfg.HTTPPort
	if port != b.cfg.HTTPSPort || port == 0 {
		return
	}
	var name string
	var pos Position
	for _, n := range []string{"http_port", "https_port"} {
		p, ok := b.ports[n]
		if _, written := seen[n]; written && !ok {
			return // an invalid port, already reported, left the default
		}
		if ok && (name == "" || p.Line > pos.Line || p.Line == pos.Line && p.Col > pos.Col) {
			name, pos = n, p
		}
	}
	b.report(newError(pos, name, nil, fmt.Sprintf("http_port and https_port must differ (both are %d)", port)))
}

// site adds the site of blk.
func (b *builder) site(blk Block) {
	site := Site{Pos: blk.Keys[0].Pos()}
	site.TLS.Pos = site.Pos // until a tls directive says more
	for _, k := range blk.Keys {
		a, err := parseSiteAddress(k, b.cfg.HTTPSPort)
		if err != nil {
			b.report(err)
			continue
		}
		hp := net.JoinHostPort(a.Host, strconv.Itoa(a.Port))
		if first, dup := b.addrs[hp]; dup {
			b.report(errAtToken(k, fmt.Sprintf("site address %q already used at %s", hp, first)))
			continue
		}
		b.addrs[hp] = a.Pos
		site.Addresses = append(site.Addresses, a)
	}
	var implicit Route // the handler outside any handle block
	sc := &scope{site: &site, route: &implicit, headers: &site.Headers, limitPos: make(map[string]Position)}
	b.directives(blk.Segments, sc)
	if site.Limits.HeaderBytes == 0 {
		site.Limits.HeaderBytes = b.cfg.MaxHeaderBytes
	}
	if site.Limits.FieldBytes == 0 {
		site.Limits.FieldBytes = b.cfg.MaxHeaderFieldBytes
	}
	if len(sc.limitPos) > 0 { // else the global ones, checked already
		b.checkLimits(site.Limits, sc.limitPos)
	}
	if sc.handler != "" {
		// It matches every path, so it comes after the handle blocks,
		// wherever it is written.
		implicit.Pos = sc.handlerPos
		b.addRoute(sc, sc.handler, implicit)
	}
	if sc.handler == "" && sc.blocks == 0 && site.Tunnel == nil && !sc.hidden {
		b.report(newError(site.Pos, "", nil,
			"site has no handler (want reverse_proxy, respond, redir or tunnel, at site level or in a handle block)"))
	}
	if t := site.Tunnel; t != nil && len(t.Tokens) == 0 && len(site.TLS.ClientCAFiles) == 0 && !sc.authHidden {
		b.report(newError(t.Pos, "tunnel", nil, errOpenTunnel))
	}
	if !sc.authHidden {
		b.checkClientAuth(&site)
	}
	b.cfg.Sites = append(b.cfg.Sites, site)
}

// hostSite is the first site of a host: where it starts and its client
// CAs.
type hostSite struct {
	pos       Position
	clientCAs []string
}

// checkClientAuth reports an address of site whose host an earlier site
// has too, on another port, with other client_auth CAs. A TLS handshake
// names the host (SNI), not the port, so one host gets one client_auth:
// the other site's would be dropped, or demanded where it was not asked
// for. The catch-all host "" counts as a host of its own.
func (b *builder) checkClientAuth(site *Site) {
	for _, a := range site.Addresses {
		first, ok := b.hosts[a.Host]
		switch {
		case !ok:
			b.hosts[a.Host] = hostSite{pos: site.Pos, clientCAs: site.TLS.ClientCAFiles}
		case first.pos != site.Pos && !sameFiles(first.clientCAs, site.TLS.ClientCAFiles):
			what := "host " + strconv.Quote(a.Host)
			if a.Host == "" {
				what = "catch-all address"
			}
			b.report(newError(a.Pos, "", nil, fmt.Sprintf(
				"site address %q: client_auth differs from that of the site at %s with the same %s "+
					"(a TLS handshake names the host, not the port)", a.Text, first.pos, what)))
		}
	}
}

// sameFiles reports whether a and b list the same files, in any order.
func sameFiles(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// scope is where site directives go: a site outside any handle block, or
// one handle or handle_path block.
type scope struct {
	site    *Site
	block   string      // "handle" or "handle_path" in a block; "" at site level
	route   *Route      // receives the handler
	headers *[]HeaderOp // receives header directives

	handler    string   // the first handler directive read, if any
	handlerPos Position // where
	hidden     bool     // a misspelt or misplaced directive may hold the handler
	// authHidden is set when the site's client authentication was written
	// with errors (a bad tls directive, a bad token line): the tunnel's
	// want of it is not reported on top.
	authHidden bool
	// Site level only: blocks counts the handle blocks written, valid or
	// not; routeNames holds the directive of each of site.Routes.
	blocks     int
	routeNames []string
	limitPos   map[string]Position // where the site's header limits were written
}

// directives reads segs, the directives of sc, reporting each error on its
// own.
func (b *builder) directives(segs []Segment, sc *scope) {
	seen := make(map[string]Position) // directives that may appear once → where
	for _, seg := range segs {
		c := NewCursor(seg)
		c.Next()
		name := c.Val()
		dir, ok := siteDirectives[name]
		switch {
		case !ok && globalOptions[name] != nil:
			b.report(newError(c.Token().Pos(), sc.block, nil, fmt.Sprintf(
				"%s is a global option; set it in the global options block at the top of the file", name)))
		case !ok:
			names := blockDirectives
			if sc.block == "" {
				names = slices.Sorted(maps.Keys(siteDirectives))
			}
			s := suggest(name, names)
			sc.hidden = sc.hidden || slices.Contains(handlers, s) || s == "handle" || s == "handle_path" || s == "tunnel"
			sc.authHidden = sc.authHidden || s == "tls"
			b.report(newError(c.Token().Pos(), sc.block, nil,
				fmt.Sprintf("unknown directive %q%s", name, didYouMean(name, names))))
		case sc.block != "" && !slices.Contains(blockDirectives, name):
			why := "set it at site level"
			switch name {
			case "handle", "handle_path":
				why, sc.hidden = "handle blocks do not nest", true
			case "tunnel":
				sc.hidden = true // the block's handler, in the author's mind
			}
			b.report(newError(c.Token().Pos(), sc.block, nil,
				fmt.Sprintf("%s is not allowed in a %s block (%s)", name, sc.block, why)))
		case slices.Contains(handlers, name) && sc.handler != "":
			hint := " (use handle blocks for more than one handler)"
			if sc.block != "" {
				hint = " (one handler per " + sc.block + " block)"
			}
			if name == sc.handler {
				b.report(c.Errf("already set at %s%s", sc.handlerPos, hint))
			} else {
				b.report(c.Errf("handler already set by %s at %s%s", sc.handler, sc.handlerPos, hint))
			}
		case slices.Contains(handlers, name):
			sc.handler, sc.handlerPos = name, c.Token().Pos()
			b.run(c, func() error { return dir(b, c, sc) })
		case !slices.Contains(repeatable, name) && !setOnce(c, seen):
			b.report(c.Errf("already set at %s", seen[name]))
		default:
			b.run(c, func() error { return dir(b, c, sc) })
		}
	}
}

// addRoute appends rt, read from the directive name, to the site of sc,
// and reports it when an earlier route takes every request it would
// match: routes match in order.
func (b *builder) addRoute(sc *scope, name string, rt Route) {
	for i, prev := range sc.site.Routes {
		if !covers(prev.Path, rt.Path) {
			continue
		}
		var msg string
		if prev.Path == "" {
			msg = fmt.Sprintf("unreachable: %s at %s matches every path first", sc.routeNames[i], prev.Pos)
		} else {
			msg = fmt.Sprintf("unreachable: %s %q at %s matches all of its paths first", sc.routeNames[i], prev.Path, prev.Pos)
		}
		if slices.Contains(handlers, name) {
			msg += " (a handler outside handle blocks comes after them)"
		}
		b.report(newError(rt.Pos, name, nil, msg))
		break
	}
	sc.site.Routes = append(sc.site.Routes, rt)
	sc.routeNames = append(sc.routeNames, name)
}

// run calls fn to read the directive at c and reports its error, or else
// any arguments or block it left unread.
func (b *builder) run(c *Cursor, fn func() error) {
	err := fn()
	if err == nil {
		err = c.endOfLine()
	}
	b.report(err)
}

// setOnce records the current token's text in seen and reports whether it
// was new.
func setOnce(c *Cursor, seen map[string]Position) bool {
	if _, dup := seen[c.Val()]; dup {
		return false
	}
	seen[c.Val()] = c.Token().Pos()
	return true
}
