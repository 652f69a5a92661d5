package upstream

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// fakeAddrs are backend addresses for tests that only select: a lease dials
// nothing until its first request.
func fakeAddrs(n int) []string {
	var out []string
	for i := range n {
		out = append(out, "10.0.0."+strconv.Itoa(i+1)+":80")
	}
	return out
}

func reqWithHeader(name, value string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "https://app.test/", nil)
	if name != "" {
		r.Header.Set(name, value)
	}
	return r
}

// TestPoliciesPickOncePerLease: whatever the policy, a lease's backend is
// chosen when the lease is taken and carries every request of the lease.
func TestPoliciesPickOncePerLease(t *testing.T) {
	bs := []*backend{namedBackend(t, "b0"), namedBackend(t, "b1"), namedBackend(t, "b2")}
	for _, tc := range []struct {
		policy Policy
		key    string
		req    func(i int) *http.Request
		want   []string // backend of lease i, when the policy says exactly
	}{
		{policy: RoundRobin, want: []string{"b0", "b1", "b2", "b0", "b1", "b2"}},
		{policy: LeastConn, want: []string{"b0", "b1", "b2", "b0", "b1", "b2"}},
		{policy: Random},
		{policy: First, want: []string{"b0", "b0", "b0", "b0", "b0", "b0"}},
		{policy: Cookie, req: func(int) *http.Request { return nil }, want: []string{"b0", "b1", "b2", "b0", "b1", "b2"}},
		{policy: Header, key: "X-Tenant", req: func(i int) *http.Request { return reqWithHeader("X-Tenant", "t"+strconv.Itoa(i)) }},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			p, _ := newPool(t, Config{Backends: addrsOf(bs...), Policy: tc.policy, PolicyKey: tc.key, CookieSecret: []byte("k")})
			var got []string
			for i := range 6 {
				var req *http.Request
				if tc.req != nil {
					req = tc.req(i)
				}
				l := p.Lease(uint64(i), req)
				defer l.Close() // open leases count for least_conn
				first, conn := hit(t, l)
				if l.Backend().Addr != bs[first[1]-'0'].addr() {
					t.Fatalf("lease %d: Backend() = %s, but %s answered", i, l.Backend().Addr, first)
				}
				for range 4 {
					if name, c := hit(t, l); name != first || c != conn {
						t.Fatalf("lease %d moved from %s (%s) to %s (%s)", i, first, conn, name, c)
					}
				}
				got = append(got, first)
			}
			if tc.want != nil && fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("backends %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLeastConnBalancesLeases(t *testing.T) {
	p, _ := newPool(t, Config{Backends: fakeAddrs(3), Policy: LeastConn})
	var leases []*Lease
	for i := range 30 {
		leases = append(leases, p.Lease(uint64(i), nil))
	}
	for _, b := range p.Backends() {
		if b.Leases() != 10 {
			t.Fatalf("%s has %d leases, want 10", b.Addr, b.Leases())
		}
	}
	// Sessions on b0 end; the next sessions fill b0 up again.
	b0 := p.Backends()[0]
	closed := 0
	for _, l := range leases {
		if l.Backend() == b0 && closed < 6 {
			l.Close()
			closed++
		}
	}
	for i := range 6 {
		l := p.Lease(uint64(100+i), nil)
		leases = append(leases, l)
		if l.Backend() != b0 {
			t.Fatalf("new lease %d went to %s, want the emptier %s", i, l.Backend().Addr, b0.Addr)
		}
	}
	for _, l := range leases {
		l.Close()
	}
	for _, b := range p.Backends() {
		if b.Leases() != 0 {
			t.Fatalf("%s still counts %d leases after every Close", b.Addr, b.Leases())
		}
	}
}

func TestRandomUsesEveryBackend(t *testing.T) {
	p, _ := newPool(t, Config{Backends: fakeAddrs(3), Policy: Random})
	count := map[string]int{}
	for i := range 300 {
		l := p.Lease(uint64(i), nil)
		count[l.Backend().Addr]++
		l.Close()
	}
	for _, b := range p.Backends() {
		if count[b.Addr] < 50 { // expected 100; fewer than 50 is a broken policy
			t.Fatalf("random picks %v", count)
		}
	}
}

// TestSelectionSkipsUnhealthyBackends: every policy picks among the healthy
// backends only, and among all of them when none is healthy.
func TestSelectionSkipsUnhealthyBackends(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, LeastConn, Random, First, Cookie, Header} {
		t.Run(policy.String(), func(t *testing.T) {
			p, _ := newPool(t, Config{
				Backends: fakeAddrs(3), Policy: policy, PolicyKey: "X-Tenant", CookieSecret: []byte("k"),
				Passive: PassiveHealth{FailDuration: time.Minute},
			})
			p.now = newFakeClock().Now
			bs := p.Backends()
			bs[0].fail(failDial, "test")
			for i := range 30 {
				l := p.Lease(uint64(i), reqWithHeader("X-Tenant", strconv.Itoa(i)))
				if l.Backend() == bs[0] {
					t.Fatalf("lease %d got the unhealthy backend", i)
				}
				l.Close()
			}
			bs[1].fail(failDial, "test")
			bs[2].fail(failDial, "test")
			l := p.Lease(99, nil)
			if l.Backend() == nil {
				t.Fatal("no backend when none is healthy")
			}
			l.Close()
		})
	}
}

// TestHeaderHashing: a header value always lands on the same backend,
// values spread over the backends, and a backend leaving (unhealthy, or
// removed from the configuration) moves only the values it had.
func TestHeaderHashing(t *testing.T) {
	addrs := fakeAddrs(4)
	p, _ := newPool(t, Config{Backends: addrs, Policy: Header, PolicyKey: "x-tenant",
		Passive: PassiveHealth{FailDuration: time.Minute}})
	p.now = newFakeClock().Now
	pick := func(p *Pool, v string) string {
		l := p.Lease(0, reqWithHeader("X-Tenant", v))
		defer l.Close()
		return l.Backend().Addr
	}
	const n = 2000
	before := map[string]string{}
	count := map[string]int{}
	for i := range n {
		v := "tenant-" + strconv.Itoa(i)
		before[v] = pick(p, v)
		count[before[v]]++
		if again := pick(p, v); again != before[v] {
			t.Fatalf("%s went to %s, then %s", v, before[v], again)
		}
	}
	for _, a := range addrs {
		if count[a] < n/4*7/10 { // within 30% of an even share
			t.Fatalf("uneven spread %v", count)
		}
	}

	check := func(name string, p *Pool, gone string) {
		moved := 0
		for v, was := range before {
			now := pick(p, v)
			switch {
			case was == gone && now == gone:
				t.Fatalf("%s: %s still on the removed backend", name, v)
			case was != gone && now != was:
				t.Fatalf("%s: %s moved from %s to %s though its backend stayed", name, v, was, now)
			case was == gone:
				moved++
			}
		}
		if moved != count[gone] {
			t.Fatalf("%s: %d values moved, want %d", name, moved, count[gone])
		}
	}
	// The same pool with a backend unhealthy.
	p.Backends()[1].fail(failDial, "test")
	check("unhealthy", p, addrs[1])
	// A pool configured without that backend.
	p2, _ := newPool(t, Config{Backends: []string{addrs[0], addrs[2], addrs[3]}, Policy: Header, PolicyKey: "X-Tenant"})
	check("removed", p2, addrs[1])

	// Without the header: round robin.
	var got []string
	for range 4 {
		got = append(got, pick(p2, ""))
	}
	if want := []string{addrs[0], addrs[2], addrs[3], addrs[0]}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("no header: %v, want round robin %v", got, want)
	}
}

func TestNewRejectsBadPolicyConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"cookie without secret", Config{Policy: Cookie}},
		{"header without name", Config{Policy: Header}},
		{"bad header name", Config{Policy: Header, PolicyKey: "X Tenant"}},
		{"bad cookie name", Config{Policy: Cookie, PolicyKey: "a;b", CookieSecret: []byte("k")}},
		{"unknown policy", Config{Policy: Policy(42)}},
		{"negative try duration", Config{TryDuration: -1}},
		{"relative health uri", Config{Health: ActiveHealth{URI: "healthz"}}},
		{"bad unhealthy status", Config{Passive: PassiveHealth{FailDuration: time.Second, UnhealthyStatus: []StatusMatch{{Code: 5}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Backends = fakeAddrs(1)
			if _, err := New(tc.cfg, nil, nil); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
}

func BenchmarkLease(b *testing.B) {
	for _, policy := range []Policy{RoundRobin, LeastConn, Header} {
		b.Run(policy.String(), func(b *testing.B) {
			p, err := New(Config{Backends: fakeAddrs(8), Policy: policy, PolicyKey: "X-Tenant"}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			req := reqWithHeader("X-Tenant", "acme")
			b.ReportAllocs()
			for b.Loop() {
				p.Lease(1, req).Close()
			}
		})
	}
}
