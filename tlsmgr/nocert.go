package tlsmgr

import (
	"crypto/tls"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

const (
	// noCertNames bounds the server names noCertLog remembers having
	// logged; past it, it forgets them all and starts over. SNI is at most
	// 255 bytes, so this is at most 64 KiB.
	noCertNames = 256
	// noCertBurst and noCertRate bound its lines: a burst of noCertBurst,
	// then one a second.
	noCertBurst = 10
	noCertRate  = 1
)

// noCertLog logs the TLS handshakes that fail because no certificate
// matches their server name, which the client sees only as an
// internal_error alert (SNI "localhost" to a proxy that serves 127.0.0.1:
// issue 13). Each name is logged once, with the names that are served.
// Anyone can send any SNI, so the log is bounded in both lines and memory:
// at most noCertNames names remembered, at most noCertBurst lines at once
// and noCertRate a second after that; names it had no line for are counted
// in the next line's "suppressed" (and logged once a line is free).
type noCertLog struct {
	logger *zap.Logger
	now    func() time.Time // the limiter's clock; tests replace it

	mu         sync.Mutex // guards the following
	seen       map[string]struct{}
	limiter    *rate.Limiter
	suppressed int
}

func newNoCertLog(logger *zap.Logger) *noCertLog {
	return &noCertLog{
		logger:  logger,
		now:     time.Now,
		seen:    make(map[string]struct{}),
		limiter: rate.NewLimiter(noCertRate, noCertBurst),
	}
}

// servedNames returns the names of p's sites, sorted, for noCertLog's
// lines.
func servedNames(p *plan) []string {
	served := make([]string, 0, len(p.routes))
	for name := range p.routes {
		served = append(served, name)
	}
	slices.Sort(served)
	return served
}

// forget forgets the names logged so far, as after a config update that
// may have removed them: their next failure is logged again.
func (l *noCertLog) forget() {
	l.mu.Lock()
	clear(l.seen)
	l.mu.Unlock()
}

// note records a handshake for hello's server name that found no
// certificate (err says so), logging it if the name is new and a line is
// free. served are the names of the sites (servedNames), shared by every
// line and never modified. configured says whether a site lists the name:
// then its certificate is not loaded yet (an ACME certificate still being
// obtained, say), else no site serves it.
func (l *noCertLog) note(hello *tls.ClientHelloInfo, served []string, configured bool, err error) {
	name := strings.ToLower(hello.ServerName)
	l.mu.Lock()
	if _, ok := l.seen[name]; ok {
		l.mu.Unlock()
		return
	}
	if !l.limiter.AllowN(l.now(), 1) {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	if len(l.seen) >= noCertNames {
		clear(l.seen)
	}
	l.seen[name] = struct{}{}
	suppressed := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()

	fields := make([]zap.Field, 0, 5)
	fields = append(fields, zap.String("server_name", name), zap.Strings("served", served))
	if hello.Conn != nil {
		fields = append(fields, zap.Stringer("remote", hello.Conn.RemoteAddr()))
	}
	if suppressed > 0 {
		fields = append(fields, zap.Int("suppressed", suppressed))
	}
	fields = append(fields, zap.Error(err))
	msg := "tls handshake for a name no site serves"
	if configured {
		msg = "tls handshake for a name whose certificate is not loaded yet"
	}
	l.logger.Warn(msg, fields...)
}

// lists reports whether a site lists name, exactly or by a wildcard.
func (p *plan) lists(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, ".")) // SNI is ASCII already
	if p.routes[name] != nil {
		return true
	}
	i := strings.IndexByte(name, '.')
	return i > 0 && p.routes["*"+name[i:]] != nil
}
