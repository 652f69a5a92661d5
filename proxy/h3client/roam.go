package h3client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Route is how the kernel would reach the edge now.
type Route struct {
	// LocalIP is the source address the kernel picks for the edge.
	LocalIP netip.Addr
	// Network names the network behind LocalIP; SystemRoute puts the name
	// of the interface that holds LocalIP ("wlan0") here. Routes differ when
	// either field does, so a route source that knows more (an OS network
	// monitor, a test) can report a change of network that keeps the
	// address.
	Network string
}

// RouteFunc reports the route to remote as of now, without sending a packet.
type RouteFunc func(ctx context.Context, remote netip.AddrPort) (Route, error)

// SystemRoute asks the kernel which source address it would use for
// remote: it connects a UDP socket (which sends nothing) and reads the
// socket's local address, then names the interface holding that address.
func SystemRoute(_ context.Context, remote netip.AddrPort) (Route, error) {
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(remote))
	if err != nil {
		return Route{}, fmt.Errorf("route to %s: %w", remote, err)
	}
	local := uc.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	_ = uc.Close()
	return Route{LocalIP: local, Network: interfaceOf(local)}, nil
}

// interfaceOf names the interface that holds ip, or "".
func interfaceOf(ip netip.Addr) string {
	ip = ip.WithZone("")
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, ifi := range ifs {
		addrs, err := ifi.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if got, ok := netip.AddrFromSlice(ipn.IP); ok && got.Unmap() == ip {
				return ifi.Name
			}
		}
	}
	return ""
}

// RoamerConfig configures a Roamer. Zero durations and counts take the
// defaults stated.
type RoamerConfig struct {
	// Redial opens a new connection to the same edge, for when the current
	// one can neither be used nor migrated. Required.
	Redial func(ctx context.Context) (*Conn, error)
	// Route reports the route to the edge; nil means SystemRoute.
	Route RouteFunc
	// Interval is the time between two checks; default 1s.
	Interval time.Duration
	// DeadAfter is how many checks in a row without a packet from the edge
	// (despite a Ping after the first) make the path dead; default 3.
	DeadAfter int
	// ProbeTimeout bounds one migration, path validation included; default
	// 3s (quic-go probes at 200 ms, doubling).
	ProbeTimeout time.Duration
	// DialTimeout bounds one Redial; default 10s.
	DialTimeout time.Duration
	// OnEvent, if set, is told of every migration and reconnect, on the
	// goroutine running the checks; the checks wait for it to return.
	OnEvent func(Event)
}

// EventKind tells a migration from a reconnect.
type EventKind int

// The kinds of Event.
const (
	// Migrated: the connection moved to a new socket, with its streams.
	Migrated EventKind = iota + 1
	// Reconnected: the connection was replaced by a new one; streams of the
	// old one are lost.
	Reconnected
)

// Event is one migration or reconnect by a Roamer.
type Event struct {
	Kind EventKind
	// Reason is why: "network change" or "path stopped answering" for
	// Migrated, "migration impossible" or "connection lost" for Reconnected.
	Reason string
	// Err is what made the old connection unusable (Reconnected only).
	Err error
	// Local is the address of the socket in use now.
	Local netip.AddrPort
	// Conn is the connection in use now.
	Conn *Conn
	// Old is the connection given up (Reconnected only). The Roamer closes
	// it once OnEvent returns.
	Old *Conn
}

// String is the event as one line for a person:
// "migrated to 10.0.0.7:51234 (network change)" or
// "reconnected: migration impossible: probe path from ...".
func (e Event) String() string {
	switch {
	case e.Kind == Migrated:
		return fmt.Sprintf("migrated to %s (%s)", e.Local, e.Reason)
	case e.Err != nil:
		return fmt.Sprintf("reconnected: %s: %v", e.Reason, e.Err)
	}
	return "reconnected: " + e.Reason
}

// Roamer keeps one connection to the edge working through network changes.
// Every Interval it checks (a) which local address the kernel would use for
// the edge now, and (b) whether the edge still answers; when the route
// changed or the edge stopped answering, it migrates the connection to a
// new socket on the route's address, and when that is impossible (or the
// connection has closed) it dials a new connection and hands it over
// through OnEvent and Conn.
//
// Liveness comes from what quic-go exposes: ConnectionStats().PacketsReceived
// (an atomic counter, safe from any goroutine). A check that sees it
// unchanged since the previous check counts one silent interval and Pings,
// so an idle but healthy path answers before the next check; DeadAfter
// silent intervals in a row make the path dead. quic-go has no
// last-received-packet time, PING or path-liveness API.
//
// The Roamer owns the connections it holds: it closes each one it replaces
// once OnEvent returns, and the current one when Run returns.
type Roamer struct {
	cfg RoamerConfig
	log *zap.Logger
	cur atomic.Pointer[Conn]

	// The state of the checks, owned by the goroutine running them.
	route     Route
	haveRoute bool   // route is the baseline to compare with
	received  uint64 // PacketsReceived at the previous check
	silent    int    // checks in a row that saw nothing received
	failure   string // the last failure logged, to log repeats at debug level
}

// NewRoamer returns a Roamer for c, which it takes over (see Roamer).
func NewRoamer(c *Conn, cfg RoamerConfig, logger *zap.Logger) (*Roamer, error) {
	if c == nil {
		return nil, errors.New("roamer: no connection")
	}
	if cfg.Redial == nil {
		return nil, errors.New("roamer: Redial is required")
	}
	if cfg.Interval < 0 || cfg.DeadAfter < 0 || cfg.ProbeTimeout < 0 || cfg.DialTimeout < 0 {
		return nil, errors.New("roamer: negative interval, count or timeout")
	}
	if cfg.Route == nil {
		cfg.Route = SystemRoute
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.DeadAfter == 0 {
		cfg.DeadAfter = 3
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 3 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	r := &Roamer{cfg: cfg, log: logger}
	r.cur.Store(c)
	r.received = c.QUIC().ConnectionStats().PacketsReceived
	return r, nil
}

// Conn is the connection in use now. It may be replaced (and closed) at any
// check; a Tunnel open that fails with ErrConnectionLost can retry on the
// next Conn.
func (r *Roamer) Conn() *Conn { return r.cur.Load() }

// Run checks every Interval until ctx ends, then closes the current
// connection. A panic in a check is logged with its stack and the checks go
// on.
func (r *Roamer) Run(ctx context.Context) {
	defer func() { _ = r.Conn().Close() }()
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.tick(ctx)
		}
	}
}

func (r *Roamer) tick(ctx context.Context) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("roaming check panicked", zap.String("panic", fmt.Sprint(p)), zap.Stack("stack"))
		}
	}()
	r.checkOnce(ctx)
}

// checkOnce is one check: reconnect if the connection closed, migrate if
// the route changed or the path is dead, else count silence and Ping.
func (r *Roamer) checkOnce(ctx context.Context) {
	c := r.cur.Load()
	if c.Context().Err() != nil {
		r.reconnect(ctx, c, "connection lost", context.Cause(c.Context()))
		return
	}
	rt, err := r.cfg.Route(ctx, c.RemoteAddr())
	if err != nil {
		// Offline: neither a migration nor a new connection has a chance.
		// The next route decides (usually a new address: a migration).
		r.fail("no route to the edge", err)
		return
	}
	if !r.haveRoute {
		r.route, r.haveRoute = rt, true
	}
	if rt != r.route || rt.LocalIP != c.LocalAddrPort().Addr() {
		r.migrate(ctx, c, rt, "network change")
		return
	}
	if n := c.QUIC().ConnectionStats().PacketsReceived; n != r.received {
		r.received, r.silent, r.failure = n, 0, ""
		return
	}
	r.silent++
	if r.silent >= r.cfg.DeadAfter {
		r.migrate(ctx, c, rt, "path stopped answering")
		return
	}
	if err := c.Ping(); err != nil {
		r.log.Debug("ping", zap.Error(err))
	}
}

// migrate moves c to a new socket on rt's address, or reconnects when it
// cannot.
func (r *Roamer) migrate(ctx context.Context, c *Conn, rt Route, reason string) {
	from := c.LocalAddrPort()
	mctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	err := c.MigrateTo(mctx, rt.LocalIP)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		r.log.Debug("migration failed", zap.Stringer("from", from), zap.String("reason", reason), zap.Error(err))
		r.reconnect(ctx, c, "migration impossible", err)
		return
	}
	r.route, r.haveRoute = rt, true
	r.silent, r.failure = 0, ""
	r.received = c.QUIC().ConnectionStats().PacketsReceived
	to := c.LocalAddrPort()
	r.log.Info("migrated", zap.Stringer("from", from), zap.Stringer("to", to),
		zap.String("reason", reason), zap.String("network", rt.Network))
	r.emit(Event{Kind: Migrated, Reason: reason, Local: to, Conn: c})
}

// reconnect dials a new connection in place of old; when that fails, the
// next check tries again.
func (r *Roamer) reconnect(ctx context.Context, old *Conn, reason string, cause error) {
	dctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	nc, err := r.cfg.Redial(dctx)
	cancel()
	if ctx.Err() != nil {
		if err == nil {
			_ = nc.Close()
		}
		return
	}
	if err != nil {
		r.fail("reconnect failed", err, zap.String("reason", reason), zap.NamedError("cause", cause))
		return
	}
	r.cur.Store(nc)
	r.haveRoute, r.silent, r.failure = false, 0, ""
	r.received = nc.QUIC().ConnectionStats().PacketsReceived
	r.log.Info("reconnected", zap.String("reason", reason), zap.NamedError("cause", cause),
		zap.Stringer("local", nc.LocalAddrPort()))
	r.emit(Event{Kind: Reconnected, Reason: reason, Err: cause, Local: nc.LocalAddrPort(), Conn: nc, Old: old})
	_ = old.Close()
}

func (r *Roamer) emit(ev Event) {
	if r.cfg.OnEvent != nil {
		r.cfg.OnEvent(ev)
	}
}

// fail logs a failed check: a warning the first time in a row, then at
// debug level, so an hour offline is one line.
func (r *Roamer) fail(msg string, err error, fields ...zap.Field) {
	level := zap.WarnLevel
	if r.failure == msg {
		level = zap.DebugLevel
	}
	r.failure = msg
	if ce := r.log.Check(level, msg); ce != nil {
		ce.Write(append(fields, zap.Error(err))...)
	}
}
