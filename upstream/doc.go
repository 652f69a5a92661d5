// Package upstream holds roamgate's backends and the connections to them.
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it is the last stage. A [Pool] is one reverse_proxy's set of backends. For
// every client session (one QUIC connection, or one TCP connection on the
// TCP listener) the proxy takes a [Lease] from the pool: the lease picks its
// backend once and owns private HTTP/1.1 keep-alive connections to it. The
// set of a lease's connections is stable: it grows only when every connection
// is busy (up to a bound, queued beyond it), never rotates, is never shared
// with another lease, and is closed with the lease. See DESIGN.md, "The one
// invariant".
//
// The package never imports proxy.
package upstream
