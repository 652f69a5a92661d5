// Package proxy serves roamgate's sites: HTTP/3 on a UDP socket through a
// quic.Transport of its own, and HTTP/1.1 and HTTP/2 over TLS on the TCP port
// of the same number, with Alt-Svc pointing clients at HTTP/3.
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it owns the listeners, the client sessions (one per QUIC connection, created
// in http3.Server.ConnContext and closed with the connection; one per TCP
// connection on the TCP listener), routing by host, the HTTP/3→HTTP/1.1
// translation, path-change reporting, metrics, the admin endpoint's health
// checks, reload and graceful shutdown.
//
// Reload (reload.go) compiles a new configuration into a snapshot (a
// router per port, the pools) and swaps it in whole: a request reads one
// router, so it sees one configuration. A session holds a lease per pool,
// not the snapshot, so a reverse_proxy that stays at its place (site, path)
// keeps its pool across reloads, and with it every session's backend and
// upstream connections. When its settings changed, the pool is updated in
// place (upstream.Pool.Update) rather than replaced: sessions whose backend
// (same address) is still listed keep it and its connections; those whose
// backend was removed move at their next request (logged, counted with
// reason "reload") while their requests in flight there finish, and their
// WebSockets and tunnels there run on until they end. The updates are
// prepared as the snapshot compiles and applied only when the reload
// commits, so a refused reload changes no pool.
package proxy
