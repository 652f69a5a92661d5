// Package upstream holds roamgate's backends and the connections to them.
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it is the last stage. A [Pool] is one reverse_proxy's set of backends. For
// every client session (one QUIC connection, or one TCP connection on the
// TCP listener) the proxy takes a [Lease] from the pool: the lease picks its
// backend once, with the pool's [Policy] among the healthy backends, and owns
// private HTTP/1.1 keep-alive connections to it. The set of a lease's
// connections is stable: it grows only when every connection is busy (up to
// a bound, queued beyond it), never rotates, is never shared with another
// lease, and is closed with the lease. See DESIGN.md, "The one invariant".
//
// Only three things move a session. When its backend becomes unhealthy
// (active checks, see [ActiveHealth]; passive checks, see [PassiveHealth])
// or unreachable (a dial failed), the lease re-picks among the healthy
// backends, logs "session moved" and counts it (SessionMoves, by reason).
// When a configuration reload removes its backend ([Pool.Update]), it moves
// the same way at its next request, reason "reload", while its requests in
// flight there finish on their connections. When
// the backend closes a connection, the lease dials the same backend again.
// A lease on a healthy backend that is still configured never moves.
//
// A reload changes a pool in place ([Pool.Update], or [Pool.Prepare] and
// [Change.Apply] to apply it only once a whole reload is ready): the pool's
// configuration is one immutable state behind an atomic pointer, read once
// per request. A backend whose address stays is the same [Backend], with
// its sessions, their connections and its health; added backends join;
// removed ones drain as above, their WebSocket and other upgraded
// connections running on until they end.
//
// Files: pool.go and config.go (Pool, Config), update.go (Update), selection.go
// and cookie.go (policies), health.go (active and passive health), lease.go
// and move.go (a session's connections, retries, moves), dedicated.go
// (upgraded connections), conn.go and wire.go (HTTP/1.1), tls.go (TLS to
// backends, see [TLS]).
//
// The package never imports proxy.
package upstream
