package upstream

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
)

// cookieMACSize is how much of the HMAC-SHA256 a cookie value carries:
// 128 bits, as in RFC 4868's truncated HMAC-SHA-256-128, which keeps the
// value at 22 characters.
const cookieMACSize = 16

// cookieSelector takes the backend a signed cookie names. The value is the
// unpadded base64url encoding of HMAC-SHA256(secret, backend address),
// truncated: compact, URL-safe, not revealing the address, and only ever
// valid for the backend (and secret) it was made for. Without a valid cookie
// naming a candidate it falls back to round robin.
type cookieSelector struct {
	name     string
	values   map[*Backend]string // cookie value of each backend of the configuration
	fallback selector
}

func newCookieSelector(name string, secret []byte, backends []*Backend, fallback selector) *cookieSelector {
	s := &cookieSelector{name: name, values: make(map[*Backend]string, len(backends)), fallback: fallback}
	for _, b := range backends {
		s.values[b] = cookieValue(secret, b.Addr)
	}
	return s
}

// cookieValue signs addr.
func cookieValue(secret []byte, addr string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(addr))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:cookieMACSize])
}

func (s *cookieSelector) pick(cands []*Backend, req *http.Request) *Backend {
	if req != nil {
		for _, c := range req.CookiesNamed(s.name) {
			for _, b := range cands {
				// Constant time: the value is a MAC a client might probe.
				if hmac.Equal([]byte(c.Value), []byte(s.values[b])) {
					return b
				}
			}
		}
	}
	return s.fallback.pick(cands, req)
}

// Cookie returns the cookie the proxy should set on the response to req so
// that the client's next session comes back to this lease's backend, or nil
// when req already carries it (or the pool's policy is not Cookie). The
// cookie lasts for the browser session and is Path=/, HttpOnly, Secure and
// SameSite=Lax. After the lease moved to another backend, it names the new
// one; while the lease is still on a backend an Update removed, there is
// none (the lease moves before its next request).
func (l *Lease) Cookie(req *http.Request) *http.Cookie {
	s, ok := l.pool.state().sel.(*cookieSelector)
	if !ok {
		return nil
	}
	v, ok := s.values[l.Backend()]
	if !ok {
		return nil
	}
	if req != nil {
		for _, c := range req.CookiesNamed(s.name) {
			if c.Value == v {
				return nil
			}
		}
	}
	return &http.Cookie{
		Name:     s.name,
		Value:    v,
		Path:     "/",
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteLaxMode,
	}
}
