package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/upstream"
)

// snapshot is what a configuration compiles to for serving: the router of
// each site port and the upstream pools. Requests read a port's router once
// (an atomic pointer), so each sees one snapshot whole; Reload swaps them.
type snapshot struct {
	cfg     *configs.Config
	order   []int // site ports in first-seen order
	routers map[int]*router
	pools   []*poolEntry
	// changes are the new settings of pools kept from the snapshot served
	// before, prepared by compile and applied by Reload when it commits.
	changes []*upstream.Change
}

// poolEntry is a reverse_proxy's pool and what identifies it across
// reloads.
type poolEntry struct {
	key  string // the site and path it serves: "example.com /api/* #0"
	fp   string // its settings, positions left out
	pos  configs.Position
	pool *upstream.Pool
}

// compile builds a snapshot of cfg. With old, a reverse_proxy at the same
// place (site, path, which one of that path's) keeps old's pool, so the
// sessions holding leases on it keep their backend and their upstream
// connections: as it is when its settings are unchanged, else with the
// new ones prepared in snap.changes, which Reload applies when it commits
// (upstream.Pool.Update: backends that stay keep their sessions, removed
// ones drain). compile changes no pool of old. Other reverse_proxies get
// new pools, returned in fresh (not started). On error, fresh pools are
// closed and nil returned; nothing was applied.
func (s *Server) compile(cfg *configs.Config, old *snapshot) (snap *snapshot, fresh []*upstream.Pool, err error) {
	defer func() {
		if err != nil {
			for _, p := range fresh {
				_ = p.Close()
			}
			snap, fresh = nil, nil
		}
	}()
	kept := map[string]*poolEntry{} // by place
	if old != nil {
		for _, pe := range old.pools {
			kept[pe.key] = pe
		}
	}
	snap = &snapshot{cfg: cfg, routers: map[int]*router{}}
	logger := s.logger.Named("upstream")
	for _, sc := range cfg.Sites {
		st := &site{name: sc.Addresses[0].Text, headers: compileHeaderOps(sc.Headers), clientCAs: sc.TLS.ClientCAFiles, limits: siteLimits(sc.Limits)}
		st.metrics = s.metrics.forSite(st.name)
		if sc.Tunnel != nil {
			st.tunnel = newTunnelRoute(sc.Tunnel, len(sc.TLS.ClientCAFiles) > 0)
		}
		nth := map[string]int{} // reverse_proxies so far by path pattern
		for _, rc := range sc.Routes {
			rt := &route{match: configs.CompilePath(rc.Path), strip: rc.StripPrefix, headers: compileHeaderOps(rc.Headers)}
			switch {
			case rc.ReverseProxy != nil:
				// Its place: the site, the path it serves, and which
				// one of that path's it is; not its index, which
				// moves when a route is added before it.
				key := st.name + " " + fmt.Sprint(rc.Path) + " #" + strconv.Itoa(nth[fmt.Sprint(rc.Path)])
				nth[fmt.Sprint(rc.Path)]++
				pe := &poolEntry{key: key, fp: configs.Fingerprint(rc.ReverseProxy), pos: rc.ReverseProxy.Pos}
				if k := kept[pe.key]; k != nil {
					pe.pool = k.pool
					delete(kept, pe.key)
					if k.fp != pe.fp {
						// header_up/header_down are the route's (below); the
						// rest is the pool's, changed in place at commit.
						ch, err := preparePool(k.pool, rc.ReverseProxy, s.secret)
						if err != nil {
							return nil, fresh, err
						}
						snap.changes = append(snap.changes, ch)
					}
				} else {
					pool, err := newPool(rc.ReverseProxy, s.secret, logger, s.upMetrics)
					if err != nil {
						return nil, fresh, err
					}
					pe.pool = pool
					fresh = append(fresh, pool)
				}
				snap.pools = append(snap.pools, pe)
				rt.proxy = &proxyRoute{pool: pe.pool, headerUp: compileHeaderOps(rc.ReverseProxy.HeaderUp), headerDown: compileHeaderOps(rc.ReverseProxy.HeaderDown)}
			case rc.Respond != nil:
				rt.respond = &respondRoute{status: rc.Respond.Status, body: compileTemplate(rc.Respond.Body)}
			case rc.Redir != nil:
				rt.redir = &redirRoute{to: compileTemplate(rc.Redir.To), code: rc.Redir.Code}
			default:
				return nil, fresh, fmt.Errorf("%s: route without a handler", rc.Pos)
			}
			st.routes = append(st.routes, rt)
		}
		for _, a := range sc.Addresses {
			rtr := snap.routers[a.Port]
			if rtr == nil {
				rtr = newRouter()
				snap.routers[a.Port] = rtr
				snap.order = append(snap.order, a.Port)
			}
			rtr.add(a.Host, st)
		}
	}
	return snap, fresh, nil
}

// Reload serves cfg from now on, in place: every request sees the old
// configuration or the new one, never a mix of the two snapshots. Sites,
// routes, headers, limits, redirects, responses and tunnels change for the
// next request.
//
// A reverse_proxy at the same place (site, path) keeps its pool, so its
// sessions keep their backend and upstream connections. When its settings
// changed, they apply to the pool in place (upstream.Pool.Update): a
// session whose backend (same address) is still listed keeps it and its
// connections; a session whose backend was removed moves at its next
// request (logged, counted with reason "reload") while its requests in
// flight there finish over their connections, and its WebSockets and
// tunnels there run on until they end. A reverse_proxy at a new place gets
// a new pool; pools no reverse_proxy uses any more stop their health
// checks, their leases ending with their sessions.
//
// Pools are shared by the snapshots, so their changes are prepared while
// cfg compiles and applied only once it has compiled whole, before the
// routers swap: a request routed by the new configuration always gets the
// new pool settings; one the old routed a moment before reaches the pool
// with the new settings too (its headers are the old ones).
//
// A port a site names for the first time is bound and serving before
// anything switches (a port in use refuses the reload whole); a port no
// site names any more stops accepting, tells its clients to go away and
// closes once they have (within portDrainGrace); added back meanwhile,
// it takes its sockets back (takeOverPort). Ports that stay keep
// their sockets, so their connections are untouched. What the listeners
// are built from (default_bind, http_port, https_port, admin, zero_rtt,
// handshake rates, quic_lb, shared_keys, a larger header limit) cannot
// change: such a cfg is refused whole, as is one whose pools cannot be
// built or updated, and the server goes on as it was, no pool changed.
// Certificates are the caller's (tlsmgr.Manager).
func (s *Server) Reload(cfg *configs.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return errors.New("proxy: reload: server shut down")
	}
	if s.draining {
		return errors.New("proxy: reload: server draining (an upgrade handed over to another process)")
	}
	old := s.snap
	if err := needsRestart(old.cfg, cfg, old); err != nil {
		s.metrics.reloads.WithLabelValues("refused").Inc()
		return err
	}
	snap, fresh, err := s.compile(cfg, old)
	if err != nil {
		s.metrics.reloads.WithLabelValues("refused").Inc()
		return err
	}
	// New ports listen and serve before anything switches; if one
	// cannot, the reload is refused whole.
	ports, gone, err := s.reloadPorts(snap)
	if err != nil {
		for _, p := range fresh {
			_ = p.Close()
		}
		s.metrics.reloads.WithLabelValues("refused").Inc()
		return fmt.Errorf("%s: reload: %w (the running configuration is unchanged)", cfg.File, err)
	}
	// Commit: nothing fails from here.
	for _, ch := range snap.changes {
		ch.Apply()
	}
	if s.poolCtx != nil {
		for _, p := range fresh {
			p.Start(s.poolCtx)
		}
	}
	for _, ps := range ports {
		ps.rt.Store(snap.routers[ps.port])
		if d := ps.from; ps.borrowed {
			ps.borrowed, d.handedOn = false, true
			delete(s.drainingPorts, ps.port)
			s.logger.Info("reload: port added back while it drained: its sockets and connections stay", zap.Int("port", ps.bound))
		}
	}
	s.ports = ports
	for _, ps := range gone {
		s.drainPort(ps)
	}
	s.snap = snap // s.cfg stays: what the listeners were built from, unchanged by needsRestart
	// Pools no reverse_proxy uses any more: their health checks stop;
	// their sessions' leases end with the sessions.
	removed := 0
	for _, pe := range old.pools {
		if !slices.ContainsFunc(snap.pools, func(n *poolEntry) bool { return n.pool == pe.pool }) {
			_ = pe.pool.Close()
			removed++
		}
	}
	s.metrics.reloads.WithLabelValues("applied").Inc()
	s.logger.Info("configuration reloaded", zap.String("config", cfg.File), zap.Int("sites", len(cfg.Sites)),
		zap.Int("pools_kept", len(snap.pools)-len(fresh)-len(snap.changes)), zap.Int("pools_updated", len(snap.changes)),
		zap.Int("pools_new", len(fresh)), zap.Int("pools_removed", removed))
	return nil
}

// needsRestart says what of next cannot be applied in place to a server
// serving cur, or nil.
func needsRestart(cur, next *configs.Config, snap *snapshot) error {
	var what []string
	same := func(name string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			what = append(what, name)
		}
	}
	same("default_bind", cur.DefaultBind, next.DefaultBind)
	same("http_port", cur.HTTPPort, next.HTTPPort)
	same("https_port", cur.HTTPSPort, next.HTTPSPort)
	same("admin", cur.Admin, next.Admin)
	same("zero_rtt", cur.ZeroRTT, next.ZeroRTT)
	same("handshake_rate", cur.HandshakeRate, next.HandshakeRate)
	same("handshake_rate_per_ip", cur.HandshakeRatePerIP, next.HandshakeRatePerIP)
	same("quic_lb", fmt.Sprintf("%+v", cur.QUICLB), fmt.Sprintf("%+v", next.QUICLB))
	same("shared_keys", fmt.Sprintf("%+v", cur.SharedKeys), fmt.Sprintf("%+v", next.SharedKeys))
	if protocolHeaderLimit(next) > protocolHeaderLimit(cur) {
		what = append(what, "a header limit above the largest one served")
	}
	if len(what) == 0 {
		return nil
	}
	return fmt.Errorf("%s: reload: %s changed: that needs a restart (the running configuration is unchanged)", next.File, joinAnd(what))
}

// joinAnd lists s as prose: "a", "a and b", "a, b and c".
func joinAnd(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

// portDrainGrace bounds how long a port that a reload removed serves the
// requests in flight on it, once its clients were told to go away.
const portDrainGrace = 30 * time.Second

// reloadPorts returns the port servers of snap: those of the ports that
// stay (sockets and connections untouched), and new ones for the ports it
// adds, bound and serving (with the routers of snap); and the ones it no
// longer has. On error the new ones are closed and nothing changed.
func (s *Server) reloadPorts(snap *snapshot) (ports, gone []*portServer, err error) {
	byPort := map[int]*portServer{}
	for _, ps := range s.ports {
		byPort[ps.port] = ps
	}
	var added []*portServer
	defer func() {
		if err != nil {
			for _, ps := range added {
				s.closePortLocked(ps)
			}
		}
	}()
	for _, port := range snap.order {
		if ps := byPort[port]; ps != nil {
			ports = append(ports, ps)
			delete(byPort, port)
			continue
		}
		if !s.listening {
			return nil, nil, fmt.Errorf("port %d: the server does not listen yet", port)
		}
		ps := &portServer{port: port}
		ps.rt.Store(snap.routers[port])
		added = append(added, ps)
		if d := s.drainingPorts[port]; d != nil {
			if err := s.takeOverPort(ps, d); err != nil {
				return nil, nil, err
			}
		} else if err := s.listenPort(ps); err != nil {
			return nil, nil, err
		}
		if s.served {
			if err := s.serve(ps); err != nil {
				return nil, nil, err
			}
		}
		ports = append(ports, ps)
	}
	for _, ps := range s.ports {
		if byPort[ps.port] != nil {
			gone = append(gone, ps)
		}
	}
	return ports, gone, nil
}

// drainPort tells the clients of a port a reload removed to go away
// (GOAWAY on HTTP/3 and HTTP/2, Connection: close on HTTP/1.1), lets the
// requests in flight finish within portDrainGrace (or until the server
// shuts down), then closes the port's sockets.
func (s *Server) drainPort(ps *portServer) {
	ps.removed.Store(true)
	if ps.port != 0 {
		if s.drainingPorts == nil {
			s.drainingPorts = map[int]*portServer{}
		}
		s.drainingPorts[ps.port] = ps // a reload may add it back meanwhile
	}
	s.logger.Info("reload: port removed: draining it", zap.Int("port", ps.bound), zap.Duration("grace", portDrainGrace))
	for _, ln := range ps.qlns {
		_ = ln.Close() // no new connection
	}
	// The TCP port is free at once (its connections are served on), so a
	// reload may open it again; the UDP socket stays until the QUIC
	// connections have gone.
	for _, t := range ps.tcp {
		_ = t.Close()
	}
	s.serving.Go(func() {
		ctx, cancel := context.WithTimeout(s.stopCtx, portDrainGrace)
		defer cancel()
		var wg sync.WaitGroup
		if ps.h3 != nil {
			wg.Go(func() { _ = ps.h3.Shutdown(ctx) })
			wg.Go(func() { _ = ps.h1.Shutdown(ctx) })
		}
		wg.Wait()
		s.mu.Lock()
		if s.drainingPorts[ps.port] == ps {
			delete(s.drainingPorts, ps.port)
		}
		s.closePortLocked(ps)
		s.mu.Unlock()
		s.logger.Info("reload: port closed", zap.Int("port", ps.bound))
	})
}

// errPortRemoved ends the serving loops of a port a reload removed.
var errPortRemoved = errors.New("port removed by a reload")

// removedOr is errPortRemoved once the port was removed, else err.
func (ps *portServer) removedOr(err error) error {
	if ps.removed.Load() {
		return errPortRemoved
	}
	return err
}

// closePortLocked closes a port's servers and sockets at once; not the
// UDP sockets and QUIC transports it borrowed or handed on (see
// portServer.from). s.mu is held.
func (s *Server) closePortLocked(ps *portServer) {
	if ps.h3 != nil {
		_ = ps.h3.Close()
		_ = ps.h1.Close()
	}
	for _, ln := range ps.qlns {
		_ = ln.Close()
	}
	if !ps.borrowed && !ps.handedOn {
		for _, tr := range ps.transports {
			_ = tr.Close()
		}
		for _, u := range ps.udp {
			s.sockets.Closing(u)
			_ = u.Close()
		}
	}
	for _, t := range ps.tcp {
		_ = t.Close()
	}
}

// takeOverPort gives ps, a port a reload adds, the UDP sockets and QUIC
// transports of d, the same port still draining since an earlier reload
// removed it (its UDP sockets, unlike its TCP ones, stay open while it
// drains): d's servers keep its connections, ps accepts the new ones. The
// TCP sockets are bound again.
func (s *Server) takeOverPort(ps, d *portServer) error {
	ps.from, ps.borrowed = d, true
	ps.udp, ps.transports, ps.bound = slices.Clone(d.udp), slices.Clone(d.transports), d.bound
	for i, host := range s.bindHosts() {
		if host != "" {
			host = d.udp[i].LocalAddr().(*net.UDPAddr).IP.String()
		}
		ln, err := s.sockets.ListenTCP(net.JoinHostPort(host, strconv.Itoa(d.bound)))
		if err != nil {
			return inUse(err, d.bound)
		}
		ps.tcp = append(ps.tcp, ln)
	}
	return nil
}
