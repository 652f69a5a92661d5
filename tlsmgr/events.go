package tlsmgr

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// metrics are the Manager's Prometheus counters.
type metrics struct {
	obtained *prometheus.CounterVec // issuer, renewal
	failures *prometheus.CounterVec // issuer, renewal
	onDemand *prometheus.CounterVec // result
}

// newMetrics creates the counters and registers them with reg, if not nil.
// Counters that reg already has (another Manager's, as across a reload)
// are shared.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		obtained: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "tls", Name: "certificates_obtained_total",
			Help: "Certificates obtained or renewed, by issuer (local, or the ACME CA's host and path) and whether it was a renewal.",
		}, []string{"issuer", "renewal"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "tls", Name: "certificate_failures_total",
			Help: "Failed attempts to obtain or renew a certificate, by issuer and whether it was a renewal; certmagic retries with backoff.",
		}, []string{"issuer", "renewal"}),
		onDemand: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roamgate", Subsystem: "tls", Name: "on_demand_decisions_total",
			Help: "Decisions on obtaining or renewing a certificate at a TLS handshake: allowed, or denied (not a site's name, or refused by the ask endpoint).",
		}, []string{"result"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []**prometheus.CounterVec{&m.obtained, &m.failures, &m.onDemand} {
		err := reg.Register(*c)
		if err == nil {
			continue
		}
		are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
		if !ok {
			return nil, fmt.Errorf("register tls metrics: %w", err)
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, fmt.Errorf("register tls metrics: %w", err)
		}
		*c = existing
	}
	return m, nil
}

// shouldEmit is the certmagic configs' ShouldEmitFunc: every event but the
// one certmagic emits at every handshake.
func shouldEmit(event string) bool { return event != "tls_get_certificate" }

// onEvent is the certmagic configs' OnEvent: it logs and counts certificate
// events. certmagic calls it synchronously, during issuance and
// maintenance (and, for on-demand names, within a handshake that waits for
// the certificate anyway), so it does little: at most one read of the new
// certificate from storage. It vetoes one thing only: obtaining or renewing
// a certificate for a name that no site of the current plan (or of the one
// an Update prepares) lists, as when
// an Update removed the name while its order or renewal was under way.
func (m *Manager) onEvent(ctx context.Context, event string, data map[string]any) error {
	id := zap.String("identifier", str(data["identifier"]))
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtaining":
		if name := str(data["identifier"]); !m.plan().mayManage(name) && !m.next.Load().mayManage(name) {
			m.logger.Info("not obtaining a certificate for a name no longer configured", id, zap.Bool("renewal", renewal))
			return fmt.Errorf("%q is no longer configured", name)
		}
		fields := []zap.Field{id, zap.Bool("renewal", renewal)}
		if renewal {
			fields = append(fields, zap.String("issuer", str(data["issuer"])), zap.Bool("forced", data["forced"] == true))
		}
		m.logger.Info("obtaining certificate", fields...)

	case "cert_obtained":
		issuer := str(data["issuer"])
		m.metrics.obtained.WithLabelValues(issuer, strconv.FormatBool(renewal)).Inc()
		fields := []zap.Field{id, zap.String("issuer", issuer), zap.Bool("renewal", renewal)}
		if d, ok := data["remaining"].(time.Duration); ok {
			fields = append(fields, zap.Duration("previous_remaining", d)) // of the certificate renewed
		}
		if notAfter, ok := m.storedNotAfter(ctx, str(data["certificate_path"])); ok {
			fields = append(fields, zap.Time("not_after", notAfter), zap.Duration("valid_for", time.Until(notAfter).Round(time.Second)))
		}
		m.logger.Info("certificate obtained", fields...)

	case "cert_failed":
		issuers, _ := data["issuers"].([]string)
		issuer := strings.Join(issuers, ",")
		m.metrics.failures.WithLabelValues(issuer, strconv.FormatBool(renewal)).Inc()
		err, _ := data["error"].(error)
		fields := []zap.Field{id, zap.String("issuer", issuer), zap.Bool("renewal", renewal), zap.Error(err)}
		if d, ok := data["remaining"].(time.Duration); ok {
			fields = append(fields, zap.Duration("remaining", d)) // the current certificate keeps serving
		}
		if p, ok := errors.AsType[acme.Problem](err); ok { // the CA's own reason (RFC 8555 §6.7)
			fields = append(fields, zap.String("problem_type", p.Type), zap.String("problem_detail", p.Detail), zap.Int("problem_status", p.Status))
		}
		m.logger.Error("obtaining certificate failed", fields...)

	case "cert_ocsp_revoked":
		subjects, _ := data["subjects"].([]string)
		revokedAt, _ := data["revoked_at"].(time.Time)
		reason, _ := data["reason"].(int)
		m.logger.Warn("certificate revoked according to its ocsp staple; renewing it",
			zap.Strings("identifiers", subjects), zap.Time("revoked_at", revokedAt), zap.Int("reason", reason))

	default: // cached_managed_cert, cached_unmanaged_cert
		if ce := m.logger.Check(zap.DebugLevel, "certificate event"); ce != nil {
			ce.Write(zap.String("event", event))
		}
	}
	return nil
}

// storedNotAfter returns the expiry of the certificate stored at key.
func (m *Manager) storedNotAfter(ctx context.Context, key string) (time.Time, bool) {
	if key == "" {
		return time.Time{}, false
	}
	data, err := m.storage.Load(ctx, key)
	if err != nil {
		return time.Time{}, false
	}
	leaf, err := parseCertificatePEM(data)
	if err != nil {
		return time.Time{}, false
	}
	return leaf.NotAfter, true
}

// str returns v if it is a string, else "".
func str(v any) string {
	s, _ := v.(string)
	return s
}
