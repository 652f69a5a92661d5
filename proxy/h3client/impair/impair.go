// Package impair is a userspace UDP relay that impairs the path between
// QUIC clients and an edge: packet loss, delay and jitter (which reorders
// packets), both ways. It stands in for netem, which this project's test
// machines lack, in the fault tests and roamgate-bench's fault runs.
//
// Like a NAT, the relay gives each client socket its own upstream socket,
// so the edge sees one source address per client socket, and a client that
// migrates to a new socket reaches the edge from a new address.
package impair

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Faults are what the relay does to every packet, each direction alike.
type Faults struct {
	// Loss is the fraction of packets dropped, 0 to 1.
	Loss float64
	// Delay is added to every packet.
	Delay time.Duration
	// Jitter adds a uniformly random extra delay in [0, Jitter) to each
	// packet: packets sent closer together than that are reordered.
	Jitter time.Duration
	// Seed seeds the relay's randomness, for a repeatable run; 0 picks one.
	Seed uint64
}

// Stats counts what the relay did.
type Stats struct {
	Forwarded int64 // packets passed on
	Dropped   int64 // packets lost on purpose
}

// Relay relays UDP between clients and an edge, impaired by its Faults.
type Relay struct {
	front  *net.UDPConn
	target netip.AddrPort
	wg     sync.WaitGroup

	forwarded, dropped atomic.Int64

	mu       sync.Mutex // guards the following
	faults   Faults
	rnd      *rand.Rand
	upstream map[netip.AddrPort]*net.UDPConn
	timers   map[*time.Timer]struct{} // delayed packets not yet sent
	closed   bool
}

// New starts a relay on a loopback port of target's family to target.
func New(target netip.AddrPort, f Faults) (*Relay, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	target = unmap(target)
	front, err := net.ListenUDP("udp", loopback(target))
	if err != nil {
		return nil, fmt.Errorf("impair: listen: %w", err)
	}
	seed := f.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	r := &Relay{
		front: front, target: target, faults: f,
		rnd:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		upstream: map[netip.AddrPort]*net.UDPConn{},
		timers:   map[*time.Timer]struct{}{},
	}
	r.wg.Go(r.forward)
	return r, nil
}

func (f Faults) check() error {
	if f.Loss < 0 || f.Loss > 1 || f.Delay < 0 || f.Jitter < 0 {
		return fmt.Errorf("impair: faults out of range: %+v", f)
	}
	return nil
}

// SetFaults changes the faults for the packets from now on (a Seed in f is
// ignored); Faults{} heals the path, so that clients can close cleanly.
func (r *Relay) SetFaults(f Faults) error {
	if err := f.check(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = f
	return nil
}

// Rebind moves every client's mapping to a new upstream socket and closes
// the old one, as a NAT whose mappings timed out does: the edge then sees
// the same connections from new source ports.
func (r *Relay) Rebind() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	for client, old := range r.upstream {
		up, err := net.ListenUDP("udp", loopback(r.target))
		if err != nil {
			return fmt.Errorf("impair: rebind: %w", err)
		}
		_ = old.Close()
		r.upstream[client] = up
		r.wg.Go(func() { r.backward(client, up) })
	}
	return nil
}

// Mappings are the upstream addresses the edge sees, one per client
// socket, in no order.
func (r *Relay) Mappings() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(r.upstream))
	for _, up := range r.upstream {
		out = append(out, unmap(up.LocalAddr().(*net.UDPAddr).AddrPort()))
	}
	return out
}

// Addr is where clients send to.
func (r *Relay) Addr() netip.AddrPort { return unmap(r.front.LocalAddr().(*net.UDPAddr).AddrPort()) }

// Stats reports what the relay did so far.
func (r *Relay) Stats() Stats {
	return Stats{Forwarded: r.forwarded.Load(), Dropped: r.dropped.Load()}
}

// Close stops the relay, drops packets still delayed, and closes its
// sockets; it returns once its goroutines have ended.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	err := r.front.Close()
	for _, up := range r.upstream {
		err = errors.Join(err, up.Close())
	}
	for t := range r.timers {
		t.Stop()
	}
	r.timers = nil
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

func (r *Relay) forward() {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = unmap(from)
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		up := r.upstream[from]
		if up == nil {
			if up, err = net.ListenUDP("udp", loopback(r.target)); err != nil {
				r.mu.Unlock()
				continue
			}
			r.upstream[from] = up
			r.wg.Go(func() { r.backward(from, up) })
		}
		r.sendLocked(up, buf[:n], r.target)
		r.mu.Unlock()
	}
}

func (r *Relay) backward(client netip.AddrPort, up *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := up.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if unmap(from) != r.target {
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		r.sendLocked(r.front, buf[:n], client)
		r.mu.Unlock()
	}
}

// sendLocked sends p from c to dst, or drops or delays it as the faults
// say.
func (r *Relay) sendLocked(c *net.UDPConn, p []byte, dst netip.AddrPort) {
	if r.faults.Loss > 0 && r.rnd.Float64() < r.faults.Loss {
		r.dropped.Add(1)
		return
	}
	d := r.faults.Delay
	if r.faults.Jitter > 0 {
		d += time.Duration(r.rnd.Int64N(int64(r.faults.Jitter)))
	}
	r.forwarded.Add(1)
	if d <= 0 {
		_, _ = c.WriteToUDPAddrPort(p, dst)
		return
	}
	pkt := append([]byte(nil), p...)
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.closed {
			return
		}
		delete(r.timers, t)
		_, _ = c.WriteToUDPAddrPort(pkt, dst)
	})
	r.timers[t] = struct{}{}
}

func loopback(target netip.AddrPort) *net.UDPAddr {
	if target.Addr().Is6() {
		return &net.UDPAddr{IP: net.IPv6loopback}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
