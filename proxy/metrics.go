package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// statusClasses are the values of the requests counter's "class" label.
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx", "499"}

// protos are the values of the "proto" label: the client's side, HTTP/3 or
// TCP (HTTP/2 and HTTP/1.1).
var protos = [...]string{"h3", "tcp"}

// durationBuckets are the request duration histogram's buckets, in
// seconds: from a cached answer over loopback (the proxy hop alone is tens
// of µs) through a slow backend, up to a minute, the default
// response_header_timeout. Long polls land in the last ones.
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// metrics are the proxy's Prometheus series.
type metrics struct {
	sessionsOpened *prometheus.CounterVec // by proto: h3, tcp
	sessionsActive prometheus.Gauge
	pathChanges    *prometheus.CounterVec   // by kind: migration, nat_rebinding
	requests       *prometheus.CounterVec   // by proto, site and status class
	duration       *prometheus.HistogramVec // by proto and site
	tooEarly       prometheus.Counter       // 0-RTT requests answered 425
	refused        *prometheus.CounterVec   // client errors refused before the backend, by reason
	admission      *prometheus.CounterVec   // new QUIC connections sent a Retry or refused, by decision
	reloads        *prometheus.CounterVec   // Reload calls, by result: applied, refused

	// noSite counts the requests no site answers (421).
	noSite *siteMetrics
}

// siteMetrics are one site's request series, resolved once, so counting a
// request neither allocates nor hashes labels. The site label is the site
// block's first address as written ("example.com", ":443"): sites come from
// the configuration, so its values are bounded; requests that no site
// answers have an empty one.
type siteMetrics struct {
	byClass  [len(protos)][len(statusClasses)]prometheus.Counter
	duration [len(protos)]prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sessionsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Name: "sessions_opened_total",
			Help: "Client sessions opened: one per QUIC connection (proto h3) or TCP connection (proto tcp).",
		}, []string{"proto"}),
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "roamgate", Name: "sessions_active",
			Help: "Client sessions open now.",
		}),
		pathChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Name: "path_changes_total",
			Help: "Validated client address changes on QUIC connections (migrations and NAT rebindings), by kind: address (new IP) or port (same IP, new port).",
		}, []string{"kind"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Name: "requests_total",
			Help: "Requests answered, by client protocol (h3, tcp), site (its first address as written; empty when no site answers) and status class (499: client went away).",
		}, []string{"proto", "site", "class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "roamgate", Name: "request_duration_seconds",
			Help:    "Time from a request's head to the end of its response, by client protocol and site; WebSocket and tunnel streams are not observed (their time is the stream's life).",
			Buckets: durationBuckets,
		}, []string{"proto", "site"}),
		tooEarly: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "roamgate", Name: "too_early_total",
			Help: "Requests that arrived in 0-RTT data with an unsafe method and were answered 425 Too Early (RFC 8470).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Name: "requests_refused_total",
			Help: "Requests refused as the client's error, before anything reached the backend or with the upstream request aborted, by reason (malformed, head_too_large, field_too_large, uri_too_long).",
		}, []string{"reason"}),
		admission: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Name: "quic_admission_total",
			Help: "Initial packets of new QUIC connections answered with a Retry or refused (a client's first flight is one or two packets), by decision: retry_rate (over handshake_rate: the client proves its address with a Retry first), retry_per_ip (an unproven address over handshake_rate_per_ip), refused_per_ip (a proven address over it: CONNECTION_REFUSED).",
		}, []string{"decision"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Name: "config_reloads_total",
			Help: "Configuration reloads, by result: applied, refused (invalid, or a change that needs a restart; the running configuration is unchanged).",
		}, []string{"result"}),
	}
	m.noSite = m.forSite("")
	if reg != nil {
		reg.MustRegister(m.sessionsOpened, m.sessionsActive, m.pathChanges, m.requests, m.duration, m.tooEarly, m.refused, m.admission, m.reloads)
	}
	return m
}

// forSite resolves the request series of the site named site.
func (m *metrics) forSite(site string) *siteMetrics {
	sm := &siteMetrics{}
	for p, proto := range protos {
		for i, class := range statusClasses {
			sm.byClass[p][i] = m.requests.WithLabelValues(proto, site, class)
		}
		sm.duration[p] = m.duration.WithLabelValues(proto, site)
	}
	return sm
}

// request counts one answered request of proto ("h3" or "tcp") and, unless
// it was a stream, observes its duration.
func (sm *siteMetrics) request(proto string, status int, d time.Duration, stream bool) {
	p := 0
	if proto != protos[0] {
		p = 1
	}
	i := status/100 - 1
	if status == statusClientClosed {
		i = len(statusClasses) - 1
	}
	if i >= 0 && i < len(statusClasses) {
		sm.byClass[p][i].Inc()
	}
	if !stream {
		sm.duration[p].Observe(d.Seconds())
	}
}
