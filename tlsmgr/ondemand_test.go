package tlsmgr

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/tlsmgr/acmetest"
)

// askServer is an on-demand ask endpoint that allows a fixed set of names
// and records what it was asked.
type askServer struct {
	url string

	mu      sync.Mutex // guards the following
	allowed map[string]bool
	asked   map[string]int
	queries []url.Values
}

func newAskServer(t *testing.T, allowed ...string) *askServer {
	t.Helper()
	a := &askServer{allowed: make(map[string]bool), asked: make(map[string]int)}
	for _, name := range allowed {
		a.allowed[name] = true
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		name := r.URL.Query().Get("domain")
		a.asked[name]++
		a.queries = append(a.queries, r.URL.Query())
		if !a.allowed[name] {
			http.Error(w, "not ours", http.StatusForbidden)
		}
	}))
	t.Cleanup(srv.Close)
	a.url = srv.URL
	return a
}

func (a *askServer) count(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.asked[name]
}

// handshakeSlow is handshake with time for an on-demand certificate to be
// obtained within it.
func handshakeSlow(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.ConnectionState(), nil
}

// TestOnDemand obtains certificates from Pebble at the first handshake for
// names the ask endpoint allows, through a wildcard site and a catch-all,
// and refuses the others without ever ordering one.
func TestOnDemand(t *testing.T) {
	env := newACMEEnv(t, 0)
	ask := newAskServer(t, "allowed.example.com", "any.example.org")
	cfg := env.config(t,
		Site{Names: []string{"*.example.com"}, OnDemand: true},
		Site{CatchAll: true, OnDemand: true},
	)
	cfg.OnDemandAsk = ask.url + "/check?token=secret"
	m, addr := env.start(t, cfg)
	if !m.UsesACME() {
		t.Error("UsesACME() = false with on-demand ACME sites")
	}
	roots := env.ca.IssuingRoots()

	for _, name := range []string{"allowed.example.com", "any.example.org"} {
		t.Run("allowed "+name, func(t *testing.T) {
			st, err := handshakeSlow(addr, &tls.Config{ServerName: name, RootCAs: roots})
			if err != nil {
				t.Fatalf("first handshake: %v", err)
			}
			if got := st.PeerCertificates[0].DNSNames; !slices.Equal(got, []string{name}) {
				t.Errorf("served %q, want [%s]", got, name)
			}
			again, err := handshakeSlow(addr, &tls.Config{ServerName: name, RootCAs: roots})
			if err != nil {
				t.Fatalf("second handshake: %v", err)
			}
			if again.PeerCertificates[0].SerialNumber.Cmp(st.PeerCertificates[0].SerialNumber) != 0 {
				t.Error("second handshake got another certificate")
			}
			if n := env.ca.Orders(name); n != 1 {
				t.Errorf("Pebble got %d orders for %s, want 1", n, name)
			}
			if n := ask.count(name); n != 1 {
				t.Errorf("ask endpoint asked %d times about %s, want 1 (the cached certificate needs no asking)", n, name)
			}
		})
	}

	for _, name := range []string{"denied.example.com", "nothing.example.org"} {
		t.Run("denied "+name, func(t *testing.T) {
			if _, err := handshakeSlow(addr, &tls.Config{ServerName: name, RootCAs: roots}); err == nil {
				t.Fatal("handshake succeeded for a name the ask endpoint refuses")
			}
			if n := env.ca.Orders(name); n != 0 {
				t.Errorf("Pebble got %d orders for the refused %s, want 0", n, name)
			}
			if n := ask.count(name); n != 1 {
				t.Errorf("ask endpoint asked %d times about %s, want 1", n, name)
			}
			denials := env.logs.FilterMessage("on-demand certificate denied").FilterField(zap.String("identifier", name))
			if denials.Len() != 1 {
				t.Errorf("want one denial logged for %s, got %d", name, denials.Len())
			}
		})
	}

	ask.mu.Lock()
	for _, q := range ask.queries {
		if q.Get("token") != "secret" {
			t.Errorf("ask query %v lost the URL's own query", q)
		}
	}
	ask.mu.Unlock()
	if got := testutil.ToFloat64(m.metrics.onDemand.WithLabelValues("denied")); got != 2 {
		t.Errorf("denials counted: %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.metrics.onDemand.WithLabelValues("allowed")); got != 2 {
		t.Errorf("allowed decisions counted: %v, want 2", got)
	}
}

// TestOnDemandDecision checks the decision function alone: only the site's
// names, and only with the ask endpoint's 200.
func TestOnDemandDecision(t *testing.T) {
	ask := newAskServer(t, "a.example.com", "exact.example.net", "a.b.example.com", "example.com", "other.example.net")
	m := newTestManager(t, Config{
		DataDir:     t.TempDir(),
		Sites:       []Site{{Names: []string{"*.example.com", "exact.example.net"}, OnDemand: true}},
		ACME:        ACME{CA: "https://127.0.0.1:1/dir"}, // never contacted
		OnDemandAsk: ask.url,
	})
	u := m.issuanceFor("a.example.com")
	if !u.key.onDemand || !u.key.acme {
		t.Fatalf("a.example.com is routed to %+v, want the on-demand ACME issuance", u.key)
	}
	if m.issuanceFor("exact.example.net") != u {
		t.Fatal("exact.example.net is not routed to the on-demand issuance")
	}
	decide := u.magic.OnDemand.DecisionFunc
	for name, want := range map[string]bool{
		"a.example.com":     true,
		"A.Example.COM":     true,
		"exact.example.net": true,
		"a.b.example.com":   false, // a wildcard covers one label
		"example.com":       false,
		"other.example.net": false,
	} {
		asked := ask.count(strings.ToLower(name))
		err := decide(t.Context(), name)
		if (err == nil) != want {
			t.Errorf("decide(%s) = %v, want allowed=%v", name, err, want)
		}
		if !want && ask.count(strings.ToLower(name)) != asked {
			t.Errorf("decide(%s) asked the endpoint about a name the site does not have", name)
		}
	}

	for _, tt := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }},
		{"redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) }},
		{"204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }},
	} {
		t.Run("ask answers "+tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			m := newTestManager(t, Config{
				DataDir:     t.TempDir(),
				Sites:       []Site{{Names: []string{"*.example.com"}, OnDemand: true}},
				ACME:        ACME{CA: "https://127.0.0.1:1/dir"},
				OnDemandAsk: srv.URL,
			})
			if err := m.issuanceFor("a.example.com").magic.OnDemand.DecisionFunc(t.Context(), "a.example.com"); err == nil {
				t.Error("allowed")
			}
		})
	}
	t.Run("ask endpoint unreachable", func(t *testing.T) {
		m := newTestManager(t, Config{
			DataDir:     t.TempDir(),
			Sites:       []Site{{Names: []string{"*.example.com"}, OnDemand: true}},
			ACME:        ACME{CA: "https://127.0.0.1:1/dir"},
			OnDemandAsk: "http://" + deadAddr(t) + "/check?token=secret",
		})
		err := m.issuanceFor("a.example.com").magic.OnDemand.DecisionFunc(t.Context(), "a.example.com")
		if err == nil {
			t.Fatal("allowed")
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("denial %q shows the ask URL's query", err)
		}
	})
}

// TestOnDemandLocal issues local-CA certificates on demand through a
// catch-all ("tls internal { on_demand }" on ":443"), and, with IssuerAuto,
// sends public names to ACME and the rest to the local CA.
func TestOnDemandLocal(t *testing.T) {
	ask := newAskServer(t, "dev.internal")
	core, logs := observer.New(zap.InfoLevel)
	m, err := New(Config{
		DataDir:     t.TempDir(),
		Sites:       []Site{{Names: []string{"localhost"}}, {CatchAll: true, OnDemand: true, Issuer: IssuerLocal}},
		OnDemandAsk: ask.url,
	}, acmetest.Logger(t, zap.WarnLevel, core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if m.UsesACME() {
		t.Error("UsesACME() = true for a local catch-all")
	}
	addr := serveTLS(t, m.TLSConfig())
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	st, err := handshakeSlow(addr, &tls.Config{ServerName: "dev.internal", RootCAs: m.LocalCA().RootPool()})
	if err != nil {
		t.Fatalf("allowed name: %v", err)
	}
	if got := st.PeerCertificates[0].DNSNames; !slices.Equal(got, []string{"dev.internal"}) {
		t.Errorf("served %q, want [dev.internal]", got)
	}
	if _, err := handshakeSlow(addr, &tls.Config{ServerName: "other.internal", RootCAs: m.LocalCA().RootPool()}); err == nil {
		t.Error("handshake succeeded for a name the ask endpoint refuses")
	}
	if logs.FilterMessage("on-demand certificate denied").Len() != 1 {
		t.Errorf("want one denial logged, got %v", logs.All())
	}

	auto := newTestManager(t, Config{
		DataDir:     t.TempDir(),
		Sites:       []Site{{CatchAll: true, OnDemand: true}},
		ACME:        ACME{CA: "https://127.0.0.1:1/dir"},
		OnDemandAsk: ask.url,
	})
	if u := auto.issuanceFor("shop.example.com"); !u.key.acme || !u.key.onDemand {
		t.Errorf("catch-all routes a public name to %+v, want on-demand ACME", u.key)
	}
	if u := auto.issuanceFor("dev.internal"); u.key.acme || !u.key.onDemand {
		t.Errorf("catch-all routes an internal name to %+v, want the on-demand local CA", u.key)
	}
	if u := auto.issuanceFor(""); u != auto.plan().issuances[0] {
		t.Error("no SNI is not routed to the local CA's issuance")
	}
}

// deadAddr returns a loopback address nothing listens on: connecting to
// it is refused.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
