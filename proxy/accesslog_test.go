package proxy

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// accessLine returns the fields of the access-log line of the request for
// uri, waiting for it: the line is written after the response.
func (h *harness) accessLine(t *testing.T, uri string) map[string]any {
	t.Helper()
	var line map[string]any
	eventually(t, "the access-log line of "+uri, func() bool {
		for _, e := range h.logs.FilterLoggerName("access").FilterMessage("request").All() {
			if f := e.ContextMap(); f["uri"] == uri {
				line = f
			}
		}
		return line != nil
	})
	return line
}

// TestAccessLogCountsWhatWasSent is a regression test (issue 13): a 502's
// access-log line said "bytes": 0 while the client got its 12-byte body.
// Every answer the proxy writes itself (502, 404, 421, respond) logs the
// bytes the client got, and every line names the user agent.
func TestAccessLogCountsWhatWasSent(t *testing.T) {
	dead := deadAddr(t)
	h := startProxy(t, `{
	default_bind 127.0.0.1
}
localhost:0 {
	handle /dead {
		reverse_proxy `+dead+`
	}
	handle /hello {
		respond "hello, world"
	}
}
`, nil)
	c := h.dial(t)
	base := "https://localhost:" + strconv.Itoa(h.port)
	for _, tc := range []struct {
		uri, host string
		status    int
	}{
		{"/dead", "", http.StatusBadGateway},
		{"/hello", "", http.StatusOK},
		{"/nowhere", "", http.StatusNotFound},
		{"/other-site", "other.example", http.StatusMisdirectedRequest},
	} {
		hdr := map[string]string{"User-Agent": "roamgate-test/1.0 (" + tc.uri + ")"}
		if tc.host != "" {
			hdr["Host"] = tc.host
		}
		resp, body := do(t, c, "GET", base+tc.uri, nil, hdr)
		if resp.StatusCode != tc.status || body == "" {
			t.Fatalf("%s: %d %q, want %d with a body", tc.uri, resp.StatusCode, body, tc.status)
		}
		line := h.accessLine(t, tc.uri)
		if got := line["bytes"]; got != int64(len(body)) {
			t.Errorf("%s: access log says bytes %v, the client got %d (%q)", tc.uri, got, len(body), body)
		}
		if got := line["status"]; got != int64(tc.status) {
			t.Errorf("%s: access log says status %v", tc.uri, got)
		}
		if got := line["user_agent"]; got != hdr["User-Agent"] {
			t.Errorf("%s: user_agent %v, want %q", tc.uri, got, hdr["User-Agent"])
		}
	}
}

// TestAccessLogPathChanges: each access-log line carries how many times the
// client's address changed so far on its QUIC connection: 0 before the
// client migrates, 1 after.
func TestAccessLogPathChanges(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	base := "https://localhost:" + strconv.Itoa(h.port)
	do(t, c, "GET", base+"/before", nil, nil)
	if got := h.accessLine(t, "/before")["path_changes"]; got != int64(0) {
		t.Fatalf("before the migration: path_changes %v, want 0", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// The server sees the new path once the client's packets arrive on it:
	// the first request after the switch may or may not be the one that
	// reports it, so ask until one does.
	eventually(t, "a request that reports the path change", func() bool {
		do(t, c, "GET", base+"/after", nil, nil)
		for _, e := range h.logs.FilterLoggerName("access").FilterMessage("request").All() {
			if f := e.ContextMap(); f["uri"] == "/after" && f["path_changes"] == int64(1) {
				return true
			}
		}
		return false
	})
}
