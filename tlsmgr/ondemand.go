package tlsmgr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	// askTimeout bounds one question to the on-demand ask endpoint; the TLS
	// handshake that needs the certificate waits meanwhile.
	askTimeout = 5 * time.Second

	// askBodyLimit is how much of an ask response is read (and dropped) so
	// that its connection can be reused.
	askBodyLimit = 4 << 10
)

// asker asks Config.OnDemandAsk whether a certificate may be obtained for a
// name. It owns its transport; close releases the idle connections.
type asker struct {
	url       *url.URL
	transport *http.Transport
	client    *http.Client
}

// newAsker returns an asker for rawURL, an absolute http(s) URL.
func newAsker(rawURL string) (*asker, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("tls on-demand ask url %q: %w", rawURL, err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &asker{
		url:       u,
		transport: tr,
		client: &http.Client{
			Transport: tr,
			Timeout:   askTimeout,
			// A redirect is not a 200: the endpoint answers itself.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// allows returns nil if the ask endpoint answers 200 for name, else why not.
func (a *asker) allows(ctx context.Context, name string) error {
	u := *a.url
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()
	// Errors name the endpoint by host only: its query may hold a secret.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("ask endpoint %s: %w", a.url.Host, err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // without the URL
		}
		return fmt.Errorf("ask endpoint %s: %w", a.url.Host, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, askBodyLimit))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ask endpoint %s answered %s", a.url.Host, resp.Status)
	}
	return nil
}

// close releases the asker's idle connections.
func (a *asker) close() { a.transport.CloseIdleConnections() }

// mayObtain reports whether the on-demand issuance u may obtain a
// certificate for name, an ASCII name from a ClientHello: one of its names,
// a match of one of its wildcards, or any name for a catch-all.
func (u *issuance) mayObtain(name string) bool {
	if u.anyName || u.exact[name] {
		return true
	}
	i := strings.IndexByte(name, '.')
	return i > 0 && u.wild["*"+name[i:]]
}

// decisionFunc returns the certmagic.OnDemandConfig.DecisionFunc of an
// on-demand issuance. certmagic calls it before obtaining or renewing a
// certificate at a handshake; an error denies it, and the handshake fails.
// It allows only the issuance's own names, and only after the ask
// endpoint agreed: no name is ever issued without asking.
//
// The issuance is looked up by key in the current plan at each decision, so
// that an Update that changes the site's names applies (and one that
// removes the site denies everything).
func (m *Manager) decisionFunc(key issuanceKey) func(ctx context.Context, name string) error {
	// Denials are sampled: anyone can cause them. (Made here, only for an
	// on-demand issuance: zap's sampler allocates a 458 KB table.)
	denialLog := sampled(m.logger)
	return func(ctx context.Context, name string) error {
		name = strings.ToLower(name)
		p := m.plan()
		var err error
		if u := p.issuanceByKey(key); u == nil || !u.mayObtain(name) {
			err = fmt.Errorf("%q is not a name of an on-demand site", name)
		} else if p.ask == nil { // Validate requires an ask URL; be sure anyway
			err = fmt.Errorf("%q: no on-demand ask endpoint", name)
		} else {
			err = p.ask.allows(ctx, name)
		}
		if err != nil {
			m.metrics.onDemand.WithLabelValues("denied").Inc()
			denialLog.Info("on-demand certificate denied", zap.String("identifier", name), zap.Error(err))
			return err
		}
		m.metrics.onDemand.WithLabelValues("allowed").Inc()
		m.logger.Info("on-demand certificate allowed", zap.String("identifier", name))
		return nil
	}
}

// sampled returns logger limited to the first 10 entries per message per
// second, then every 100th: for logs that clients can cause at will.
func sampled(logger *zap.Logger) *zap.Logger {
	return logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 10, 100)
	}))
}
