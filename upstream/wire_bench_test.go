package upstream

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// benchRequest is a translated request as the proxy hands it to a lease: a
// browser's GET with the forwarding fields set.
func benchRequest() *http.Request {
	return &http.Request{Method: http.MethodGet, RequestURI: "/api/items?page=2", URL: &url.URL{Path: "/api/items", RawQuery: "page=2"},
		Host: "app.example.com", Header: http.Header{
			"Accept":            {"application/json"},
			"Accept-Encoding":   {"gzip, deflate, br"},
			"Accept-Language":   {"en-US,en;q=0.9"},
			"Cookie":            {"sid=4f1c2a; theme=dark"},
			"User-Agent":        {"Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36"},
			"X-Forwarded-For":   {"192.0.2.7"},
			"X-Forwarded-Proto": {"https"},
			"X-Forwarded-Host":  {"app.example.com"},
			"Forwarded":         {`for="192.0.2.7:4433";host=app.example.com;proto=https`},
		}}
}

// BenchmarkWriteRequestHeader measures the HTTP/1.1 request header writer.
func BenchmarkWriteRequestHeader(b *testing.B) {
	req := benchRequest()
	bw := bufio.NewWriter(io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		if err := writeRequestHeader(bw, req, false, false); err != nil {
			b.Fatal(err)
		}
		bw.Flush()
	}
}

// cannedBackend is an HTTP/1.1 backend on loopback that answers every
// request header with the same 1 KiB response, doing as little work as a
// backend can, so a benchmark measures the proxy side.
func cannedBackend(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + strings.Repeat("x", 1024))
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 8<<10)
				var pending []byte
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					pending = append(pending, buf[:n]...)
					for {
						i := bytes.Index(pending, []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						pending = pending[i+4:]
						if _, err := c.Write(resp); err != nil {
							return
						}
					}
				}
			})
		}
	})
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// BenchmarkLeaseRoundTrip measures one request through a session's lease on
// its kept-alive upstream connection: header write, liveness check,
// response read and body copy, against a backend that does next to nothing.
func BenchmarkLeaseRoundTrip(b *testing.B) {
	addr := cannedBackend(b)
	m := NewMetrics(nil)
	p, err := New(Config{Backends: []string{addr}}, nil, m)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	l := p.Lease(1, nil)
	defer l.Close()
	req := benchRequest().WithContext(context.Background())
	buf := make([]byte, 4<<10)
	b.ReportAllocs()
	for b.Loop() {
		resp, err := l.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, resp.Body, buf); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	if n := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(addr, "new")); n != 1 {
		b.Fatalf("%v upstream connections opened, want 1", n)
	}
}
