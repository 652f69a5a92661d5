package configs

import (
	"fmt"
	"maps"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

var reverseProxyOptions = []string{
	"dial_timeout", "fail_duration", "header_down", "header_up", "health_interval", "health_status",
	"health_timeout", "health_uri", "keepalive_idle", "lb_policy", "lb_try_duration", "lb_try_interval",
	"max_conns_per_session", "max_fails", "response_header_timeout", "tls_ca", "tls_client_certificate",
	"tls_insecure_skip_verify", "tls_server_name", "to", "unhealthy_status",
}

// upstreamTLSOptions are the reverse_proxy subdirectives that configure TLS to
// https:// upstreams.
var upstreamTLSOptions = []string{"tls_ca", "tls_client_certificate", "tls_insecure_skip_verify", "tls_server_name"}

// needs maps a reverse_proxy subdirective to the one it has no effect
// without.
var needs = map[string]string{
	"health_interval":  "health_uri",
	"health_timeout":   "health_uri",
	"health_status":    "health_uri",
	"max_fails":        "fail_duration",
	"unhealthy_status": "fail_duration",
}

// reverseProxy reads
//
//	reverse_proxy UPSTREAM... {
//		to UPSTREAM...
//		max_conns_per_session N
//		dial_timeout DURATION
//		response_header_timeout DURATION
//		keepalive_idle DURATION
//
//		lb_policy round_robin|least_conn|random|first|cookie [NAME]|header NAME
//		lb_try_duration DURATION
//		lb_try_interval DURATION
//
//		health_uri PATH
//		health_interval DURATION
//		health_timeout DURATION
//		health_status CODE|Nxx
//
//		fail_duration DURATION
//		max_fails N
//		unhealthy_status CODE|Nxx...
//
//		header_up [+|-]NAME [VALUE]
//		header_down [+|-]NAME [VALUE]
//
//		tls_ca PEM_FILE...
//		tls_server_name NAME
//		tls_client_certificate CERT_FILE KEY_FILE
//		tls_insecure_skip_verify
//	}
//
// reporting each bad upstream and subdirective on its own. The defaults of
// the health checks are set even when they are off. The tls_* settings
// need https:// upstreams, and then every upstream is https:// (see
// ReverseProxy.TLS); their files are read by UpstreamTLS.Load, not here.
func reverseProxy(b *builder, c *Cursor, sc *scope) error {
	rp := &ReverseProxy{
		Pos:                   c.Token().Pos(),
		MaxConnsPerSession:    DefaultMaxConnsPerSession,
		DialTimeout:           DefaultDialTimeout,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		LBTryDuration:         DefaultLBTryDuration,
		LBTryInterval:         DefaultLBTryInterval,
		HealthInterval:        DefaultHealthInterval,
		HealthTimeout:         DefaultHealthTimeout,
		HealthStatus:          200,
		HealthStatusClass:     true,
		MaxFails:              1,
	}
	sc.route.ReverseProxy = rp
	rp.TLS = &UpstreamTLS{} // dropped below unless an upstream is https://
	written := false        // some upstream was written, valid or not
	wantTLS := false        // some upstream was written with https://, valid or not
	upstreams := func() {
		for c.NextArg() {
			written = true
			wantTLS = wantTLS || len(c.Val()) >= 8 && strings.EqualFold(c.Val()[:8], "https://")
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
	for _, name := range slices.Sorted(maps.Keys(needs)) {
		if pos, ok := seen[name]; ok {
			if _, ok := seen[needs[name]]; !ok {
				b.report(newError(pos, "reverse_proxy", nil, name+": needs "+needs[name]))
			}
		}
	}
	b.checkUpstreamTLS(rp, seen, wantTLS)
	if !written {
		return newError(rp.Pos, "reverse_proxy", nil, "missing upstream address")
	}
	return nil
}

// checkUpstreamTLS reports what is wrong with the TLS of rp's upstreams,
// whose subdirectives are in seen, and drops rp.TLS unless the upstreams
// are https://. wantTLS says an upstream was written with https://, valid
// or not: the tls_* settings are then no mistake.
func (b *builder) checkUpstreamTLS(rp *ReverseProxy, seen map[string]Position, wantTLS bool) {
	var first *Upstream // the first upstream; the others must agree with it on TLS
	for i := range rp.Upstreams {
		u := &rp.Upstreams[i]
		switch {
		case first == nil:
			first = u
		case u.TLS != first.TLS:
			what := "plain upstream %q among https:// upstreams (the first is %q at %s)"
			if u.TLS {
				what = "https:// upstream %q among plain upstreams (the first is %q at %s)"
			}
			b.report(newError(u.Pos, "reverse_proxy", nil, fmt.Sprintf(what, u.Text, first.Text, first.Pos)+
				": a reverse_proxy's upstreams are all https:// or none (write two reverse_proxy routes)"))
		}
	}
	if first == nil || !first.TLS {
		if !wantTLS {
			for _, name := range upstreamTLSOptions {
				if pos, ok := seen[name]; ok {
					b.report(newError(pos, "reverse_proxy", nil, name+": needs https:// upstreams (as in reverse_proxy https://backend:8443)"))
				}
			}
		}
		rp.TLS = nil
		return
	}
	rp.TLS.Pos = first.Pos
	ca, okCA := seen["tls_ca"]
	insecure, okInsecure := seen["tls_insecure_skip_verify"]
	if okCA && okInsecure {
		msg := fmt.Sprintf("tls_insecure_skip_verify: conflicts with tls_ca at %s (nothing would be verified)", ca)
		pos := insecure
		if before(insecure, ca) {
			msg, pos = fmt.Sprintf("tls_ca: conflicts with tls_insecure_skip_verify at %s (nothing would be verified)", insecure), ca
		}
		b.report(newError(pos, "reverse_proxy", nil, msg))
	}
}

// before reports whether a comes before b in the file.
func before(a, b Position) bool { return a.Line < b.Line || a.Line == b.Line && a.Col < b.Col }

func reverseProxySubdirective(c *Cursor, rp *ReverseProxy, seen map[string]Position, upstreams func()) error {
	name := c.Val()
	switch {
	case !slices.Contains(reverseProxyOptions, name):
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, reverseProxyOptions))
	case name == "to":
		if c.CountRemainingArgs() == 0 {
			return c.ArgErr()
		}
		upstreams()
		return c.endOfLine()
	case name == "tls_ca":
		// It may repeat, adding files.
		if _, ok := seen[name]; !ok {
			seen[name] = c.Token().Pos()
		}
		if c.CountRemainingArgs() == 0 {
			return c.ArgErr()
		}
		for c.NextArg() {
			if c.Val() == "" {
				return c.Errf("%s: empty path", name)
			}
			if !slices.ContainsFunc(rp.TLS.CAFiles, func(f File) bool { return f.Path == c.Val() }) {
				rp.TLS.CAFiles = append(rp.TLS.CAFiles, File{Pos: c.Token().Pos(), Path: c.Val()})
			}
		}
		return c.endOfLine()
	case name == "header_up" || name == "header_down":
		op, err := parseHeaderOp(c, name == "header_up")
		if err != nil {
			return err
		}
		if name == "header_up" {
			rp.HeaderUp = append(rp.HeaderUp, op)
		} else {
			rp.HeaderDown = append(rp.HeaderDown, op)
		}
		return nil
	case !setOnce(c, seen):
		return c.Errf("%s: already set at %s", name, seen[name])
	case name == "lb_policy":
		return lbPolicy(c, rp)
	case name == "tls_insecure_skip_verify":
		rp.TLS.InsecureSkipVerify = true
		return c.endOfLine()
	case name == "tls_client_certificate":
		switch n := c.CountRemainingArgs(); {
		case n > 2:
			c.NextArg()
			c.NextArg()
			return c.ArgErr()
		case n == 1:
			c.NextArg()
			return c.Errf("%s: missing key file after %q (want %s CERT_FILE KEY_FILE)", name, c.Val(), name)
		case n == 0:
			return c.Errf("%s: missing certificate and key files (want %s CERT_FILE KEY_FILE)", name, name)
		}
		c.NextArg()
		rp.TLS.ClientCert = File{Pos: c.Token().Pos(), Path: c.Val()}
		c.NextArg()
		rp.TLS.ClientKey = File{Pos: c.Token().Pos(), Path: c.Val()}
		if rp.TLS.ClientCert.Path == "" || rp.TLS.ClientKey.Path == "" {
			return c.Errf("%s: empty path", name)
		}
		return c.endOfLine()
	case name == "unhealthy_status":
		if c.CountRemainingArgs() == 0 {
			return c.ArgErr()
		}
		for c.NextArg() {
			m, err := statusMatcher(c)
			if err != nil {
				return err
			}
			rp.UnhealthyStatus = append(rp.UnhealthyStatus, m)
		}
		return c.endOfLine()
	}
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	if d, positive := durationOption(rp, name); d != nil {
		return durationArg(c, t, d, positive)
	}
	switch name {
	case "max_conns_per_session":
		n, err := strconv.Atoi(t.Text)
		if err != nil {
			return c.Wrapf(err, "%s: invalid number %q", name, t.Text)
		}
		if n < 1 || n > 1024 {
			return c.Errf("%s: %d out of range (want 1-1024)", name, n)
		}
		rp.MaxConnsPerSession = n
	case "max_fails":
		n, err := strconv.Atoi(t.Text)
		if err != nil {
			return c.Wrapf(err, "%s: invalid number %q", name, t.Text)
		}
		if n < 1 {
			return c.Errf("%s: %d out of range (want 1 or more)", name, n)
		}
		rp.MaxFails = n
	case "health_uri":
		if !strings.HasPrefix(t.Text, "/") || strings.ContainsFunc(t.Text, func(r rune) bool {
			return r == '#' || unicode.IsSpace(r) || unicode.IsControl(r)
		}) {
			return c.Errf("%s: invalid path %q (want a path starting with /, as in /healthz)", name, t.Text)
		}
		rp.HealthURI = t.Text
	case "tls_server_name":
		if !validHost(t.Text, false) {
			return c.Errf("%s: invalid name %q (want a DNS name or an IP address)", name, t.Text)
		}
		rp.TLS.ServerName = canonicalHost(t.Text)
	case "health_status":
		m, err := statusMatcher(c)
		if err != nil {
			return err
		}
		rp.HealthStatus, rp.HealthStatusClass = m.Code, m.Class
	}
	return nil
}

// durationOption returns the field of rp that the reverse_proxy
// subdirective name sets, and whether its duration must be positive (else
// it must not be negative); nil if name takes no duration.
func durationOption(rp *ReverseProxy, name string) (d *time.Duration, positive bool) {
	switch name {
	case "dial_timeout":
		return &rp.DialTimeout, true
	case "response_header_timeout":
		return &rp.ResponseHeaderTimeout, false
	case "keepalive_idle":
		return &rp.KeepaliveIdle, false
	case "lb_try_duration":
		return &rp.LBTryDuration, false
	case "lb_try_interval":
		return &rp.LBTryInterval, true
	case "health_interval":
		return &rp.HealthInterval, true
	case "health_timeout":
		return &rp.HealthTimeout, true
	case "fail_duration":
		return &rp.FailDuration, true
	}
	return nil, false
}

// DurationExamples shows the syntax of a duration, for errors.
const DurationExamples = "examples: 500ms, 5s, 2m, 1h30m"

// durationArg parses t, the argument of the current subdirective, into *d.
func durationArg(c *Cursor, t Token, d *time.Duration, positive bool) error {
	name := c.linePrefix()
	v, err := time.ParseDuration(t.Text)
	switch {
	case err != nil:
		return c.Wrapf(err, "%sinvalid duration %q (%s)", name, t.Text, DurationExamples)
	case positive && v <= 0:
		return c.Errf("%sduration %q must be positive", name, t.Text)
	case v < 0:
		return c.Errf("%sduration %q must not be negative", name, t.Text)
	}
	*d = v
	return nil
}

// lbPolicyNames are the load-balancing policies, in the order of LBPolicy.
var lbPolicyNames = []string{"round_robin", "least_conn", "random", "first", "cookie", "header"}

// lbPolicy reads "lb_policy POLICY [NAME]" with the cursor on lb_policy.
// No policy may hash the client's address: it changes when a QUIC client
// migrates to another network (RFC 9000 §9), and the client would land on
// another backend mid-session.
func lbPolicy(c *Cursor, rp *ReverseProxy) error {
	if !c.NextArg() {
		return c.ArgErr()
	}
	p := c.Val()
	i := slices.Index(lbPolicyNames, p)
	switch {
	case p == "ip_hash" || p == "client_ip_hash":
		return c.Errf("lb_policy: %s is not supported: the client address changes when a QUIC client migrates (use cookie or header)", p)
	case i < 0:
		hint := didYouMean(p, lbPolicyNames)
		if hint == "" {
			hint = " (want " + strings.Join(lbPolicyNames, ", ") + ")"
		}
		return c.Errf("lb_policy: unknown policy %q%s", p, hint)
	}
	rp.LBPolicy = LBPolicy(i)
	switch rp.LBPolicy {
	case LBCookie:
		rp.LBKey = DefaultLBCookie
		if c.NextArg() {
			if !validToken(c.Val()) {
				return c.Errf("lb_policy: invalid cookie name %q", c.Val())
			}
			rp.LBKey = c.Val()
		}
	case LBHeader:
		if !c.NextArg() {
			return c.Err("lb_policy: missing header name (want lb_policy header NAME)")
		}
		if !validToken(c.Val()) {
			return c.Errf("lb_policy: invalid header name %q", c.Val())
		}
		rp.LBKey = textproto.CanonicalMIMEHeaderKey(c.Val())
	}
	return c.endOfLine()
}

// statusMatcher parses the status at the cursor: a code 100-599 or a class
// 1xx-5xx.
func statusMatcher(c *Cursor) (StatusMatcher, error) {
	s := c.Val()
	if len(s) == 3 && '1' <= s[0] && s[0] <= '5' {
		if strings.EqualFold(s[1:], "xx") {
			return StatusMatcher{Code: int(s[0]-'0') * 100, Class: true}, nil
		}
		if isDigit(s[1]) && isDigit(s[2]) {
			n, _ := strconv.Atoi(s)
			return StatusMatcher{Code: n}, nil
		}
	}
	return StatusMatcher{}, c.Errf("%sinvalid status %q (want a code 100-599 or a class such as 5xx)", c.linePrefix(), s)
}
