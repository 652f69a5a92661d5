package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
)

// TestRouting: sites chosen by host (exact, wildcard, catch-all), routes by
// path in file order (handle, handle_path stripping its prefix, respond,
// redir), header directives on responses, and header_up/header_down.
func TestRouting(t *testing.T) {
	api := startApp(t, "api", http.HandlerFunc(headerEcho))
	static := startApp(t, "static", http.HandlerFunc(headerEcho))
	def := startApp(t, "default", http.HandlerFunc(headerEcho))
	h := startProxy(t, `{
	default_bind 127.0.0.1
}
localhost:0, shop.internal:0 {
	header X-Site shop
	header -X-Powered-By
	reverse_proxy `+def.Addr()+` {
		header_up X-Route default
		header_up Host backend.internal
		header_down -Server
		header_down +X-Down {path}
	}
	handle /api/* {
		reverse_proxy `+api.Addr()+`
	}
	handle_path /static/* {
		header Cache-Control "max-age=60"
		reverse_proxy `+static.Addr()+`
	}
	handle /old/* {
		redir https://{host}/new{uri} 308
	}
	handle /health {
		respond 200 "ok on {host}"
	}
	handle /admin* {
		respond 403
	}
}
*.wild.internal:0 {
	respond "wildcard {host}"
}
:0 {
	respond 404 "catch-all"
}
`, nil)
	c := h.dial(t)
	port := strconv.Itoa(h.port)
	get := func(host, path string) (*http.Response, string) {
		return do(t, c, "GET", "https://localhost:"+port+path, nil, map[string]string{"Host": host})
	}

	resp, body := get("shop.internal", "/api/orders?id=7")
	e := decodeEcho(t, body)
	if e.Header.Get("X-Route") != "" || resp.Header.Get("X-Site") != "shop" {
		t.Fatalf("/api: %+v, X-Site %q", e, resp.Header.Get("X-Site"))
	}
	if n := len(api.Requests()); n != 1 {
		t.Fatalf("api backend got %d requests", n)
	}

	resp, body = get("shop.internal", "/static/css/site.css?v=2")
	if r := static.Requests(); len(r) != 1 || r[0].Path != "/css/site.css" {
		t.Fatalf("handle_path did not strip /static: %+v", r)
	}
	if resp.Header.Get("Cache-Control") != "max-age=60" || resp.Header.Get("X-Site") != "shop" {
		t.Fatalf("/static headers %v", resp.Header)
	}
	_ = body

	resp, body = get("shop.internal", "/anything/else")
	e = decodeEcho(t, body)
	if e.Header.Get("X-Route") != "default" || e.Host != "backend.internal" {
		t.Fatalf("header_up: X-Route %q, Host %q", e.Header.Get("X-Route"), e.Host)
	}
	if resp.Header.Get("Server") != "" || resp.Header.Get("X-Down") != "/anything/else" {
		t.Fatalf("header_down: Server %q, X-Down %q", resp.Header.Get("Server"), resp.Header.Get("X-Down"))
	}

	resp, _ = get("shop.internal", "/old/page?q=1")
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://shop.internal/new/old/page?q=1" {
		t.Fatalf("redir: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, body = get("shop.internal", "/health")
	if resp.StatusCode != http.StatusOK || body != "ok on shop.internal" || resp.Header.Get("X-Site") != "shop" {
		t.Fatalf("respond: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	// Route matching is on the cleaned path: no ../ way around a rule.
	for _, p := range []string{"/admin", "/admin/users", "/ADMIN/users", "/static/../admin/x"} {
		if resp, _ = get("shop.internal", p); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: %d, want 403", p, resp.StatusCode)
		}
	}
	if resp, body = get("a.wild.internal", "/"); body != "wildcard a.wild.internal" {
		t.Fatalf("wildcard site: %d %q", resp.StatusCode, body)
	}
	if resp, body = get("b.a.wild.internal", "/"); body != "catch-all" {
		t.Fatalf("a wildcard matches one label only: %q", body)
	}
	if resp, body = get("unknown.example", "/"); resp.StatusCode != http.StatusNotFound || body != "catch-all" {
		t.Fatalf("catch-all site: %d %q", resp.StatusCode, body)
	}
	if n := len(def.Requests()); n != 1 {
		t.Fatalf("default backend got %d requests, want 1", n)
	}
}

// TestNoRouteIs404: a site whose routes all have paths answers 404 for the
// rest, never another route's content.
func TestNoRouteIs404(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, `{
	default_bind 127.0.0.1
}
localhost:0 {
	handle /api/* {
		reverse_proxy `+app.Addr()+`
	}
}
`, nil)
	c := h.dial(t)
	resp, _ := do(t, c, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/other", nil, nil)
	if resp.StatusCode != http.StatusNotFound || len(app.Requests()) != 0 {
		t.Fatalf("status %d, backend got %d", resp.StatusCode, len(app.Requests()))
	}
}

// TestCookieBringsAClientBack: with lb_policy cookie, the first response of
// a session names its backend in a signed cookie; a client that comes back
// on a new QUIC connection (after an idle timeout, an app restart) with the
// cookie lands on the same backend, every time.
func TestCookieBringsAClientBack(t *testing.T) {
	app1 := startApp(t, "app1", nil)
	app2 := startApp(t, "app2", nil)
	h := startProxy(t, siteFor(" {\n\t\tlb_policy cookie lb\n\t}", app1.Addr(), app2.Addr()), nil)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	whichApp := func(body string) string {
		var r legacyapp.Request
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatal(err)
		}
		return r.App
	}

	c := h.dial(t)
	resp, body := do(t, c, "GET", url, nil, nil)
	home := whichApp(body)
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "lb" {
			cookie = ck
		}
	}
	if cookie == nil || !cookie.HttpOnly || !cookie.Secure {
		t.Fatalf("no HttpOnly, Secure lb cookie in %v", resp.Header["Set-Cookie"])
	}
	resp, _ = do(t, c, "GET", url, nil, map[string]string{"Cookie": "lb=" + cookie.Value})
	if len(resp.Cookies()) != 0 {
		t.Fatalf("cookie set again although the request carried it: %v", resp.Header["Set-Cookie"])
	}
	c.Close()

	for i := range 4 {
		c := h.dial(t)
		_, body := do(t, c, "GET", url, nil, map[string]string{"Cookie": "lb=" + cookie.Value})
		if got := whichApp(body); got != home {
			t.Fatalf("connection %d came back to %s, want %s", i, got, home)
		}
		c.Close()
	}
	// Without the cookie, new sessions spread over both backends.
	seen := map[string]bool{}
	for range 4 {
		c := h.dial(t)
		_, body := do(t, c, "GET", url, nil, nil)
		seen[whichApp(body)] = true
		c.Close()
	}
	if len(seen) != 2 {
		t.Fatalf("sessions without the cookie all went to %v", seen)
	}
	// A forged cookie is ignored (and replaced).
	c = h.dial(t)
	resp, _ = do(t, c, "GET", url, nil, map[string]string{"Cookie": "lb=" + strings.Repeat("A", len(cookie.Value))})
	if len(resp.Cookies()) != 1 {
		t.Fatalf("a forged cookie was not replaced: %v", resp.Header["Set-Cookie"])
	}
}

// TestKillingABackendMovesOnlyItsSessions: four sessions spread over two
// backends; one backend dies. The sessions that were on it move to the
// other (their next request succeeds, the move is logged and counted);
// the sessions on the live backend keep their backend and their upstream
// connection.
func TestKillingABackendMovesOnlyItsSessions(t *testing.T) {
	app1 := startApp(t, "app1", nil)
	app2 := startApp(t, "app2", nil)
	h := startProxy(t, siteFor(" {\n\t\tfail_duration 30s\n\t\tlb_try_duration 2s\n\t\tlb_try_interval 50ms\n\t}", app1.Addr(), app2.Addr()), nil)
	before := make([]legacyapp.Request, 4)
	clients := make([]*h3client.Conn, 4)
	for i := range clients {
		clients[i] = h.dial(t)
		before[i] = seen(t, clients[i], h, "c"+strconv.Itoa(i))
	}
	apps := map[string]int{}
	for _, r := range before {
		apps[r.App]++
	}
	if apps["app1"] != 2 || apps["app2"] != 2 {
		t.Fatalf("sessions per backend %v, want 2 and 2", apps)
	}
	app2.Close()

	for i, c := range clients {
		after := seen(t, c, h, "c"+strconv.Itoa(i))
		switch before[i].App {
		case "app1":
			if after.App != "app1" || after.Remote != before[i].Remote || after.Conn != before[i].Conn {
				t.Fatalf("client %d on the live backend moved: %+v → %+v", i, before[i], after)
			}
		case "app2":
			if after.App != "app1" {
				t.Fatalf("client %d was not moved off the dead backend: %+v", i, after)
			}
		}
	}
	if n := len(h.logged("session moved")); n != 2 {
		t.Fatalf("%d session moves logged, want 2", n)
	}
}

// TestHostportKeepsThePort is a regression test (issue 13): on a port other
// than 443, "redir https://{host}/new{uri}" sent clients to port 443, and
// {hostport}, which keeps the port the client used, was refused. It works in
// redir, header and respond alike, and is the bare host when the client
// named no port.
func TestHostportKeepsThePort(t *testing.T) {
	h := startProxy(t, `{
	default_bind 127.0.0.1
}
localhost:0 {
	header X-Hostport {hostport}
	handle /old/* {
		redir https://{hostport}/new{uri} permanent
	}
	respond "on {hostport}, host {host}"
}
`, nil)
	c := h.dial(t)
	hostport := "localhost:" + strconv.Itoa(h.port)
	url := "https://" + hostport
	resp, _ := do(t, c, "GET", url+"/old/page?q=1", nil, nil)
	if want := "https://" + hostport + "/new/old/page?q=1"; resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != want {
		t.Fatalf("redir: %d %q, want %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
	if got := resp.Header.Get("X-Hostport"); got != hostport {
		t.Fatalf("header: X-Hostport %q, want %q", got, hostport)
	}
	resp, body := do(t, c, "GET", url+"/", nil, nil)
	if want := "on " + hostport + ", host localhost"; body != want {
		t.Fatalf("respond: %d %q, want %q", resp.StatusCode, body, want)
	}
	resp, _ = do(t, c, "GET", url+"/old/x", nil, map[string]string{"Host": "localhost"})
	if want := "https://localhost/new/old/x"; resp.Header.Get("Location") != want {
		t.Fatalf("no port named: Location %q, want %q", resp.Header.Get("Location"), want)
	}
}
