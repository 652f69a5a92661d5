// Package h3client is the client side of roamgate: an HTTP/3 client pinned
// to one QUIC connection that can move that connection to a new local
// socket (RFC 9000 §9: AddPath, Probe, Switch), carry TCP bytes in CONNECT
// tunnels (RFC 9114 §4.4), and notice network changes by itself.
//
// Its place in the data flow is in front of the edge:
//
//	local TCP client ─▶ roamgate connect ─▶ Tunnel (CONNECT stream) ─▶ Conn (QUIC, migrates) ─▶ edge
//	                                         Roamer: route and liveness checks ─▶ Migrate or redial
//
// roamgate's demo and the proxy tests use Conn to migrate real connections
// through the proxy; `roamgate connect` uses all of it.
//
// It follows the client pitfalls of quic-go v0.65.0: every socket of a
// connection is a *net.UDPConn, no socket closes before the connection
// (each migration leaves its transport registered with the connection), the
// local address is tracked here instead of read from the connection while a
// switch may run, Migrate switches only while no request is between sending
// and receiving its response headers, and something is sent on the new path
// at once after a switch.
package h3client
