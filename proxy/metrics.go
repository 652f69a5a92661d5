package proxy

import "github.com/prometheus/client_golang/prometheus"

// statusClasses are the values of the requests counter's "class" label.
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx", "499"}

// metrics are the proxy's Prometheus series.
type metrics struct {
	sessionsOpened *prometheus.CounterVec // by proto: h3, tcp
	sessionsActive prometheus.Gauge
	pathChanges    *prometheus.CounterVec // by kind: migration, nat_rebinding
	requests       *prometheus.CounterVec // by proto and status class
	tooEarly       prometheus.Counter     // 0-RTT requests answered 425
	refused        *prometheus.CounterVec // client errors refused before the backend, by reason
	admission      *prometheus.CounterVec // new QUIC connections sent a Retry or refused, by decision

	// byClass caches the requests counters so counting a request neither
	// allocates nor hashes labels.
	byClass map[string]*[len(statusClasses)]prometheus.Counter
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
			Help: "Requests answered, by client protocol (h3, tcp) and status class (499: client went away).",
		}, []string{"proto", "class"}),
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
		byClass: map[string]*[len(statusClasses)]prometheus.Counter{},
	}
	for _, proto := range []string{"h3", "tcp"} {
		var cs [len(statusClasses)]prometheus.Counter
		for i, class := range statusClasses {
			cs[i] = m.requests.WithLabelValues(proto, class)
		}
		m.byClass[proto] = &cs
	}
	if reg != nil {
		reg.MustRegister(m.sessionsOpened, m.sessionsActive, m.pathChanges, m.requests, m.tooEarly, m.refused, m.admission)
	}
	return m
}

// request counts one answered request.
func (m *metrics) request(proto string, status int) {
	i := status/100 - 1
	if status == statusClientClosed {
		i = len(statusClasses) - 1
	}
	if cs := m.byClass[proto]; cs != nil && i >= 0 && i < len(statusClasses) {
		cs[i].Inc()
	}
}
