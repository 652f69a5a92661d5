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
// checks and graceful shutdown.
package proxy
