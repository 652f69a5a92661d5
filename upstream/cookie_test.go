package upstream

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func withCookie(c *http.Cookie) *http.Request {
	r := reqWithHeader("", "")
	if c != nil {
		r.AddCookie(c)
	}
	return r
}

// TestCookieBringsAClientBack: a client's second session, carrying the
// cookie its first got, lands on the first session's backend, although
// round robin would have sent it elsewhere.
func TestCookieBringsAClientBack(t *testing.T) {
	bs := []*backend{namedBackend(t, "b0"), namedBackend(t, "b1"), namedBackend(t, "b2")}
	p, _ := newPool(t, Config{Backends: addrsOf(bs...), Policy: Cookie, CookieSecret: []byte("secret")})

	req1 := withCookie(nil)
	l1 := p.Lease(1, req1)
	defer l1.Close()
	name1, _ := hit(t, l1)
	c := l1.Cookie(req1)
	if c == nil {
		t.Fatal("no cookie for a request without one")
	}
	if c.Name != DefaultCookieName || c.Path != "/" || !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteLaxMode {
		t.Fatalf("cookie %s: want %s, Path=/, HttpOnly, Secure, SameSite=Lax", c, DefaultCookieName)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`).MatchString(c.Value) {
		t.Fatalf("cookie value %q is not 22 URL-safe characters", c.Value)
	}
	if strings.Contains(c.String(), "127.0.0.1") {
		t.Fatalf("cookie %s reveals the backend address", c)
	}
	if again := l1.Cookie(withCookie(c)); again != nil {
		t.Fatalf("Cookie = %s for a request that carries it, want nil", again)
	}

	for i := range 4 {
		req := withCookie(c)
		l := p.Lease(uint64(10+i), req)
		if name, _ := hit(t, l); name != name1 {
			t.Fatalf("session %d with the cookie went to %s, want %s", i, name, name1)
		}
		if set := l.Cookie(req); set != nil {
			t.Fatalf("session %d: Cookie = %s, want nil", i, set)
		}
		l.Close()
	}
}

// TestCookieTamperedOrForeignIsIgnored: a cookie that does not verify
// (edited, signed with another secret, or for a backend not in the pool)
// picks nothing; round robin does, and a fresh cookie is set.
func TestCookieTamperedOrForeignIsIgnored(t *testing.T) {
	addrs := fakeAddrs(3)
	p, _ := newPool(t, Config{Backends: addrs, Policy: Cookie, PolicyKey: "lb", CookieSecret: []byte("secret")})
	valid := cookieValue([]byte("secret"), addrs[2])
	tampered := []byte(valid)
	tampered[3] ^= 1
	for _, tc := range []struct{ name, value string }{
		{"tampered", string(tampered)},
		{"other secret", cookieValue([]byte("other"), addrs[2])},
		{"foreign backend", cookieValue([]byte("secret"), "10.9.9.9:80")},
		{"the address itself", addrs[2]},
		{"empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for range 3 {
				req := withCookie(&http.Cookie{Name: "lb", Value: tc.value})
				l := p.Lease(0, req)
				got = append(got, l.Backend().Addr)
				if c := l.Cookie(req); c == nil || c.Value != cookieValue([]byte("secret"), l.Backend().Addr) {
					t.Fatalf("Cookie = %v, want the lease's backend's", c)
				}
				l.Close()
			}
			if got[0] == got[1] || got[1] == got[2] {
				t.Fatalf("picks %v: want round robin", got)
			}
		})
	}
	// The valid one picks its backend every time.
	for range 3 {
		if l := p.Lease(0, withCookie(&http.Cookie{Name: "lb", Value: valid})); l.Backend().Addr != addrs[2] {
			t.Fatalf("valid cookie went to %s", l.Backend().Addr)
		} else {
			l.Close()
		}
	}
}

// TestCookieForAnUnhealthyBackend: the cookie names a backend that is down;
// the session goes elsewhere and the client gets the new backend's cookie.
func TestCookieForAnUnhealthyBackend(t *testing.T) {
	addrs := fakeAddrs(2)
	p, _ := newPool(t, Config{Backends: addrs, Policy: Cookie, CookieSecret: []byte("secret"),
		Passive: PassiveHealth{FailDuration: time.Minute}})
	p.now = newFakeClock().Now
	p.Backends()[0].fail(failDial, "test")
	req := withCookie(&http.Cookie{Name: DefaultCookieName, Value: cookieValue([]byte("secret"), addrs[0])})
	l := p.Lease(0, req)
	defer l.Close()
	if l.Backend().Addr != addrs[1] {
		t.Fatalf("lease on %s, want the healthy %s", l.Backend().Addr, addrs[1])
	}
	if c := l.Cookie(req); c == nil || c.Value != cookieValue([]byte("secret"), addrs[1]) {
		t.Fatalf("Cookie = %v, want one naming %s", c, addrs[1])
	}
}

func TestCookieIsNilForOtherPolicies(t *testing.T) {
	p, _ := newPool(t, Config{Backends: fakeAddrs(2)})
	l := p.Lease(0, nil)
	defer l.Close()
	if c := l.Cookie(withCookie(nil)); c != nil {
		t.Fatalf("round_robin lease set cookie %s", c)
	}
}
