package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
)

// fleetSite is a site on an ephemeral loopback port, with quic_lb server
// ID sid, handshake_rate 0 (every connection without a valid token proves
// its address with a Retry) and cookie stickiness over the upstreams.
func fleetSite(sid string, upstreams ...string) string {
	return `{
	default_bind 127.0.0.1
	handshake_rate 0
	quic_lb {
		server_id ` + sid + `
		nonce_len 8
	}
}
localhost:0 {
	reverse_proxy ` + strings.Join(upstreams, " ") + ` {
		lb_policy cookie lb
	}
}
`
}

// trustBoth is a client TLS config that trusts the local CAs of both
// instances (each has its own data directory), with a session cache.
func trustBoth(a, b *harness) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.certs.LocalCA().RootPEM())
	pool.AppendCertsFromPEM(b.certs.LocalCA().RootPEM())
	return &tls.Config{RootCAs: pool, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
}

// TestSharedKeys (issue 15): two instances with one shared_keys secret
// finish what the other started: a TLS session from one resumes on the
// other (TCP and QUIC, with 0-RTT), a NEW_TOKEN token from one spares a Retry at the
// other, a cookie from one names the same backend at the other. Instances
// with different secrets do none of it.
func TestSharedKeys(t *testing.T) {
	apps := make([]string, 4)
	for i := range apps {
		apps[i] = startApp(t, "app"+strconv.Itoa(i), nil).Addr()
	}
	secret := bytes.Repeat([]byte{7}, 32)
	a := startProxyWith(t, fleetSite("01", apps...), nil, zap.NewNop(), Options{SharedSecret: secret})
	b := startProxyWith(t, fleetSite("02", apps...), nil, zap.NewNop(), Options{SharedSecret: secret})
	other := startProxyWith(t, fleetSite("03", apps...), nil, zap.NewNop(), Options{SharedSecret: bytes.Repeat([]byte{8}, 32)})
	// Where a client of a goes next: b shares a's secret, other does not.
	peers := []struct {
		to   *harness
		want bool
	}{{b, true}, {other, false}}
	// ticketFromA leaves a session ticket of a in conf's cache: it has
	// arrived by the time a request is answered.
	ticketFromA := func(t *testing.T, conf *tls.Config) {
		c := a.dialWith(t, a.addr, conf)
		seen(t, c, a, "first")
		c.Close()
	}

	t.Run("resumption over TCP", func(t *testing.T) {
		for _, tc := range peers {
			conf := trustBoth(a, tc.to)
			dialTCP(t, a, conf)
			if got := dialTCP(t, tc.to, conf); got != tc.want {
				t.Errorf("resumed at the other instance: %v, want %v", got, tc.want)
			}
		}
	})
	t.Run("resumption over QUIC", func(t *testing.T) {
		for _, tc := range peers {
			conf := trustBoth(a, tc.to)
			ticketFromA(t, conf)
			c := tc.to.dialWith(t, tc.to.addr, conf)
			if got := c.ConnectionState().TLS.DidResume; got != tc.want {
				t.Errorf("resumed at the other instance: %v, want %v", got, tc.want)
			}
			c.Close()
		}
	})
	t.Run("0-RTT", func(t *testing.T) {
		for _, tc := range peers {
			conf := trustBoth(a, tc.to)
			ticketFromA(t, conf)
			early := conf.Clone()
			early.NextProtos = []string{http3.NextProtoH3}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, err := quic.DialAddrEarly(ctx, tc.to.addr, early, &quic.Config{})
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			req, _ := http.NewRequestWithContext(ctx, http3.MethodGet0RTT, "https://localhost:"+itoa(tc.to.port)+"/", nil)
			resp, err := (&http3.Transport{}).NewClientConn(conn).RoundTrip(req)
			switch {
			case err == nil:
				resp.Body.Close()
				<-conn.HandshakeComplete()
				if got := conn.ConnectionState().Used0RTT; got != tc.want || resp.StatusCode != http.StatusOK {
					t.Errorf("0-RTT accepted at the other instance: %v, want %v (status %d)", got, tc.want, resp.StatusCode)
				}
			case errors.Is(err, quic.Err0RTTRejected):
				if tc.want {
					t.Errorf("0-RTT rejected at an instance with the same secret: %v", err)
				}
			default:
				t.Fatal(err)
			}
			conn.CloseWithError(0, "")
			cancel()
		}
	})
	t.Run("address validation token", func(t *testing.T) {
		for _, tc := range []struct {
			to      *harness
			retries float64
		}{{b, 0}, {other, 1}} { // other: at least one
			conf := trustBoth(a, tc.to)
			store := quic.NewLRUTokenStore(4, 4)
			c := dialTokens(t, a.addr, conf, store)
			seen(t, c, a, "token") // the NEW_TOKEN frame has arrived by the time a request is answered
			c.Close()
			before := retries(tc.to)
			c = dialTokens(t, tc.to.addr, conf, store)
			c.Close()
			if got := retries(tc.to) - before; got != tc.retries && (tc.retries == 0 || got < tc.retries) {
				t.Errorf("Retries at the other instance: %v, want %v", got, tc.retries)
			}
		}
	})
	t.Run("cookie", func(t *testing.T) {
		for _, tc := range peers {
			conf := trustBoth(a, tc.to)
			agree := 0
			const n = 8
			for range n {
				c := a.dialWith(t, a.addr, conf)
				resp, body := do(t, c, "GET", "https://localhost:"+itoa(a.port)+"/", nil, nil)
				c.Close()
				var cookie string
				for _, ck := range resp.Cookies() {
					if ck.Name == "lb" {
						cookie = ck.Value
					}
				}
				if cookie == "" {
					t.Fatal("no lb cookie")
				}
				home := appOf(t, body)
				c = tc.to.dialWith(t, tc.to.addr, conf)
				_, body = do(t, c, "GET", "https://localhost:"+itoa(tc.to.port)+"/", nil, map[string]string{"Cookie": "lb=" + cookie})
				c.Close()
				if appOf(t, body) == home {
					agree++
				}
			}
			if tc.want && agree != n || !tc.want && agree == n {
				t.Errorf("%d of %d cookies brought the client to the same backend at the other instance (same key: %v)", agree, n, tc.want)
			}
		}
	})
}

func appOf(t *testing.T, body string) string {
	t.Helper()
	var r legacyapp.Request
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	return r.App
}

func retries(h *harness) float64 {
	return testutil.ToFloat64(h.srv.metrics.admission.WithLabelValues(admitRetryRate))
}

// dialTCP does a TLS handshake with h's TCP port and reports whether it
// resumed a session.
func dialTCP(t *testing.T, h *harness, conf *tls.Config) bool {
	t.Helper()
	c, err := tls.Dial("tcp", h.srv.Listeners()[0].TCP[0].String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// TLS 1.3 tickets come after the handshake: a request and its
	// answer make sure the client has read them.
	c.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	return c.ConnectionState().DidResume
}

// dialTokens opens an HTTP/3 connection whose client keeps address
// validation tokens in store.
func dialTokens(t *testing.T, addr string, conf *tls.Config, store quic.TokenStore) *h3client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h3client.Dial(ctx, addr, conf, &quic.Config{TokenStore: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// retarget is a UDP forwarder for one client whose server can be swapped:
// the instance behind an address changes, as when a balancer's backend
// dies and another takes its packets.
type retarget struct {
	front, back *net.UDPConn
	target      atomic.Pointer[net.UDPAddr]
	client      atomic.Pointer[net.UDPAddr]
}

func newRetarget(t *testing.T, to string) *retarget {
	t.Helper()
	r := &retarget{}
	var err error
	if r.front, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if r.back, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	r.to(t, to)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 2048)
		for {
			n, from, err := r.front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r.client.Store(from)
			r.back.WriteToUDP(buf[:n], r.target.Load())
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 2048)
		for {
			n, from, err := r.back.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if c := r.client.Load(); c != nil && sameUDPAddr(from, r.target.Load()) {
				r.front.WriteToUDP(buf[:n], c)
			}
		}
	}()
	t.Cleanup(func() { r.front.Close(); r.back.Close(); <-done; <-done })
	return r
}

func sameUDPAddr(a, b *net.UDPAddr) bool {
	x, y := a.AddrPort(), b.AddrPort()
	return x.Addr().Unmap() == y.Addr().Unmap() && x.Port() == y.Port()
}

func (r *retarget) to(t *testing.T, addr string) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r.target.Store(ua)
}

// TestSharedResetKeyIsPerServerID (issue 15, the trap of shared keys): when
// the instance that owned a connection is gone and its packets reach its
// successor (the same server ID and secret), the client gets a valid
// stateless reset at once; when they reach another instance of the fleet,
// the reset is not valid for it, and the client's connection is not ended
// by a stranger (it times out, or recovers if the routing does).
func TestSharedResetKeyIsPerServerID(t *testing.T) {
	app := startApp(t, "app", nil).Addr()
	secret := bytes.Repeat([]byte{9}, 32)
	for _, tc := range []struct {
		name      string
		successor string // server ID of the instance that gets the packets
		reset     bool
	}{{"same server ID", "01", true}, {"another server ID", "02", false}} {
		t.Run(tc.name, func(t *testing.T) {
			owner := startProxyWith(t, fleetSite("01", app), nil, zap.NewNop(), Options{SharedSecret: secret})
			next := startProxyWith(t, fleetSite(tc.successor, app), nil, zap.NewNop(), Options{SharedSecret: secret})
			relay := newRetarget(t, owner.addr)
			conf := trustBoth(owner, next)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := h3client.Dial(ctx, relay.front.LocalAddr().String(), conf, &quic.Config{MaxIdleTimeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			seen(t, c, owner, "before")
			// The balancer sends the client's packets to next, and the
			// owner dies (what it says on the way out reaches no one).
			relay.to(t, next.addr)
			owner.srv.Close()
			start := time.Now()
			rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer rcancel()
			req, _ := http.NewRequestWithContext(rctx, "GET", "https://localhost/", nil)
			_, err = c.RoundTrip(req)
			took := time.Since(start)
			var sr *quic.StatelessResetError
			gotReset := errors.As(err, &sr)
			if gotReset != tc.reset {
				t.Fatalf("after %v: %v (a stateless reset: %v, want %v)", took, err, gotReset, tc.reset)
			}
			if tc.reset && took > time.Second {
				t.Errorf("the reset took %v", took)
			}
			t.Logf("%s: the client's connection ended after %v: %v", tc.name, took.Round(time.Millisecond), err)
		})
	}
}
