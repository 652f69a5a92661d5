package upstream

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the upstream metrics. One Metrics may serve several pools;
// series are labelled by backend address (so two pools sharing a backend
// share its series: the healthy gauge shows the latest decision of either).
type Metrics struct {
	// ConnsOpened counts upstream TCP connections dialled, by backend and
	// reason: "new" grows a lease's set, "replace" stands in for one the
	// backend (or an error) closed.
	ConnsOpened *prometheus.CounterVec
	// ConnsClosed counts upstream connections closed, by backend and reason:
	// "session_end", "backend_closed", "error", "aborted", "moved" (the
	// session left the backend), "idle" (Config.KeepaliveIdle).
	ConnsClosed *prometheus.CounterVec
	// DialErrors counts failed dials by backend, TLS handshakes included.
	DialErrors *prometheus.CounterVec
	// TLSHandshakeFailures counts failed TLS handshakes with backends
	// (sessions' and health checks'), by backend and reason (see
	// TLSError.Reason): "expired" is a certificate to renew.
	TLSHandshakeFailures *prometheus.CounterVec
	// Retries counts requests sent again after an attempt that reached no
	// backend (a failed dial, or a reused connection found dead before any
	// response byte), by the backend of the failed attempt.
	Retries *prometheus.CounterVec
	// ConnWaits counts requests that found every connection of their lease
	// busy, below the lease's bound, and waited for one that was about to
	// be free (a response arriving, or an exchange whose client went away)
	// instead of growing the set, by backend and outcome: "reused" (one
	// came free) or "dialled" (none did within the wait, and the request
	// dialled a new connection).
	ConnWaits *prometheus.CounterVec
	// Healthy is 1 while a backend is healthy, 0 while not.
	Healthy *prometheus.GaugeVec
	// HealthCheckFailures counts failed active health checks by backend.
	HealthCheckFailures *prometheus.CounterVec
	// PassiveFailures counts request failures held against a backend by
	// passive health checking, by backend and reason: "dial",
	// "response_header_timeout", "status", "broken" (reset, closed or
	// not HTTP before the response header ended).
	PassiveFailures *prometheus.CounterVec
	// SessionMoves counts sessions that left a backend for another, by the
	// backend they left and reason: "unhealthy", "unreachable", or
	// "reload" (an Update removed the backend, see Pool.Update).
	SessionMoves *prometheus.CounterVec
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
			Help: "Upstream TCP connections closed, by backend and reason (session_end, backend_closed, error, aborted, moved, idle).",
		}, []string{"backend", "reason"}),
		DialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "dial_errors_total",
			Help: "Failed dials to a backend, TLS handshakes included.",
		}, []string{"backend"}),
		TLSHandshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "tls_handshake_failures_total",
			Help: "Failed TLS handshakes with a backend, by backend and reason (unknown_authority, name_mismatch, expired, not_yet_valid, bad_certificate, timeout, handshake).",
		}, []string{"backend", "reason"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "retries_total",
			Help: "Requests sent again after an attempt that reached no backend (failed dial, or a reused connection dead before any response byte), by the backend of the failed attempt.",
		}, []string{"backend"}),
		ConnWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "conn_waits_total",
			Help: "Requests that waited for a session's busy upstream connection about to be free instead of dialling a new one, by backend and outcome (reused, dialled).",
		}, []string{"backend", "outcome"}),
		Healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "healthy",
			Help: "Whether a backend is healthy (1) or not (0).",
		}, []string{"backend"}),
		HealthCheckFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "health_check_failures_total",
			Help: "Failed active health checks, by backend.",
		}, []string{"backend"}),
		PassiveFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "passive_failures_total",
			Help: "Request failures counted by passive health checks, by backend and reason (dial, response_header_timeout, status, broken: reset, closed or not HTTP before the response header ended).",
		}, []string{"backend", "reason"}),
		SessionMoves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "upstream", Name: "session_moves_total",
			Help: "Sessions that left a backend for another, by the backend they left and reason (unhealthy, unreachable, reload: the configuration no longer lists it).",
		}, []string{"from", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.ConnsOpened, m.ConnsClosed, m.DialErrors, m.TLSHandshakeFailures, m.Retries, m.ConnWaits,
			m.Healthy, m.HealthCheckFailures, m.PassiveFailures, m.SessionMoves)
	}
	return m
}
