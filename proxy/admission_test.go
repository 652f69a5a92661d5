package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"
)

// admissionFor is a Roamfile listening on both loopback addresses, with
// global options.
func admissionFor(options, upstream string) string {
	return "{\n\tdefault_bind 127.0.0.1 ::1\n" + options + "\n}\nlocalhost:0 {\n\treverse_proxy " + upstream + "\n}\n"
}

// udpAddrOf is the harness's UDP listener of the family of ip.
func udpAddrOf(t *testing.T, h *harness, ip string) *net.UDPAddr {
	t.Helper()
	want := netip.MustParseAddr(ip)
	for _, a := range h.srv.Listeners()[0].UDP {
		if ua := a.(*net.UDPAddr); ua.AddrPort().Addr().Unmap() == want {
			return ua
		}
	}
	t.Fatalf("no UDP listener on %s: %v", ip, h.srv.Listeners()[0].UDP)
	return nil
}

// quicDialer dials bare QUIC connections from one socket on local.
type quicDialer struct {
	tr  *quic.Transport
	tls *tls.Config
}

func newQUICDialer(t *testing.T, h *harness, local string) *quicDialer {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(local)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close(); udp.Close() })
	tlsConf := h.clientTLS()
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	return &quicDialer{tr: tr, tls: tlsConf}
}

func (d *quicDialer) dial(to *net.UDPAddr) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.tr.Dial(ctx, to, d.tls, &quic.Config{})
}

func refused(err error) bool {
	var te *quic.TransportError
	return errors.As(err, &te) && te.ErrorCode == quic.ConnectionRefused
}

func (h *harness) admissions(decision string) float64 {
	return testutil.ToFloat64(h.srv.metrics.admission.WithLabelValues(decision))
}

// TestHandshakeFloodFromOneAddress (issue 12): one address opens
// connections as fast as it can. Past its rate (and bursts) its attempts
// first get a Retry, then, proven, are refused (CONNECTION_REFUSED) before
// any handshake state exists; a client on another address connects and
// is served throughout, with no Retry of its own.
func TestHandshakeFloodFromOneAddress(t *testing.T) {
	const perIP, attempts, workers = 20, 300, 16
	app := startApp(t, "app", nil)
	h := startProxy(t, admissionFor("\thandshake_rate_per_ip "+strconv.Itoa(perIP), app.Addr()), nil)
	flood := newQUICDialer(t, h, "::1")
	target := udpAddrOf(t, h, "::1")
	before := heapInUse()

	var admitted, refusals, others atomic.Int64
	var mu sync.Mutex
	var conns []*quic.Conn
	var otherErr error
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= attempts {
				c, err := flood.dial(target)
				switch {
				case err == nil:
					admitted.Add(1)
					mu.Lock()
					conns = append(conns, c) // held open, as a flood would
					mu.Unlock()
				case refused(err):
					refusals.Add(1)
				default:
					others.Add(1)
					mu.Lock()
					otherErr = err
					mu.Unlock()
				}
			}
		})
	}
	// Meanwhile, a client on the other address.
	legit := h.dial(t)
	for range 3 {
		if status, _, err := fetch(t, legit, "https://localhost:"+strconv.Itoa(h.port)+"/"); status != 200 || err != nil {
			t.Fatalf("the other client during the flood: %d %v", status, err)
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	grown := heapInUse() - before
	t.Logf("%d attempts in %v: %d admitted, %d refused, %d other errors; %d Retries; heap grew %.1f MiB (%.0f KiB per admitted connection)",
		attempts, elapsed.Round(time.Millisecond), admitted.Load(), refusals.Load(), others.Load(), int(h.admissions(admitRetryIP)),
		float64(grown)/(1<<20), float64(grown)/1024/float64(max(admitted.Load(), 1)))

	if others.Load() > 0 {
		t.Fatalf("%d attempts failed otherwise, e.g. %v", others.Load(), otherErr)
	}
	// Two buckets of 2×perIP, refilled at perIP a second each.
	if bound := int64(4*perIP) + int64(2*perIP*elapsed.Seconds()) + 1; admitted.Load() > bound {
		t.Fatalf("%d admitted in %v, want at most %d", admitted.Load(), elapsed, bound)
	}
	if refusals.Load() == 0 || float64(refusals.Load()) > h.admissions(admitRefusedIP) {
		t.Fatalf("%d refusals seen, %v counted", refusals.Load(), h.admissions(admitRefusedIP))
	}
	if h.admissions(admitRetryIP) == 0 {
		t.Fatal("no Retry before refusing")
	}
	if len(h.logged("new connection refused")) == 0 {
		t.Fatal("no log line for the refusals")
	}
	// The other address is untouched: a new connection from it now.
	after := h.dial(t)
	if status, _, err := fetch(t, after, "https://localhost:"+strconv.Itoa(h.port)+"/"); status != 200 || err != nil {
		t.Fatalf("a new client after the flood: %d %v", status, err)
	}
	for _, c := range conns {
		c.CloseWithError(0, "")
	}
	legit.Close()
	after.Close()
	eventually(t, "every session closed", func() bool { return testutil.ToFloat64(h.srv.metrics.sessionsActive) == 0 })
}

// TestRetryAboveTheHandshakeRate: over handshake_rate new connections a
// second, clients prove their address with a Retry first, and connect;
// handshake_rate 0 sends every new connection a Retry.
func TestRetryAboveTheHandshakeRate(t *testing.T) {
	for _, tc := range []struct {
		rate, dials int
		retries     func(float64) bool
	}{
		// Counted per Initial packet: a first flight is one or two
		// packets (two with a post-quantum key share), each answered.
		{rate: 0, dials: 5, retries: func(n float64) bool { return n >= 5 && n <= 3*5 }},
		{rate: 3, dials: 20, retries: func(n float64) bool { return n >= 1 }},
	} {
		t.Run(fmt.Sprint(tc.rate), func(t *testing.T) {
			app := startApp(t, "app", nil)
			h := startProxy(t, admissionFor("\thandshake_rate "+strconv.Itoa(tc.rate), app.Addr()), nil)
			d := newQUICDialer(t, h, "127.0.0.1")
			to := udpAddrOf(t, h, "127.0.0.1")
			for i := range tc.dials {
				c, err := d.dial(to)
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				c.CloseWithError(0, "")
			}
			if n := h.admissions(admitRetryRate); !tc.retries(n) {
				t.Fatalf("%v Retries for %d connections at handshake_rate %d", n, tc.dials, tc.rate)
			}
		})
	}
}

// TestAdmissionBuckets: the per-address buckets, on a fake clock: an IPv6
// /64 is one client; unproven attempts over the rate get a Retry, proven
// ones are refused, and both refill; a full table sends unknown addresses
// a Retry until a sweep frees it.
func TestAdmissionBuckets(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	counted := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"decision"})
	a := newAdmission(1_000_000, 1, counted, &lazyLogger{base: zap.NewNop()})
	a.now = func() time.Time { return clock }
	udp := func(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	proven := func(s string) error {
		_, err := a.connContext(context.Background(), &quic.ClientInfo{RemoteAddr: udp(s), AddrVerified: true})
		return err
	}

	// Burst 2: two unproven attempts pass, the third gets a Retry, from
	// any address of the /64.
	for i, addr := range []string{"[2001:db8::1]:1", "[2001:db8::2]:2", "[2001:db8::3]:3"} {
		if retry := a.verifySourceAddress(udp(addr)); retry != (i == 2) {
			t.Fatalf("attempt %d from %s: retry %v", i, addr, retry)
		}
	}
	if a.verifySourceAddress(udp("[2001:db8:0:1::1]:1")) {
		t.Fatal("another /64 shares the bucket")
	}
	for i := range 3 {
		if err := proven("[2001:db8::9]:9"); (err != nil) != (i == 2) {
			t.Fatalf("proven attempt %d: %v", i, err)
		}
	}
	if _, err := a.connContext(context.Background(), &quic.ClientInfo{RemoteAddr: udp("[2001:db8::9]:9")}); err != nil {
		t.Fatalf("an unproven attempt refused: %v", err) // it was given its chance at Retry
	}
	clock = clock.Add(time.Second)
	if err := proven("[2001:db8::9]:9"); err != nil {
		t.Fatalf("a second later: %v", err)
	}

	// A full table: new addresses get a Retry until the buckets refill
	// and a sweep forgets them.
	a = newAdmission(1_000_000, 1, counted, &lazyLogger{base: zap.NewNop()})
	a.now = func() time.Time { return clock }
	for i := range admitMaxTracked {
		if a.verifySourceAddress(udp(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1).String())) {
			t.Fatalf("filling the table: address %d got a Retry", i)
		}
	}
	if !a.verifySourceAddress(udp("192.0.2.1:1")) {
		t.Fatal("an address past a full table went without a Retry")
	}
	clock = clock.Add(10 * time.Second)
	if a.verifySourceAddress(udp("192.0.2.1:1")) {
		t.Fatal("the sweep made no room")
	}
	if n := testutil.ToFloat64(counted.WithLabelValues(admitRetryIP)); n != 2 {
		t.Fatalf("%v per-address Retries counted, want 2", n)
	}
}

// BenchmarkHandshake: new QUIC connections, one after another, with
// (handshake_rate 0) and without a Retry, client and server in one process
// (the CPU per handshake is about half each side's): the cost that
// handshake_rate's default is set against.
func BenchmarkHandshake(b *testing.B) {
	for _, tc := range []struct{ name, options string }{
		{"no_retry", "\thandshake_rate 1000000\n\thandshake_rate_per_ip 0"},
		{"retry", "\thandshake_rate 0\n\thandshake_rate_per_ip 0"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := startProxyLogging(b, "{\n\tdefault_bind 127.0.0.1\n"+tc.options+"\n}\nlocalhost:0 {\n\trespond ok\n}\n", nil, productionLogger())
			udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			tr := &quic.Transport{Conn: udp}
			defer func() { tr.Close(); udp.Close() }()
			tlsConf := h.clientTLS()
			tlsConf.NextProtos = []string{http3.NextProtoH3}
			to, _ := net.ResolveUDPAddr("udp", h.addr)
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := tr.Dial(ctx, to, tlsConf, &quic.Config{})
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				c.CloseWithError(0, "")
			}
		})
	}
}
