package proxy

import (
	"net/http"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// histogramCount returns the sample count of the histogram name with the
// given labels in reg, or -1 when it has no such series.
func histogramCount(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue series
				}
			}
			return int(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// TestRequestMetricsBySite: requests are counted and timed per site (the
// site block's first address), with an empty site for requests no site
// answers (issue 13: no duration histogram, no per-site series).
func TestRequestMetricsBySite(t *testing.T) {
	h := startProxy(t, `{
	default_bind 127.0.0.1
}
localhost:0 {
	respond "home"
}
shop.internal:0 {
	respond 503
}
`, nil)
	c := h.dial(t)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	for range 3 {
		do(t, c, "GET", url, nil, nil)
	}
	do(t, c, "GET", url, nil, map[string]string{"Host": "shop.internal"})
	if resp, _ := do(t, c, "GET", url, nil, map[string]string{"Host": "elsewhere.example"}); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("unknown host: %d", resp.StatusCode)
	}
	want := []struct {
		site, class string
		n           int
	}{
		{"localhost:0", "2xx", 3},
		{"shop.internal:0", "5xx", 1},
		{"", "4xx", 1},
	}
	// A request is counted as its handler returns, which may be just
	// after the client has its response.
	eventually(t, "five requests counted", func() bool {
		for _, w := range want {
			if testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues("h3", w.site, w.class)) != float64(w.n) {
				return false
			}
		}
		return true
	})
	for _, w := range want {
		if got := histogramCount(t, h.reg, "roamgate_request_duration_seconds", map[string]string{"proto": "h3", "site": w.site}); got != w.n {
			t.Errorf("request_duration_seconds{site=%q} has %d samples, want %d", w.site, got, w.n)
		}
	}
	if got := histogramCount(t, h.reg, "roamgate_request_duration_seconds", map[string]string{"proto": "tcp", "site": "localhost:0"}); got != 0 {
		t.Errorf("tcp series has %d samples, want 0", got)
	}
}
