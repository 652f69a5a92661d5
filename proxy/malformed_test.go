package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go/quicvarint"
)

// counterSum sums the series of a counter family in reg whose labels
// include every pair of match.
func counterSum(t *testing.T, reg prometheus.Gatherer, name string, match map[string]string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			for k, v := range match {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestMalformedRequestsNeverReachTheBackend (issue 12): requests that
// quic-go lets through but HTTP/1.1 cannot carry, and request heads over
// the site's limits (the defaults: 8 KiB per field, 32 KiB in all), are
// refused with the right status before any upstream I/O: the backend,
// which records every byte, accepts no connection. Before the fix a space
// in :path or :authority got 502 after dialling the backend, and a 200 KiB
// field went to it.
func TestMalformedRequestsNeverReachTheBackend(t *testing.T) {
	be := startRawBackend(t, nil)
	h := startProxy(t, siteFor("", be.Addr()), nil)
	c := dialRawH3(t, h)
	authority := "localhost:" + strconv.Itoa(h.port)
	with := func(name, value string) []h3Field {
		f := getFields(h)
		for i := range f {
			if f[i].name == name {
				f[i].value = value
			}
		}
		return f
	}
	var many []h3Field
	for i := range 40 {
		many = append(many, h3Field{"x-f" + strconv.Itoa(i), strings.Repeat("v", 1000)})
	}
	for _, tc := range []struct {
		name   string
		fields []h3Field
		want   int // 0: a stream reset; -1: 431 or a reset (quic-go answers 431 and stops reading, so the client's write may fail first)
	}{
		{"raw space in :path", with(":path", "/x SMUGGLED"), http.StatusBadRequest},
		{"request line smuggled in :path", with(":path", "/x HTTP/1.1\r\nHost: evil"), 0},
		{"space in :authority", with(":authority", authority+" evil"), http.StatusBadRequest},
		{"space in :method", with(":method", "GET /evil"), 0},
		{"200 KiB field", getFields(h, h3Field{"x-big", strings.Repeat("a", 200<<10)}), -1},
		{"field over the field limit", getFields(h, h3Field{"x-big", strings.Repeat("a", 9<<10)}), http.StatusRequestHeaderFieldsTooLarge},
		{"head over the total limit", getFields(h, many...), http.StatusRequestHeaderFieldsTooLarge},
		{":path over the field limit", with(":path", "/"+strings.Repeat("p", 9<<10)), http.StatusRequestURITooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := c.request(t, tc.fields)
			if tc.want == -1 && (got.reset || got.status == http.StatusRequestHeaderFieldsTooLarge) {
				return
			}
			if want := (h3Result{status: tc.want, reset: tc.want == 0}); got != want {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
	if n := be.accepted(); n != 0 {
		t.Fatalf("the backend accepted %d connections; they brought %s", n, be.summary())
	}
	for reason, want := range map[string]float64{refusedMalformed: 2, refusedFieldTooLarge: 1, refusedHeadTooLarge: 1, refusedURITooLong: 1} {
		if got := counterSum(t, h.reg, "roamgate_requests_refused_total", map[string]string{"reason": reason}); got != want {
			t.Errorf("refused %s = %v, want %v", reason, got, want)
		}
	}
	if got := counterSum(t, h.reg, "roamgate_upstream_dial_errors_total", nil); got != 0 {
		t.Errorf("dial errors = %v", got)
	}
	// Just within the limits passes, and reaches the backend.
	if got := c.request(t, getFields(h, h3Field{"x-big", strings.Repeat("a", 8<<10-len("X-Big: "))})); got.status != http.StatusOK {
		t.Fatalf("a field of exactly the limit: %v", got)
	}
	if be.requests() != 1 {
		t.Fatalf("the backend read %d requests, want 1", be.requests())
	}
}

// TestSiteLimitsAreTheSites: a site's own max_header_field_bytes and
// max_header_bytes apply to it alone, over HTTP/3, HTTP/2 and HTTP/1.1.
func TestSiteLimitsAreTheSites(t *testing.T) {
	be := startRawBackend(t, nil)
	h := startProxy(t, `{
	default_bind 127.0.0.1
}
localhost:0 {
	max_header_field_bytes 64KiB
	max_header_bytes 128KiB
	reverse_proxy `+be.Addr()+`
}
`, nil)
	c := dialRawH3(t, h)
	big := h3Field{"x-big", strings.Repeat("a", 40<<10)}
	if got := c.request(t, getFields(h, big)); got.status != http.StatusOK {
		t.Fatalf("HTTP/3, a 40 KiB field under a 64 KiB limit: %v", got)
	}
	if got := rawH2(t, h, getFields(h, big), nil); got.status != http.StatusOK {
		t.Fatalf("HTTP/2, a 40 KiB field under a 64 KiB limit: %v", got)
	}
	resp, _, _ := rawH1(t, h, "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: "+big.value+"\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP/1.1, a 40 KiB field under a 64 KiB limit: %d", resp.StatusCode)
	}
	over := h3Field{"x-big", strings.Repeat("a", 70<<10)}
	if got := c.request(t, getFields(h, over)); got.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("HTTP/3, a 70 KiB field: %v", got)
	}
	if got := rawH2(t, h, getFields(h, over), nil); got.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("HTTP/2, a 70 KiB field: %v", got)
	}
	resp, _, _ = rawH1(t, h, "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: "+over.value+"\r\n\r\n")
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("HTTP/1.1, a 70 KiB field: %d", resp.StatusCode)
	}
	if be.requests() != 3 {
		t.Fatalf("the backend read %d requests, want 3", be.requests())
	}
}

// TestMalformedTrailerAbortsTheUpstreamRequest (issue 12): a trailer that
// arrives after the request's head and body have been streamed upstream,
// and that HTTP/1.1 cannot carry (CR LF in a value) or must not (a framing
// field), gets a 400 or a reset; the upstream connection is aborted
// (closed, counted "aborted") before the chunked body ends, so the backend
// never sees a complete message. Before the fix it was answered 502.
func TestMalformedTrailerAbortsTheUpstreamRequest(t *testing.T) {
	for _, tr := range []h3Field{
		{"x-evil", "a\r\nx-injected: 1"},
		{"content-length", "0"},
		{"transfer-encoding", "chunked"},
	} {
		t.Run(tr.name, func(t *testing.T) {
			be := startRawBackend(t, nil)
			h := startProxy(t, siteFor("", be.Addr()), nil)
			c := dialRawH3(t, h)
			str := c.sendHeaders(t, postFields(h))
			part := strings.Repeat("b", 32<<10) // over the look-ahead: the body streams chunked
			b := quicvarint.Append(nil, frameData)
			b = quicvarint.Append(b, uint64(len(part)))
			b = append(b, part...)
			if _, err := str.Write(b); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the body to reach the backend", func() bool {
				rcv := be.received()
				return len(rcv) == 1 && strings.Count(rcv[0], "b") >= len(part)
			})
			if _, err := str.Write(headersFrame(t, []h3Field{tr})); err != nil {
				t.Fatal(err)
			}
			str.Close()
			if got := readH3Status(t, str); !got.reset && got.status != http.StatusBadRequest {
				t.Fatalf("got %v, want 400 or a reset", got)
			}
			eventually(t, "the upstream connection to close", be.allClosed)
			if n := be.requests(); n != 0 {
				t.Fatalf("the backend read %d complete requests", n)
			}
			rcv := be.received()[0]
			if !strings.Contains(rcv, "Transfer-Encoding: chunked\r\n") || strings.Contains(rcv, "\r\n0\r\n") || strings.Contains(rcv, "injected") {
				t.Fatalf("the backend received %q…", rcv[:min(len(rcv), 300)])
			}
			eventually(t, "the close counted as aborted", func() bool {
				return counterSum(t, h.reg, "roamgate_upstream_conns_closed_total", map[string]string{"reason": "aborted"}) == 1
			})
			// The session goes on, on a new upstream connection.
			time.Sleep(10 * time.Millisecond)
			if got := c.request(t, getFields(h)); got.status != http.StatusOK {
				t.Fatalf("next request: %v", got)
			}
		})
	}
}
