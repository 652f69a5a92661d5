// Package acmetest runs a real ACME CA, Pebble v2.10.1, inside a test
// process, for tests of code that obtains certificates with ACME.
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it stands in for the public CA behind tlsmgr. Only tests import it, so
// Pebble never enters the roamgate binary.
//
// Everything listens on 127.0.0.1 on ports of the system's choosing: the ACME
// directory (HTTPS, with a certificate of its own; see [CA.ClientRoots]) and
// a DNS stub that answers every A query with 127.0.0.1 and no AAAA, so
// Pebble's validation authority dials the test's own challenge listeners on
// 127.0.0.1 whatever the name. The test opens those listeners first and
// passes their ports in [Options].
//
// Pebble's constructors are not a stable API: this package pins the
// go.mod version (v2.10.1) and must be revisited when it changes.
package acmetest

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Paths of Pebble's ACME API (wfe.go) that the CA looks into.
const (
	directoryPath = "/dir"       // wfe.DirectoryPath
	newOrderPath  = "/order-plz" // wfe.newOrderPath, unexported
)

// Pebble reads these environment variables in va.New and wfe.New. Start
// sets them for the test's duration (t.Setenv), which rules out t.Parallel
// in tests that call Start.
var pebbleEnv = []struct{ name, value string }{
	{"PEBBLE_VA_NOSLEEP", "1"},      // no random 0-5 s sleep before each validation
	{"PEBBLE_WFE_NONCEREJECT", "0"}, // no rejection of 5% of good nonces
	{"PEBBLE_AUTHZREUSE", "0"},      // every order validates its challenges anew
}

// Options configures a CA.
type Options struct {
	// HTTPPort and TLSPort are the ports on 127.0.0.1 that Pebble's
	// validation authority dials to check HTTP-01 (plain HTTP) and
	// TLS-ALPN-01 (TLS, ALPN acme-tls/1) challenges: the test's own
	// listeners, opened before Start. 0 when the test does not use that
	// challenge type (its validations then fail).
	HTTPPort, TLSPort int

	// Validity is the lifetime of issued leaf certificates, in whole
	// seconds, at least 2s. Zero means Pebble's default, 90 days.
	Validity time.Duration
}

// CA is an in-process Pebble ACME server. Create it with Start, or with New
// and then Serve when the challenge ports are known only after the
// directory URL is needed; it stops when the test ends. Its methods are
// safe for concurrent use.
type CA struct {
	dirURL        string
	clientRootPEM []byte
	srv           *httptest.Server
	lg            *log.Logger

	pebble atomic.Pointer[pebble] // set by Serve
	down   atomic.Bool            // SetDown

	mu     sync.Mutex     // guards the following
	orders map[string]int // identifier → new-order requests naming it
}

// pebble is the CA's Pebble instance, published whole by Serve.
type pebble struct {
	handler      http.Handler
	store        *db.MemoryStore // see aliasReplaced
	issuingRoots *x509.CertPool
}

// Start starts a CA (New, then Serve) that is shut down, with its DNS stub
// and validation workers, when the test ends. It calls t.Setenv, so the
// test must not be parallel.
func Start(t testing.TB, opts Options) *CA {
	t.Helper()
	c := New(t)
	c.Serve(t, opts)
	return c
}

// New starts the CA's ACME directory server: its URL and TLS roots are
// fixed from here on, so they can go into the configuration of a server
// whose challenge listeners are not open yet. Until Serve, every ACME
// request gets 503.
func New(t testing.TB) *CA {
	t.Helper()
	c := &CA{orders: make(map[string]int), lg: log.New(io.Discard, "", 0)} // Pebble logs every step; its goroutines may outlive t.Log
	c.srv = httptest.NewUnstartedServer(c.middleware(http.HandlerFunc(c.servePebble)))
	c.srv.Config.ErrorLog = c.lg // "TLS handshake error" from clients that hang up
	// TLS is required: Pebble builds https:// URLs only when r.TLS is set.
	c.srv.StartTLS()
	t.Cleanup(c.srv.Close)
	c.dirURL = c.srv.URL + directoryPath
	c.clientRootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.srv.Certificate().Raw})
	return c
}

// Serve builds Pebble with the challenge ports of opts and starts answering
// ACME requests. It calls t.Setenv, so the test must not be parallel.
func (c *CA) Serve(t testing.TB, opts Options) {
	t.Helper()
	if opts.Validity != 0 && opts.Validity < 2*time.Second {
		t.Fatalf("acmetest: validity %s is shorter than 2s", opts.Validity)
	}
	if c.pebble.Load() != nil {
		t.Fatal("acmetest: Serve called twice")
	}
	for _, e := range pebbleEnv {
		t.Setenv(e.name, e.value)
	}
	store := db.NewMemoryStore()
	caImpl := ca.New(c.lg, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "acmetest", ValidityPeriod: uint64(opts.Validity / time.Second)},
	})
	resolver := startDNS(t)
	vaImpl := va.New(c.lg, opts.HTTPPort, opts.TLSPort, false, resolver, store)
	// The server closes first, so no handler can submit a validation to the
	// stopped worker. (httptest.Server.Close may run twice.)
	t.Cleanup(func() {
		c.srv.Close()
		if err := stopVA(vaImpl); err != nil {
			t.Errorf("acmetest: %v", err)
		}
	})
	front := wfe.New(c.lg, store, vaImpl, caImpl, []string{"pebble.letsencrypt.org"},
		false, false, // strict, requireEAB
		0, 0) // no Retry-After on authorizations and orders: the client polls at its own pace
	roots := x509.NewCertPool()
	roots.AddCert(caImpl.GetRootCert(0).Cert)
	c.pebble.Store(&pebble{handler: front.Handler(), store: store, issuingRoots: roots})
}

// servePebble hands a request to Pebble, once Serve has built it.
func (c *CA) servePebble(w http.ResponseWriter, r *http.Request) {
	p := c.pebble.Load()
	if p == nil {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"type":"urn:ietf:params:acme:error:serverInternal","detail":"acmetest: not serving yet","status":503}`)
		return
	}
	p.handler.ServeHTTP(w, r)
}

// DirectoryURL returns the ACME directory URL, https://127.0.0.1:PORT/dir.
func (c *CA) DirectoryURL() string { return c.dirURL }

// ClientRoots returns a new pool with the root that the ACME directory's own
// TLS certificate chains to, for ACME clients (certmagic's
// ACMEIssuer.TrustedRoots).
func (c *CA) ClientRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.clientRootPEM)
	return pool
}

// ClientRootsFile writes ClientRoots as a PEM file in a directory of the
// test's and returns its path, as the Roamfile's acme_ca_root names one.
func (c *CA) ClientRootsFile(t testing.TB) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "acme-ca-roots.pem")
	if err := os.WriteFile(name, c.clientRootPEM, 0o600); err != nil {
		t.Fatalf("acmetest: write client roots: %v", err)
	}
	return name
}

// IssuingRoots returns a new pool with the root of the certificates the CA
// issues, to verify served certificates. Pebble creates a new root each
// time a CA starts.
func (c *CA) IssuingRoots() *x509.CertPool {
	p := c.pebble.Load()
	if p == nil {
		panic("acmetest: IssuingRoots before Serve")
	}
	return p.issuingRoots.Clone()
}

// SetDown simulates a CA outage: while down is true every ACME request gets
// 503 Service Unavailable with an RFC 7807 problem document whose detail is
// "acmetest: CA is down".
func (c *CA) SetDown(down bool) { c.down.Store(down) }

// Orders returns how many new-order requests named identifier (a DNS name
// or IP address), whether or not Pebble accepted them. Requests refused
// while the CA was down are not counted.
func (c *CA) Orders(identifier string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.orders[identifier]
}

// downProblem is what every request gets while the CA is down.
const downProblem = `{"type":"urn:ietf:params:acme:error:serverInternal","detail":"acmetest: CA is down","status":503}`

// middleware wraps Pebble's handler: it refuses everything while the CA is
// down and counts the identifiers of new orders.
func (c *CA) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.down.Load() {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, downProblem)
			return
		}
		if r.Method == http.MethodPost && r.URL.Path == newOrderPath {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, "acmetest: read request: "+err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			c.newOrder(body)
		}
		next.ServeHTTP(w, r)
	})
}

// newOrder looks into a new-order request before Pebble handles it: a
// flattened JWS (RFC 8555 §6.2) whose payload is the order (RFC 8555 §7.4).
// It counts the identifiers and works around Pebble's lookup of the
// certificate a renewal replaces (aliasReplaced). Requests it cannot read
// are left for Pebble to refuse.
func (c *CA) newOrder(body []byte) {
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return
	}
	var order struct {
		Identifiers []struct {
			Value string `json:"value"`
		} `json:"identifiers"`
		Replaces string `json:"replaces"`
	}
	if json.Unmarshal(payload, &order) != nil {
		return
	}
	if p := c.pebble.Load(); order.Replaces != "" && p != nil {
		c.aliasReplaced(p.store, order.Replaces)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range order.Identifiers {
		c.orders[strings.ToLower(id.Value)]++
	}
}

// aliasReplaced works around a Pebble v2.10.1 bug. A renewal names the
// certificate it replaces by ARI certificate ID (RFC 9773 §4.1), whose
// serial is the DER integer's bytes; Pebble looks the old order up by their
// hex, but filed it under the hex of big.Int.Bytes(). The two differ when
// the DER form has a leading zero byte (a serial with its top bit set: 1 in
// 256 of Pebble's 63-bit serials), and the renewal then fails with "could
// not find an order for the given certificate". certmagic sends the ID with
// every renewal, so this files the order under the DER form too, through
// reflect (the index is unexported), under the store's own lock.
func (c *CA) aliasReplaced(store *db.MemoryStore, certID string) {
	_, serial64, ok := strings.Cut(certID, ".")
	if !ok {
		return
	}
	der, err := base64.RawURLEncoding.DecodeString(serial64)
	if err != nil || len(der) < 2 || der[0] != 0 {
		return
	}
	padded, bare := hex.EncodeToString(der), hex.EncodeToString(new(big.Int).SetBytes(der).Bytes())
	f := reflect.ValueOf(store).Elem().FieldByName("ordersByIssuedSerial")
	if !f.IsValid() || f.Kind() != reflect.Map {
		return // a Pebble without the field: nothing to work around
	}
	index := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
	store.Lock()
	defer store.Unlock()
	if order := index.MapIndex(reflect.ValueOf(bare)); order.IsValid() && !index.MapIndex(reflect.ValueOf(padded)).IsValid() {
		index.SetMapIndex(reflect.ValueOf(padded), order)
	}
}

// startDNS starts the DNS stub over TCP (Pebble's VA queries a custom
// resolver over TCP) and returns its address. It answers every A question
// with 127.0.0.1 and every other question, AAAA included, with no records:
// the VA dials the first address it resolves, and an AAAA answer would
// send it to [::1], where the test's listeners are not.
func startDNS(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("acmetest: dns stub: %v", err)
	}
	started := make(chan struct{})
	srv := &dns.Server{
		Listener:          ln,
		Handler:           dns.HandlerFunc(answerLoopback),
		NotifyStartedFunc: func() { close(started) },
	}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("acmetest: dns stub: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Shutdown(); err != nil {
			t.Errorf("acmetest: dns stub shutdown: %v", err)
		}
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Error("acmetest: dns stub did not exit within 1s of shutdown")
		}
	})
	return ln.Addr().String()
}

// answerLoopback answers A questions with 127.0.0.1 and others with nothing.
func answerLoopback(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	for _, q := range req.Question {
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET},
				A:   net.IPv4(127, 0, 0, 1),
			})
		}
	}
	_ = w.WriteMsg(m)
}

// stopVA ends the goroutine va.New starts: it ranges over the VA's task
// channel, which Pebble never closes (its VA lives as long as its process).
// The channel is unexported, so it is closed through reflect; this must run
// only once no handler can submit a task any more (after the server closed).
func stopVA(v *va.VAImpl) error {
	f := reflect.ValueOf(v).Elem().FieldByName("tasks")
	if !f.IsValid() || f.Kind() != reflect.Chan {
		return errors.New("pebble's va.VAImpl has no tasks channel any more; update stopVA for the new Pebble version")
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Close()
	return nil
}
