// Package quiclbtest is a QUIC-LB load balancer for tests: a UDP forwarder
// in front of several servers that routes each client packet by the server
// ID in its destination connection ID, decoded with the same quiclb.Codec
// as `roamgate cid decode`, and every other packet (Initials with the
// client's random connection ID, unroutable IDs, unknown server IDs) by a
// hash of its 4-tuple, the baseline fallback of
// draft-ietf-quic-load-balancers-21 §4.3.1. Without a codec it hashes every
// packet's 4-tuple, as kube-proxy and most cloud balancers do, which is what
// breaks a client that migrates.
//
// Like a NAT, it gives each client address a socket of its own toward the
// servers, so a server sees one address per client socket and a migrated
// client from a new address, and replies go back through the balancer.
package quiclbtest

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"sync"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

// Server is one server behind the Balancer.
type Server struct {
	ID   []byte // its server ID
	Addr netip.AddrPort
}

// Packet records one client packet the Balancer forwarded.
type Packet struct {
	Client netip.AddrPort // the client's address
	Long   bool           // a long header (Initial, 0-RTT, Handshake, Retry)
	DCID   []byte         // its destination connection ID
	Server netip.AddrPort // where it went
	ByCID  bool           // routed by the server ID in DCID, not by the 4-tuple hash
}

// Balancer forwards UDP between clients and servers. Close it when done.
type Balancer struct {
	front   *net.UDPConn
	codec   *quiclb.Codec // nil: 4-tuple hashing only
	servers []Server
	wg      sync.WaitGroup

	mu       sync.Mutex // guards the following
	upstream map[netip.AddrPort]*net.UDPConn
	packets  []Packet
	closed   bool
	down     map[string]bool // server IDs taken out (SetDown)
}

// New starts a Balancer on a loopback port of the first server's family in
// front of servers, routing by codec's server IDs; a nil codec hashes the
// 4-tuple of every packet.
func New(codec *quiclb.Codec, servers []Server) (*Balancer, error) {
	if len(servers) == 0 {
		return nil, errors.New("quiclbtest: no servers")
	}
	servers = append([]Server(nil), servers...)
	for i, s := range servers {
		servers[i].Addr = netip.AddrPortFrom(s.Addr.Addr().Unmap(), s.Addr.Port())
	}
	front, err := net.ListenUDP("udp", loopback(servers[0].Addr))
	if err != nil {
		return nil, fmt.Errorf("quiclbtest: listen: %w", err)
	}
	b := &Balancer{front: front, codec: codec, servers: servers, upstream: map[netip.AddrPort]*net.UDPConn{}}
	b.wg.Go(b.forward)
	return b, nil
}

// Addr returns the address clients send to.
func (b *Balancer) Addr() netip.AddrPort { return b.front.LocalAddr().(*net.UDPAddr).AddrPort() }

// Packets returns the client packets forwarded so far, in order.
func (b *Balancer) Packets() []Packet {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Packet(nil), b.packets...)
}

// Close stops the Balancer and closes its sockets.
func (b *Balancer) Close() error {
	b.mu.Lock()
	b.closed = true
	err := b.front.Close()
	for _, up := range b.upstream {
		_ = up.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	return err
}

// SetDown takes the server with ID id out of the balancer (down) or puts
// it back, as a health check would: packets whose connection ID names a
// server that is down go by the 4-tuple hash over the others.
func (b *Balancer) SetDown(id []byte, down bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down == nil {
		b.down = map[string]bool{}
	}
	b.down[string(id)] = down
}

// Route returns where a client packet goes and whether its connection ID
// decided it.
func (b *Balancer) Route(client netip.AddrPort, pkt []byte) (server netip.AddrPort, long bool, dcid []byte, byCID bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	dcid, long = destinationCID(pkt, b.codec)
	if b.codec != nil && dcid != nil {
		if d, err := b.codec.Decode(dcid); err == nil && !b.down[string(d.ServerID)] {
			for _, s := range b.servers {
				if string(s.ID) == string(d.ServerID) {
					return s.Addr, long, dcid, true
				}
			}
		}
	}
	up := make([]Server, 0, len(b.servers))
	for _, s := range b.servers {
		if !b.down[string(s.ID)] {
			up = append(up, s)
		}
	}
	if len(up) == 0 {
		up = b.servers
	}
	h := fnv.New64a()
	h.Write([]byte(client.String()))
	h.Write([]byte(b.front.LocalAddr().String()))
	return up[h.Sum64()%uint64(len(up))].Addr, long, dcid, false
}

// destinationCID returns the destination connection ID of a QUIC packet:
// a long header names its length (RFC 8999 §5.1); a short header's is the
// configuration's length. nil when the packet is too short.
func destinationCID(pkt []byte, codec *quiclb.Codec) (dcid []byte, long bool) {
	switch {
	case len(pkt) == 0:
		return nil, false
	case pkt[0]&0x80 != 0:
		if len(pkt) < 6 || len(pkt) < 6+int(pkt[5]) {
			return nil, true
		}
		return pkt[6 : 6+int(pkt[5])], true
	case codec == nil:
		return nil, false
	}
	n := codec.Config().Len()
	if len(pkt) < 1+n {
		return nil, false
	}
	return pkt[1 : 1+n], false
}

func (b *Balancer) forward() {
	buf := make([]byte, 65536)
	for {
		n, client, err := b.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		pkt := buf[:n]
		server, long, dcid, byCID := b.Route(client, pkt)
		up, err := b.upstreamFor(client)
		if err != nil {
			continue
		}
		b.mu.Lock()
		b.packets = append(b.packets, Packet{Client: client, Long: long, DCID: append([]byte(nil), dcid...), Server: server, ByCID: byCID})
		b.mu.Unlock()
		_, _ = up.WriteToUDPAddrPort(pkt, server)
	}
}

// upstreamFor returns the socket toward the servers of client, opening it
// and its reader on the first packet.
func (b *Balancer) upstreamFor(client netip.AddrPort) (*net.UDPConn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, net.ErrClosed
	}
	if up := b.upstream[client]; up != nil {
		return up, nil
	}
	up, err := net.ListenUDP("udp", loopback(b.servers[0].Addr))
	if err != nil {
		return nil, err
	}
	b.upstream[client] = up
	b.wg.Go(func() { b.backward(client, up) })
	return up, nil
}

// backward relays what the servers send to client's socket back to client.
func (b *Balancer) backward(client netip.AddrPort, up *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, _, err := up.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = b.front.WriteToUDPAddrPort(buf[:n], client)
	}
}

func loopback(target netip.AddrPort) *net.UDPAddr {
	if target.Addr().Unmap().Is4() {
		return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	}
	return &net.UDPAddr{IP: net.IPv6loopback}
}
