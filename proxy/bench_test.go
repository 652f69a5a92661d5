package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/roamgate/roamgate/proxy/h3client"
)

// body1K is the response of the benchmark backends.
var body1K = strings.Repeat("x", 1024)

func oneK(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body1K) }

func getOnce(b *testing.B, rt http.RoundTripper, url string) {
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		b.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || n != 1024 {
		b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
	}
}

// BenchmarkH3ThroughProxy: one HTTP/3 client, sequential 1 KiB GETs through
// roamgate to an HTTP/1.1 backend.
func BenchmarkH3ThroughProxy(b *testing.B) {
	app := startApp(b, "app", http.HandlerFunc(oneK))
	h := startProxyLogging(b, siteFor("", app.Addr()), nil, productionLogger())
	c := h.dial(b)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	b.ReportAllocs()
	for b.Loop() {
		getOnce(b, c, url)
	}
}

// BenchmarkH3ThroughProxyParallel: one HTTP/3 connection per goroutine.
func BenchmarkH3ThroughProxyParallel(b *testing.B) {
	app := startApp(b, "app", http.HandlerFunc(oneK))
	h := startProxyLogging(b, siteFor("", app.Addr()), nil, productionLogger())
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		c := h.dial(b)
		for pb.Next() {
			getOnce(b, c, url)
		}
	})
}

// BenchmarkH1Direct: the baseline of the backend alone, HTTP/1.1 keep-alive.
func BenchmarkH1Direct(b *testing.B) {
	app := startApp(b, "app", http.HandlerFunc(oneK))
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	url := "http://" + app.Addr() + "/"
	b.ReportAllocs()
	for b.Loop() {
		getOnce(b, tr, url)
	}
}

// BenchmarkH3Plain: the baseline of a plain quic-go HTTP/3 server answering
// like the backend: what the HTTP/3 stack costs without the proxy hop.
func BenchmarkH3Plain(b *testing.B) {
	h := startProxyLogging(b, siteFor("", "127.0.0.1:1"), nil, productionLogger()) // only for its certificates
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	srv := &http3.Server{Handler: http.HandlerFunc(oneK), TLSConfig: http3.ConfigureTLSConfig(h.certs.QUICTLSConfig()), QUICConfig: &quic.Config{}}
	go srv.Serve(udp)
	defer func() { srv.Close(); udp.Close() }()
	c := h.dialTo(b, udp.LocalAddr().String())
	b.ReportAllocs()
	for b.Loop() {
		getOnce(b, c, "https://localhost/")
	}
}

// BenchmarkFirstRequestAfterMigration times the first request after a
// migration (dialing, a warm-up request and the migration itself are not
// timed). The path switch resets congestion control and the RTT estimate
// (RFC 9002 §9.4), so this is what a roaming client's next request costs.
// Each iteration uses a fresh connection, so the client does not pile up
// one UDP socket per path (quic-go keeps every path's transport registered
// until the connection closes).
func BenchmarkFirstRequestAfterMigration(b *testing.B) {
	app := startApp(b, "app", http.HandlerFunc(oneK))
	h := startProxyLogging(b, siteFor("", app.Addr()), nil, productionLogger())
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	for b.Loop() {
		b.StopTimer()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := h3client.Dial(ctx, h.addr, h.clientTLS(), nil)
		if err != nil {
			b.Fatal(err)
		}
		getOnce(b, c, url)
		if err := c.Migrate(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		b.StartTimer()
		getOnce(b, c, url)
		b.StopTimer()
		c.Close()
		b.StartTimer()
	}
}

// heapPeak samples the live heap every few milliseconds until stop is
// called, and returns the highest value seen (runtime/metrics reads do not
// stop the world).
func heapPeak() (stop func() uint64) {
	sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	done := make(chan struct{})
	result := make(chan uint64)
	go func() {
		var peak uint64
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			rtmetrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-done:
				result <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); return <-result }
}

const streamSize = 64 << 20

// BenchmarkUploadThroughProxy streams 64 MiB request bodies (of unknown
// length: chunked upstream) from an HTTP/3 client through roamgate to an
// HTTP/1.1 backend that discards them, and reports the live heap's peak
// above its level before the run: request bodies stream, so it stays at a
// few MiB however large the upload (-benchtime 16x moves 1 GiB).
func BenchmarkUploadThroughProxy(b *testing.B) {
	app := startApp(b, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		io.WriteString(w, strconv.FormatInt(n, 10))
	}))
	h := startProxyLogging(b, siteFor("", app.Addr()), nil, productionLogger())
	c := h.dial(b)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	chunk := make([]byte, 64<<10)
	runtime.GC()
	base := heapNow()
	stop := heapPeak()
	b.SetBytes(streamSize)
	for b.Loop() {
		pr, pw := io.Pipe()
		go func() {
			for sent := 0; sent < streamSize; sent += len(chunk) {
				if _, err := pw.Write(chunk); err != nil {
					return
				}
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", url, pr)
		resp, err := c.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != strconv.Itoa(streamSize) {
			b.Fatalf("backend got %s bytes", body)
		}
	}
	b.ReportMetric(float64(stop()-base)/(1<<20), "peak-heap-MiB")
}

// BenchmarkDownloadThroughProxy streams 64 MiB responses from the backend
// through roamgate to an HTTP/3 client, with the same heap measure.
func BenchmarkDownloadThroughProxy(b *testing.B) {
	chunk := make([]byte, 64<<10)
	app := startApp(b, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(streamSize))
		for sent := 0; sent < streamSize; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	h := startProxyLogging(b, siteFor("", app.Addr()), nil, productionLogger())
	c := h.dial(b)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	runtime.GC()
	base := heapNow()
	stop := heapPeak()
	b.SetBytes(streamSize)
	for b.Loop() {
		req, _ := http.NewRequest("GET", url, nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n != streamSize {
			b.Fatalf("got %d bytes", n)
		}
	}
	b.ReportMetric(float64(stop()-base)/(1<<20), "peak-heap-MiB")
}

func heapNow() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// productionLogger logs as roamgate run does by default (info, access lines
// included), JSON-encoded, to nowhere: its cost is part of what a request
// costs.
func productionLogger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
}
