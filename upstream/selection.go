package upstream

import (
	"math/rand/v2"
	"net/http"
	"sync/atomic"
)

// selector is a load-balancing policy: it picks a backend for a session.
// It runs when a lease is taken and when the lease must move, never per
// request.
type selector interface {
	// pick returns one of cands, which is not empty and holds healthy
	// backends in configuration order. req is the session's request that
	// needs a backend; it may be nil.
	pick(cands []*Backend, req *http.Request) *Backend
}

var (
	_ selector = (*roundRobin)(nil)
	_ selector = (*leastConn)(nil)
	_ selector = random{}
	_ selector = first{}
	_ selector = (*cookieSelector)(nil)
	_ selector = (*headerHash)(nil)
)

// newSelector returns the selector of cfg's policy; cfg has been checked.
func newSelector(cfg Config, backends []*Backend) selector {
	rr := &roundRobin{}
	switch cfg.Policy {
	case LeastConn:
		return &leastConn{rr: rr}
	case Random:
		return random{}
	case First:
		return first{}
	case Cookie:
		return newCookieSelector(cfg.PolicyKey, cfg.CookieSecret, backends, rr)
	case Header:
		return &headerHash{name: cfg.PolicyKey, fallback: rr}
	}
	return rr
}

// roundRobin takes the candidates in turn.
type roundRobin struct{ next atomic.Uint64 }

func (s *roundRobin) pick(cands []*Backend, _ *http.Request) *Backend {
	return cands[(s.next.Add(1)-1)%uint64(len(cands))]
}

// leastConn takes the candidate with the fewest open leases; ties go round
// robin, so an idle pool fills evenly.
type leastConn struct{ rr *roundRobin }

func (s *leastConn) pick(cands []*Backend, _ *http.Request) *Backend {
	start := int((s.rr.next.Add(1) - 1) % uint64(len(cands)))
	best := cands[start]
	for i := 1; i < len(cands); i++ {
		b := cands[(start+i)%len(cands)]
		if b.Leases() < best.Leases() {
			best = b
		}
	}
	return best
}

// random takes a candidate at random.
type random struct{}

func (random) pick(cands []*Backend, _ *http.Request) *Backend {
	return cands[rand.IntN(len(cands))]
}

// first takes the first candidate in configuration order.
type first struct{}

func (first) pick(cands []*Backend, _ *http.Request) *Backend { return cands[0] }

// headerHash takes the candidate that a request header's value hashes to,
// by rendezvous (highest random weight) hashing: every backend scores the
// value and the highest score wins, so removing a backend moves only the
// values it had. The hash is fixed (not seeded per process), so every
// roamgate instance behind one address sends a value to the same backend.
// Without the header (or with an empty value) it falls back to round robin.
type headerHash struct {
	name     string // canonical header name
	fallback selector
}

func (s *headerHash) pick(cands []*Backend, req *http.Request) *Backend {
	var v string
	if req != nil {
		if vv := req.Header[s.name]; len(vv) > 0 {
			v = vv[0]
		}
	}
	if v == "" {
		return s.fallback.pick(cands, req)
	}
	return rendezvous(cands, fnv64a(v))
}

// rendezvous returns the candidate with the highest score for key.
func rendezvous(cands []*Backend, key uint64) *Backend {
	var best *Backend
	var bestScore uint64
	for _, b := range cands {
		if score := mix64(key ^ b.hash); best == nil || score > bestScore {
			best, bestScore = b, score
		}
	}
	return best
}

// fnv64a is the 64-bit FNV-1a hash of s.
func fnv64a(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the SplitMix64 finalizer: a bijection whose every output bit
// depends on every input bit, which FNV alone does not give the last bytes.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
