package upstream

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the upstream counters. One Metrics may serve several pools;
// series are labelled by backend address.
type Metrics struct {
	// ConnsOpened counts upstream TCP connections dialled, by backend and
	// reason: "new" grows a lease's set, "replace" stands in for one the
	// backend (or an error) closed.
	ConnsOpened *prometheus.CounterVec
	// ConnsClosed counts upstream connections closed, by backend and reason:
	// "session_end", "backend_closed", "error".
	ConnsClosed *prometheus.CounterVec
	// DialErrors counts failed dials by backend.
	DialErrors *prometheus.CounterVec
	// Retries counts requests retried on a fresh connection after a reused
	// one turned out dead before any response byte.
	Retries *prometheus.CounterVec
}

// NewMetrics creates the upstream metrics and registers them with reg,
// unless reg is nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ConnsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "conns_opened_total",
			Help: "Upstream TCP connections dialled, by backend and reason (new, replace).",
		}, []string{"backend", "reason"}),
		ConnsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "conns_closed_total",
			Help: "Upstream TCP connections closed, by backend and reason (session_end, backend_closed, error).",
		}, []string{"backend", "reason"}),
		DialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "dial_errors_total",
			Help: "Failed dials to a backend.",
		}, []string{"backend"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "retries_total",
			Help: "Requests retried on a fresh connection after a reused one was found dead before any response byte.",
		}, []string{"backend"}),
	}
	if reg != nil {
		reg.MustRegister(m.ConnsOpened, m.ConnsClosed, m.DialErrors, m.Retries)
	}
	return m
}
