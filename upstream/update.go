package upstream

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"slices"

	"go.uber.org/zap"
)

// Change is a configuration checked for a pool and ready to apply to it:
// Prepare makes one without touching the pool, Apply applies it. The proxy
// prepares the changes of a reload while it builds the new configuration,
// and applies them only once that is complete, so that a reload that fails
// later changes no pool.
type Change struct {
	pool     *Pool
	cfg      Config        // checked
	tlsConfs []*tls.Config // of cfg's backends; nil: plain
}

// Update serves cfg from now on, in place: Prepare, then Apply. It fails,
// and changes nothing, when cfg is invalid. Every setting can change this
// way; none needs a new pool (issue 14: a reload keeps sessions on their
// backend):
//
//   - A backend whose address stays (the k-th listing of an address is the
//     k-th of before) is the same Backend: its leases, their connections,
//     its health and its passive failures stay. Its sessions do not move.
//   - An added backend joins, healthy, for new sessions and moves. When
//     the pool was started, the health checker restarts, so it is checked
//     at once.
//   - A removed backend takes no new exchange from then on, and its
//     sessions' idle connections close at once ("moved"). Requests in
//     flight there finish, over their connections, which then close. Each
//     session moves once, at its next request, as a move off an unhealthy
//     backend does (logged "session moved", counted in SessionMoves with
//     reason "reload"): to the healthy backend its policy picks from that
//     request (its cookie or header), and the request goes there, even
//     while older ones still finish on the removed backend. A request
//     that was waiting for one of the session's connections moves it at
//     once. Dedicated connections (WebSocket, upgrades: see Lease.Upgrade)
//     keep running until they end or the session does; nothing else
//     limits them.
//   - When the TLS settings change (Config.TLS: roots, server name, client
//     certificates, verification), the connections open were made and
//     verified under the old ones: every backend counts as removed, and
//     the backends of the new configuration join. A session then moves to
//     the new backend of its own address when there is a healthy one, so
//     it keeps its backend and gets new connections.
//   - The policy applies to picks from then on (a session picks once: it
//     keeps its backend); the health settings at the next check (with the
//     checker restarted when they changed, started or stopped when the URI
//     is set or cleared); passive health settings at the next failure,
//     and kept backends' health is decided again under them at once
//     (failures beyond a smaller MaxFails are forgotten, all when passive
//     checks are off; a backend is no longer down for active checks that
//     are off). Tries and timeouts apply to requests that start from then
//     on; MaxConnsPerSession to the next connection a session would dial
//     (a session above a smaller bound keeps its connections: its set never
//     rotates); KeepaliveIdle from a connection's next idle period.
//
// A request that started before the update keeps the tries and timeouts
// it started with. Updating a closed pool updates its leases' configuration
// but starts no checker. Updates of one pool are serialized.
func (p *Pool) Update(cfg Config) error {
	ch, err := p.Prepare(cfg)
	if err != nil {
		return err
	}
	ch.Apply()
	return nil
}

// Prepare checks cfg as New does and returns the change that applies it to
// p. It has no effect on p.
func (p *Pool) Prepare(cfg Config) (*Change, error) {
	cfg, err := cfg.checked()
	if err != nil {
		return nil, fmt.Errorf("upstream pool: %w", err)
	}
	tlsConfs, err := checkedTLS(cfg)
	if err != nil {
		return nil, fmt.Errorf("upstream pool: %w", err)
	}
	return &Change{pool: p, cfg: cfg, tlsConfs: tlsConfs}, nil
}

// Apply applies the change to its pool, as Pool.Update describes. It
// cannot fail.
func (ch *Change) Apply() {
	p, cfg := ch.pool, ch.cfg
	p.updating.Lock()
	defer p.updating.Unlock()
	old := p.state()

	sameTLS := equalTLS(old.cfg.TLS, cfg.TLS)
	byAddr := map[string][]*Backend{} // old backends not yet matched
	if sameTLS {
		for _, b := range old.backends {
			byAddr[b.Addr] = append(byAddr[b.Addr], b)
		}
	}
	backends := make([]*Backend, len(cfg.Backends))
	var kept, added []*Backend
	for i, addr := range cfg.Backends {
		if q := byAddr[addr]; len(q) > 0 {
			backends[i], byAddr[addr] = q[0], q[1:]
			kept = append(kept, q[0])
			continue
		}
		backends[i] = p.newBackend(addr, ch.tlsConfs, i)
		added = append(added, backends[i])
	}
	var removed []*Backend
	for _, b := range old.backends {
		if !slices.Contains(kept, b) {
			removed = append(removed, b)
		}
	}
	if !sameTLS {
		warnInsecure(p.logger, cfg)
	}

	// New work sees cfg from here. Removed backends are marked after, so
	// that a lease that finds its backend removed picks among cfg's.
	p.st.Store(newState(cfg, backends))
	for _, b := range removed {
		b.removed.Store(true)
		b.stopRecovery()
	}
	p.mu.Lock()
	restart := p.started && !p.closed && (old.cfg.Health != cfg.Health || len(added) > 0)
	p.mu.Unlock()
	if restart {
		p.stopChecker() // first: no check of the old settings records after reconsider
	}
	for _, b := range kept {
		b.reconsider(cfg)
	}
	if restart {
		p.mu.Lock()
		p.startCheckerLocked(cfg.Health)
		p.mu.Unlock()
	}

	leases := 0
	for _, b := range removed {
		for _, l := range b.leaseList() {
			leases++
			l.drain(b)
		}
	}
	p.logger.Info("upstream configuration updated",
		zap.Strings("backends", cfg.Backends), zap.Int("kept", len(kept)), zap.Int("added", len(added)),
		zap.Int("removed", len(removed)), zap.Int("leaving_sessions", leases), zap.Bool("tls_changed", !sameTLS))
}

// reconsider decides a kept backend's health again under cfg, the pool's
// configuration now.
func (b *Backend) reconsider(cfg Config) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cfg.Health.URI == "" {
		b.activeDown = false
	}
	switch ps := cfg.Passive; {
	case ps.FailDuration == 0:
		b.fails = nil
	case len(b.fails) > ps.MaxFails:
		b.fails = append(b.fails[:0], b.fails[len(b.fails)-ps.MaxFails:]...)
	}
	b.decideLocked("configuration updated")
}

// equalTLS reports whether a and b make the same connections: the same
// roots (by content), server name, verification and client certificates.
func equalTLS(a, b *TLS) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.ServerName != b.ServerName || a.InsecureSkipVerify != b.InsecureSkipVerify ||
		!a.RootCAs.Equal(b.RootCAs) || len(a.Certificates) != len(b.Certificates) {
		return false
	}
	for i := range a.Certificates {
		ca, cb := a.Certificates[i].Certificate, b.Certificates[i].Certificate
		if len(ca) != len(cb) {
			return false
		}
		for j := range ca {
			if !bytes.Equal(ca[j], cb[j]) {
				return false
			}
		}
	}
	return true
}
