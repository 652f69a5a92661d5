package tlsmgr

import (
	"net/http"
	"slices"

	"github.com/caddyserver/certmagic"
)

// newMagic builds u, an issuance of p, its certmagic.Config on m's cache.
func (m *Manager) newMagic(u *issuance, cfg Config, p *plan) {
	mc := certmagic.Config{
		Storage:            m.storage,
		Logger:             m.logger,
		OnEvent:            m.onEvent,
		ShouldEmitFunc:     shouldEmit,
		RenewalWindowRatio: cfg.RenewalWindowRatio, // certmagic's default when 0
		DefaultServerName:  p.defaultName,          // empty SNI
		FallbackServerName: p.defaultName,          // SNI that matches no certificate
		// Not nil, or certmagic.New adds a Let's Encrypt issuer of its own.
		Issuers: []certmagic.Issuer{},
	}
	if u.key.onDemand {
		mc.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: m.decisionFunc(u.key)}
	}
	u.magic = certmagic.New(m.cache, mc)
	if !u.key.acme {
		u.magic.Issuers = []certmagic.Issuer{m.ca}
		return
	}
	s := u.key.settings
	u.acme = certmagic.NewACMEIssuer(u.magic, certmagic.ACMEIssuer{
		CA:                      s.CA, // Let's Encrypt when empty
		Email:                   s.Email,
		Agreed:                  true,
		TrustedRoots:            u.roots, // system roots when nil
		DisableHTTPChallenge:    s.DisableHTTPChallenge,
		DisableTLSALPNChallenge: s.DisableTLSALPNChallenge,
		// Where roamgate's own listeners are; certmagic binds them only
		// while they are free (see Start).
		AltHTTPPort:    cfg.HTTPPort,
		AltTLSALPNPort: cfg.TLSPort,
		ListenHost:     cfg.ListenHost,
		Logger:         m.logger,
	})
	u.magic.Issuers = []certmagic.Issuer{u.acme}
}

// HTTPChallengeHandler returns a handler for the plain-HTTP listener: it
// answers ACME HTTP-01 challenge requests (RFC 8555 §8.3) of any of the
// manager's ACME setups, including those started by another process that
// shares the data directory, and passes every other request to next.
// The ACME setups are those of the current plan, so that the handler
// follows Update.
func (m *Manager) HTTPChallengeHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if certmagic.LooksLikeHTTPChallenge(r) {
			for _, u := range m.plan().issuances {
				if u.acme != nil && u.acme.HandleHTTPChallenge(w, r) {
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// UsesACME reports whether some site may get certificates from an ACME CA,
// now or on demand: the proxy must then run its plain-HTTP listener for
// HTTP-01 challenges.
func (m *Manager) UsesACME() bool { return m.plan().usesACME() }

// UsesACME reports, before any Manager exists, whether a Manager for cfg
// would use ACME (false when cfg does not validate): the proxy binds its
// plain-HTTP port before the Manager is built.
func (cfg Config) UsesACME() bool {
	p, err := cfg.plan()
	return err == nil && p.usesACME()
}

func (p *plan) usesACME() bool {
	return slices.ContainsFunc(p.issuances, func(u *issuance) bool { return u.key.acme })
}
