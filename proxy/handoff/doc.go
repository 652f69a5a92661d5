// Package handoff hands roamgate's listening sockets from a running process
// to its successor in a binary upgrade, so that no connection is dropped:
// not the QUIC connections the old process serves (nor their sessions'
// upstream connections), not the TCP connections waiting in a listen
// queue, not a packet of a client that migrates while the old process
// drains.
//
// # The handover
//
// The old process (SIGUSR2, `roamgate upgrade`) starts the binary now at
// its own path with its own arguments, passing every listening socket as an
// inherited descriptor (fd 3 and up, described by the JSON manifest in
// ROAMGATE_HANDOFF) and a status socket. The new process asks for its
// sockets by the address its configuration names (port 0 included), gets
// the inherited one for that address or binds a new one, serves, and says
// so on the status socket. Only then does the old process stop accepting
// (its QUIC listeners close, its TCP servers finish their connections with
// GOAWAY / Connection: close) and let go of the UDP sockets; it serves its
// QUIC connections until the last one closes or upgrade_grace passes. If
// the new process fails, exits or does not serve within a minute, the old
// one has changed nothing and serves on; the reason is logged. At most two
// processes run: an upgrade is refused while the previous old process
// still drains.
//
// TCP listeners are shared: both processes hold the same socket, the new
// one accepts, the old one closed its descriptor. No SO_REUSEPORT is
// involved, so no connection in the accept queue can be lost.
//
// # Routing the old process's packets
//
// QUIC is the hard part: after the handover the new process takes the
// port's new connections, while packets of the old process's connections,
// from any client address (a client may migrate during the drain), must
// still reach the old one. Every server connection ID carries the process
// generation that issued it (two bits; see package quiclb), and each
// process has the next generation of its predecessor's. Short-header and
// Handshake packets carry a server-chosen ID, so their generation names
// the process (PacketGeneration); Initial and 0-RTT packets carry an ID
// the client made up, and go to the newest process. Two modes route by
// it:
//
//   - BPF: each process binds its own socket into one SO_REUSEPORT group,
//     and an SK_REUSEPORT program (package steer) picks, per packet, the
//     socket in the slot of its generation in a REUSEPORT_SOCKARRAY map,
//     or the newest process's. The first process loads the program and
//     the map; each successor inherits the map and puts its socket in. A
//     packet takes no detour, and each process reads its socket with
//     quic-go's batch reads. It needs CAP_BPF and CAP_NET_ADMIN (or root).
//   - Forward, where BPF is not permitted: the processes share one
//     socket. The newest process reads it and hands packets of an older
//     generation to that process over a unix datagram socket, with the
//     client's address; the old process reads only that, and writes its
//     answers to the shared socket itself. Every packet costs a syscall of
//     its own (the transport sits on a net.PacketConn that is not a
//     *net.UDPConn, so quic-go's batch reads and GSO are off), forwarded
//     ones two more.
//
// The mode is chosen when roamgate starts (upgrade_steering auto, bpf or
// forward), logged, and kept by every successor.
package handoff
