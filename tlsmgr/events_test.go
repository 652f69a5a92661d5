package tlsmgr

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/tlsmgr/acmetest"
)

// TestOnEvent feeds certmagic's events to the handler as certmagic emits
// them, and checks the logs and counters.
func TestOnEvent(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	m, err := New(Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"a.example.com"}}}}, acmetest.Logger(t, zap.WarnLevel, core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	ctx := t.Context()

	problem := acme.Problem{Type: "urn:ietf:params:acme:error:rateLimited", Detail: "too many certificates", Status: 429}
	events := []struct {
		name string
		data map[string]any
	}{
		{"cert_obtaining", map[string]any{"identifier": "a.example.com"}},
		{"cert_obtained", map[string]any{"identifier": "a.example.com", "issuer": "ca.example.net-dir", "renewal": false,
			"certificate_path": "certificates/ca.example.net-dir/a.example.com/a.example.com.crt"}}, // not in storage
		{"cert_obtaining", map[string]any{"identifier": "a.example.com", "renewal": true, "forced": false, "issuer": "ca.example.net-dir", "remaining": time.Hour}},
		{"cert_failed", map[string]any{"identifier": "a.example.com", "renewal": true, "remaining": time.Hour,
			"issuers": []string{"ca.example.net-dir"}, "error": fmt.Errorf("[a.example.com] Renew: %w", problem)}},
		{"cert_obtained", map[string]any{"identifier": "a.example.com", "issuer": "ca.example.net-dir", "renewal": true, "remaining": time.Hour}},
		{"cert_ocsp_revoked", map[string]any{"subjects": []string{"a.example.com"}, "reason": 1, "revoked_at": time.Now()}},
		{"cached_managed_cert", map[string]any{"sans": []string{"a.example.com"}}},
	}
	for _, e := range events {
		if err := m.onEvent(ctx, e.name, e.data); err != nil {
			t.Errorf("onEvent(%s) = %v; it must not veto a configured name's", e.name, err)
		}
	}
	// A name no site lists (any more, after an Update) is not obtained.
	if err := m.onEvent(ctx, "cert_obtaining", map[string]any{"identifier": "gone.example.com"}); err == nil {
		t.Error("onEvent(cert_obtaining) for a name no site lists = nil, want a veto")
	}

	for _, tt := range []struct {
		msg    string
		level  zapcore.Level
		n      int
		fields map[string]any // some of the first entry's fields
	}{
		{"obtaining certificate", zap.InfoLevel, 2, map[string]any{"identifier": "a.example.com", "renewal": false}},
		{"certificate obtained", zap.InfoLevel, 2, map[string]any{"issuer": "ca.example.net-dir"}},
		{"obtaining certificate failed", zap.ErrorLevel, 1, map[string]any{
			"renewal": true, "issuer": "ca.example.net-dir", "problem_detail": "too many certificates",
			"problem_type": "urn:ietf:params:acme:error:rateLimited", "problem_status": int64(429), "remaining": time.Hour}},
		{"certificate revoked according to its ocsp staple; renewing it", zap.WarnLevel, 1, map[string]any{"reason": int64(1)}},
		{"certificate event", zap.DebugLevel, 1, map[string]any{"event": "cached_managed_cert"}},
	} {
		got := logs.FilterMessage(tt.msg)
		if got.Len() != tt.n {
			t.Errorf("%q logged %d times, want %d", tt.msg, got.Len(), tt.n)
			continue
		}
		entry := got.All()[0]
		if entry.Level != tt.level {
			t.Errorf("%q logged at %s, want %s", tt.msg, entry.Level, tt.level)
		}
		fields := entry.ContextMap()
		for k, want := range tt.fields {
			if fields[k] != want {
				t.Errorf("%q: field %s = %v (%T), want %v", tt.msg, k, fields[k], fields[k], want)
			}
		}
	}
	renewed := logs.FilterMessage("certificate obtained").All()[1].ContextMap()
	if renewed["previous_remaining"] != time.Hour || renewed["renewal"] != true {
		t.Errorf("renewal log fields %v", renewed)
	}

	for _, c := range []struct {
		vec    *prometheus.CounterVec
		labels []string
		want   float64
	}{
		{m.metrics.obtained, []string{"ca.example.net-dir", "false"}, 1},
		{m.metrics.obtained, []string{"ca.example.net-dir", "true"}, 1},
		{m.metrics.failures, []string{"ca.example.net-dir", "true"}, 1},
	} {
		if got := testutil.ToFloat64(c.vec.WithLabelValues(c.labels...)); got != c.want {
			t.Errorf("counter %v = %v, want %v", c.labels, got, c.want)
		}
	}

	if shouldEmit("tls_get_certificate") {
		t.Error("the per-handshake event is emitted")
	}
	for _, e := range []string{"cert_obtaining", "cert_obtained", "cert_failed", "cert_ocsp_revoked"} {
		if !shouldEmit(e) {
			t.Errorf("%s is filtered", e)
		}
	}
}

// TestMetricsRegistration registers the metrics, counts local issuance, and
// lets a second Manager (a reload) share the registered counters.
func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Registerer: reg, Sites: []Site{{Names: []string{"localhost", "127.0.0.1"}}}}
	startTestManager(t, cfg)
	const want = `
# HELP roamgate_tls_certificates_obtained_total Certificates obtained or renewed, by issuer (local, or the ACME CA's host and path) and whether it was a renewal.
# TYPE roamgate_tls_certificates_obtained_total counter
roamgate_tls_certificates_obtained_total{issuer="local",renewal="false"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "roamgate_tls_certificates_obtained_total"); err != nil {
		t.Error(err)
	}

	cfg.DataDir = t.TempDir() // new names to issue
	startTestManager(t, cfg)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(strings.Replace(want, "} 2", "} 4", 1)), "roamgate_tls_certificates_obtained_total"); err != nil {
		t.Errorf("second manager: %v", err)
	}
}
