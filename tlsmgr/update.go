package tlsmgr

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Update replaces the manager's Config with cfg, as a configuration reload
// does (issue 14), without a restart and without touching the certificates
// of the names that both configs have.
//
// cfg is validated as New validates it, and its certificate files are read
// and checked; an error changes nothing (the running config keeps serving)
// and carries the positions of the sites (Site.Source) as New's do. So is a
// change of the settings that New bakes into the cache, the local CA and
// the challenge solvers (DataDir, Redis, LeafLifetime, HTTPPort, TLSPort,
// ListenHost, RenewCheckInterval, OCSPCheckInterval, RenewalWindowRatio):
// they need a restart. HTTPPort may change while the running config or
// cfg obtains nothing from ACME (a reload that adds the first ACME site
// opens the HTTP port). Config.Registerer is not looked at; the metrics stay
// where New registered them.
//
// Otherwise, before Update switches: the certificate files are loaded (a
// replaced file's new certificate included) and the local CA's new names
// are issued or loaded. Then every handshake follows the new config (each
// one sees the old config or the new one, never a mix): client CAs,
// on-demand sites and the ask endpoint included. After the switch, the
// certificates of removed names are unloaded from the cache, which ends
// their renewal, their background obtaining is cancelled, and the new ACME
// names are obtained in the background, as Start does: Update never waits
// for an ACME CA, and CertificatesReady reports them missing until they
// arrive. A name whose issuer is unchanged keeps its certificate: it is
// neither issued nor ordered again. A name that moves to another issuer
// gets a certificate from the new one.
//
// A handshake for a removed name fails as for any name no site serves (or
// gets the default server name's certificate), and is logged as such. ctx
// bounds the synchronous part only. Update may be called after Start has
// succeeded and before Stop; calls are serialized.
func (m *Manager) Update(ctx context.Context, cfg Config) error {
	m.mu.Lock()
	loaded, stopped := m.loaded, m.stopped
	m.mu.Unlock()
	switch {
	case stopped:
		return errors.New("update tls manager: manager is stopped")
	case !loaded:
		return errors.New("update tls manager: not started")
	}
	m.updateMu.Lock()
	defer m.updateMu.Unlock()

	p, err := cfg.plan()
	if err != nil {
		return err
	}
	// The HTTP-01 solvers are built with the HTTP port: it may change
	// (a reload opens the port for its first ACME site) while one side
	// has no ACME issuance, so no solver of the old config lives on.
	if err := m.checkRestart(cfg, !p.usesACME() || !m.plan().usesACME()); err != nil {
		return err
	}
	pairs := make([]certPair, len(p.files))
	var errs []error
	for i, f := range p.files {
		if pairs[i], err = loadCertFiles(f.cert, f.key); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	old := m.plan()
	p.askURL = cfg.OnDemandAsk
	switch {
	case cfg.OnDemandAsk == old.askURL:
		p.ask = old.ask
	case cfg.OnDemandAsk != "":
		if p.ask, err = newAsker(cfg.OnDemandAsk); err != nil {
			return err
		}
	}
	// An issuance whose key and default name are unchanged keeps its
	// certmagic.Config: the same ACME account and issuer, and the
	// background work in flight stays its own. (The on-demand decisions
	// look their issuance up in the current plan.)
	for _, u := range p.issuances {
		if o := old.issuanceByKey(u.key); o != nil && p.defaultName == old.defaultName {
			u.magic, u.acme = o.magic, o.acme
		} else {
			m.newMagic(u, cfg, p)
		}
	}
	p.served = servedNames(p)

	m.next.Store(p)
	defer m.next.Store(nil)
	if err := m.prepare(ctx, old, p, pairs); err != nil {
		if p.ask != nil && p.ask != old.ask {
			p.ask.close()
		}
		return err
	}
	m.cur.Store(p)
	m.settings.HTTPPort = cfg.HTTPPort
	m.noCert.forget()
	m.retire(ctx, old, p)
	return nil
}

// prepare loads p's certificate files (read and checked as pairs) and
// issues or loads the local-CA names that old does not have, before p is
// switched to. On an error it unloads what it loaded, leaving old whole.
func (m *Manager) prepare(ctx context.Context, old, p *plan, pairs []certPair) error {
	var errs []error
	for i, f := range p.files {
		if err := m.cacheFiles(ctx, p, f, pairs[i]); err != nil {
			errs = append(errs, err)
		}
	}
	var added []string
	if err := errors.Join(errs...); err == nil {
		// Names that another issuer of old serves are issued after the
		// switch (see retire): certmagic would take the other issuer's
		// certificate for the name's.
		for _, name := range p.issuances[0].names {
			if !old.manages(name) {
				added = append(added, name)
			}
		}
		if err := m.manageLocal(ctx, p, added); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	if err == nil {
		return nil
	}
	m.cache.Remove(slices.DeleteFunc(slices.Clone(p.cachedFiles), func(h string) bool { return slices.Contains(old.cachedFiles, h) }))
	m.unload(added, localCAIssuerKey)
	return err
}

// retire finishes the switch from old to p: it stops the background work
// and unloads the certificates of the names that p no longer gives the
// same issuer, unloads the certificate files p has not, then issues the
// local-CA names still without a certificate and starts obtaining p's new
// ACME names. Its errors are logged: p serves already.
func (m *Manager) retire(ctx context.Context, old, p *plan) {
	var removed []string
	for _, o := range old.issuances {
		if o.key.onDemand {
			continue
		}
		u := p.issuanceByKey(o.key)
		var gone []string
		for _, name := range o.names {
			if u == nil || !slices.Contains(u.names, name) {
				gone = append(gone, name)
				if cancel, ok := m.acmeJobs[acmeJob{o.key, name}]; ok {
					cancel()
					delete(m.acmeJobs, acmeJob{o.key, name})
				}
			}
		}
		m.unload(gone, issuerKeyOf(o))
		removed = append(removed, gone...)
	}
	m.onDemandSeen.Range(func(k, v any) bool {
		name, key := k.(string), v.(issuanceKey)
		if u := p.issuanceByKey(key); u == nil || !u.mayObtain(name) {
			m.onDemandSeen.Delete(name)
			if o := old.issuanceByKey(key); o != nil {
				m.unload([]string{name}, issuerKeyOf(o))
				removed = append(removed, name)
			}
		}
		return true
	})
	m.cache.Remove(slices.DeleteFunc(slices.Clone(old.cachedFiles), func(h string) bool { return slices.Contains(p.cachedFiles, h) }))
	if old.ask != nil && old.ask != p.ask {
		old.ask.close()
	}

	var missing []string
	for _, name := range p.issuances[0].names {
		if !m.hasCertFor(name) && !m.hasCertFor(asciiName(name)) {
			missing = append(missing, name)
		}
	}
	if err := m.manageLocal(ctx, p, missing); err != nil {
		m.logger.Error("issuing local ca certificates after a config update", zap.Error(err))
	}
	acmeNames, err := m.manageACME(p)
	if err != nil {
		m.logger.Error("managing acme certificates after a config update", zap.Error(err))
	}
	m.logger.Info("tls config updated",
		zap.Int("cert_files", len(p.files)),
		zap.Strings("local_ca_names", p.issuances[0].names),
		zap.Strings("acme_names_pending", acmeNames),
		zap.Strings("unloaded", removed),
		zap.Bool("on_demand", p.ask != nil))
}

// mayManage reports whether p may obtain or renew a certificate for name:
// a site lists it, exactly or by a wildcard, or a catch-all may take it
// (whose on-demand decisions vet it). A nil p may manage nothing.
func (p *plan) mayManage(name string) bool {
	if p == nil {
		return false
	}
	return p.catchAll[0] != nil || p.lists(name) || p.lists(asciiName(name))
}

// manages reports whether p manages name from the start, with any issuer.
func (p *plan) manages(name string) bool {
	return slices.ContainsFunc(p.issuances, func(u *issuance) bool { return slices.Contains(u.names, name) })
}

// unload removes the managed certificates of names that the issuer with
// issuerKey issued from the cache, which ends their maintenance.
func (m *Manager) unload(names []string, issuerKey string) {
	if len(names) == 0 {
		return
	}
	subjects := make([]certmagic.SubjectIssuer, 0, 2*len(names))
	for _, name := range names {
		subjects = append(subjects, certmagic.SubjectIssuer{Subject: name, IssuerKey: issuerKey})
		if a := asciiName(name); a != name {
			subjects = append(subjects, certmagic.SubjectIssuer{Subject: a, IssuerKey: issuerKey})
		}
	}
	m.cache.RemoveManaged(subjects)
}

// issuerKeyOf returns the certmagic issuer key of u's certificates.
func issuerKeyOf(u *issuance) string {
	if u.acme != nil {
		return u.acme.IssuerKey()
	}
	return localCAIssuerKey
}

// noteOnDemand records that the on-demand issuance with key served a
// certificate for serverName (see Manager.onDemandSeen).
func (m *Manager) noteOnDemand(serverName string, key issuanceKey) {
	name := strings.ToLower(strings.TrimSuffix(serverName, ".")) // SNI is ASCII already
	if v, ok := m.onDemandSeen.Load(name); ok && v.(issuanceKey) == key {
		return
	}
	m.onDemandSeen.Store(name, key)
}

// checkRestart reports the settings of cfg that differ from New's (the HTTP
// port: from the last Update's) and that only a restart can change; the
// HTTP port may change when httpPortFree.
func (m *Manager) checkRestart(cfg Config, httpPortFree bool) error {
	was := m.settings
	var errs []error
	differ := func(setting string, old, new any) {
		errs = append(errs, fmt.Errorf("tls %s changed from %v to %v, which needs a restart", setting, old, new))
	}
	if cfg.DataDir != was.DataDir {
		differ("data directory", fmt.Sprintf("%q", was.DataDir), fmt.Sprintf("%q", cfg.DataDir))
	}
	if describeRedis(cfg.Redis) != describeRedis(was.Redis) {
		differ("storage", describeRedis(was.Redis), describeRedis(cfg.Redis))
	}
	if cfg.LeafLifetime != was.LeafLifetime {
		differ("leaf lifetime", was.LeafLifetime, cfg.LeafLifetime)
	}
	if cfg.HTTPPort != was.HTTPPort && !httpPortFree {
		differ("http challenge port", was.HTTPPort, cfg.HTTPPort)
	}
	if cfg.TLSPort != was.TLSPort {
		differ("tls challenge port", was.TLSPort, cfg.TLSPort)
	}
	if cfg.ListenHost != was.ListenHost {
		differ("listen host", fmt.Sprintf("%q", was.ListenHost), fmt.Sprintf("%q", cfg.ListenHost))
	}
	if cfg.RenewCheckInterval != was.RenewCheckInterval {
		differ("renew check interval", was.RenewCheckInterval, cfg.RenewCheckInterval)
	}
	if cfg.OCSPCheckInterval != was.OCSPCheckInterval {
		differ("ocsp check interval", was.OCSPCheckInterval, cfg.OCSPCheckInterval)
	}
	if cfg.RenewalWindowRatio != was.RenewalWindowRatio {
		differ("renewal window ratio", was.RenewalWindowRatio, cfg.RenewalWindowRatio)
	}
	return errors.Join(errs...)
}

// describeRedis names a Redis storage setting for checkRestart, without
// its password: "files" for none.
func describeRedis(r *Redis) string {
	if r == nil {
		return "files"
	}
	c := *r
	if c.Password != "" {
		c.Password = "(set)"
	}
	return fmt.Sprintf("redis %+v", c)
}
