package proxy

import (
	"context"
	"net"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/roamgate/roamgate/upstream"
	"go.uber.org/zap"
)

// browserRequest is a typical HTTP/3 GET from a browser, as the handler
// receives it.
func browserRequest() *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "https://app.example.com/api/items?page=2", nil)
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/3.0", 3, 0
	r.RemoteAddr = "192.0.2.7:4433"
	r.Header = http.Header{
		"Accept":          {"application/json"},
		"Accept-Encoding": {"gzip, deflate, br"},
		"Accept-Language": {"en-US,en;q=0.9"},
		"Cookie":          {"sid=4f1c2a; theme=dark"},
		"User-Agent":      {"Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36"},
		"X-Forwarded-For": {"6.6.6.6"},
	}
	return r
}

// BenchmarkHeaderTranslation measures the HTTP/3 → HTTP/1.1 translation of a
// request header (checks, hop-by-hop and forwarding fields), without I/O,
// into a pooled outgoing request as the reverse proxy does.
func BenchmarkHeaderTranslation(b *testing.B) {
	s, r := fuzzSession(), browserRequest()
	b.ReportAllocs()
	for b.Loop() {
		o := getOutgoing()
		if _, err := o.fill(r, s, "", false); err != nil {
			b.Fatal(err)
		}
		o.release()
	}
}

// BenchmarkSessionLookup measures what every request does to find its
// session and the session's lease: the context lookup (under a few context
// layers, as net/http and http3 stack them) and the lease lookup. The
// path-change check is one atomic load more on a QUIC session.
func BenchmarkSessionLookup(b *testing.B) {
	pool, err := upstream.New(upstream.Config{Backends: []string{"127.0.0.1:1"}}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	srv := &Server{logger: zap.NewNop(), metrics: newMetrics(prometheus.NewRegistry())}
	s := srv.newSession("h3", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4433}, nil)
	ctx := withSession(context.WithValue(context.Background(), http.LocalAddrContextKey, s), s)
	r := browserRequest().WithContext(ctx)
	b.ReportAllocs()
	for b.Loop() {
		s := sessionFrom(r.Context())
		if _, err := s.lease(pool, r); err != nil {
			b.Fatal(err)
		}
	}
	s.close()
}
