package handoff

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// fwdConn is a QUIC transport's socket in forward mode, where no BPF
// program routes packets between the processes of an upgrade: the old and
// the new process share one UDP socket, and only one of them reads it.
//
// The newest process reads the socket and hands packets whose connection
// ID names an older generation (PacketGeneration) to the older process
// over a unix datagram socket (its link); the older process, once
// released, reads only that link. Both write to the UDP socket directly,
// so answers take no detour. Before its predecessor releases the socket, a
// successor's reads wait (hold), so the two never read it at once.
type fwdConn struct {
	udp    *net.UDPConn
	gen    int
	logger *zap.Logger
	hold   <-chan struct{} // closed when this process may read; nil: at once

	src  atomic.Pointer[source] // what reads come from
	link atomic.Pointer[link]   // where older generations' packets go; nil: none

	mu       sync.Mutex // guards deadline
	deadline time.Time  // the transport's read deadline

	buf []byte // the link's datagrams (one reader: the transport's read loop)
}

// source is one place a fwdConn reads packets from.
type source struct {
	udp  *net.UDPConn  // the shared UDP socket
	unix *net.UnixConn // or the link from the successor
}

// link is the unix datagram socket to the older process.
type link struct {
	conn   *net.UnixConn
	raw    syscall.RawConn
	gen    int
	dead   atomic.Bool
	logger *zap.Logger
}

// maxDatagram is the largest UDP payload a link carries: quic-go never
// reads more (protocol.MaxPacketBufferSize), plus the address header.
const maxDatagram = 1452 + 64

func newFwdConn(udp *net.UDPConn, gen int, hold <-chan struct{}, logger *zap.Logger) *fwdConn {
	c := &fwdConn{udp: udp, gen: gen, hold: hold, logger: logger, buf: make([]byte, 64<<10)}
	c.src.Store(&source{udp: udp})
	return c
}

func (c *fwdConn) ReadFrom(p []byte) (int, net.Addr, error) {
	if c.hold != nil {
		<-c.hold
	}
	for {
		src := c.src.Load()
		n, addr, err := c.readFrom(src, p)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && (c.src.Load() != src || !c.expired()) {
				continue // the source changed under the read, not the transport's deadline
			}
			return 0, nil, err
		}
		if l := c.link.Load(); l != nil && !l.dead.Load() {
			if g, ok := PacketGeneration(p[:n]); ok && g != c.gen && l.forward(addr, p[:n]) {
				continue
			}
		}
		return n, addr, nil
	}
}

// readFrom reads one packet from src, the client's address with it.
func (c *fwdConn) readFrom(src *source, p []byte) (int, net.Addr, error) {
	if src.udp != nil {
		n, ap, err := src.udp.ReadFromUDPAddrPort(p)
		if err != nil {
			return 0, nil, err
		}
		return n, net.UDPAddrFromAddrPort(ap), nil
	}
	for {
		n, err := src.unix.Read(c.buf)
		if err != nil {
			return 0, nil, err
		}
		ap, payload, ok := decodeDatagram(c.buf[:n])
		if !ok {
			continue
		}
		return copy(p, payload), net.UDPAddrFromAddrPort(ap), nil
	}
}

func (c *fwdConn) expired() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.deadline.IsZero() && !time.Now().Before(c.deadline)
}

// release makes c read from the link its successor forwards on, and no
// longer from the UDP socket, which the successor reads from now on.
func (c *fwdConn) release(from *net.UnixConn) {
	c.switchTo(&source{unix: from})
}

// resume makes c read the UDP socket again (the successor is gone).
func (c *fwdConn) resume() { c.switchTo(&source{udp: c.udp}) }

func (c *fwdConn) switchTo(next *source) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.src.Load()
	if prev.udp == next.udp && prev.unix == next.unix {
		return // reading there already
	}
	c.src.Store(next)
	// Unblock a read waiting on the previous source; it reads next.
	_ = setReadDeadline(prev, time.Unix(1, 0))
	_ = setReadDeadline(next, c.deadline)
}

func setReadDeadline(s *source, t time.Time) error {
	if s.udp != nil {
		return s.udp.SetReadDeadline(t)
	}
	return s.unix.SetReadDeadline(t)
}

func (c *fwdConn) WriteTo(p []byte, addr net.Addr) (int, error) { return c.udp.WriteTo(p, addr) }

// Close closes the conn's link and, as the transport owns the socket, the
// UDP socket (this process's descriptor of it).
func (c *fwdConn) Close() error {
	if l := c.link.Load(); l != nil {
		_ = l.conn.Close()
	}
	if s := c.src.Load(); s.unix != nil {
		_ = s.unix.Close()
	}
	return c.udp.Close()
}

func (c *fwdConn) LocalAddr() net.Addr { return c.udp.LocalAddr() }

func (c *fwdConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.udp.SetWriteDeadline(t)
}

func (c *fwdConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return setReadDeadline(c.src.Load(), t)
}

func (c *fwdConn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// SetReadBuffer and SetWriteBuffer let quic-go size the shared socket's
// buffers as it does its own.
func (c *fwdConn) SetReadBuffer(n int) error  { return c.udp.SetReadBuffer(n) }
func (c *fwdConn) SetWriteBuffer(n int) error { return c.udp.SetWriteBuffer(n) }

// SyscallConn is the UDP socket's, for quic-go's don't-fragment setting.
func (c *fwdConn) SyscallConn() (syscall.RawConn, error) { return c.udp.SyscallConn() }

// forward sends a packet of an older generation to its process; false when
// the link is gone (the older process exited), so the packet is this
// process's to drop. A full link drops the packet: QUIC retransmits, and
// the reader of the shared socket must never wait for a slow process.
func (l *link) forward(from net.Addr, p []byte) bool {
	ua, ok := from.(*net.UDPAddr)
	if !ok {
		return false
	}
	var hdr [19]byte
	b := encodeDatagram(hdr[:0], ua.AddrPort(), p)
	var serr error
	err := l.raw.Write(func(fd uintptr) bool {
		serr = syscall.Sendmsg(int(fd), b, nil, nil, syscall.MSG_DONTWAIT)
		return true
	})
	if err == nil {
		err = serr
	}
	switch {
	case err == nil, errors.Is(err, syscall.EAGAIN):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		if !l.dead.Swap(true) {
			l.logger.Info("upgrade: the previous process is gone; its packets are no longer forwarded", zap.Int("generation", l.gen))
		}
		return false
	}
	return true // another send error: the packet is lost, as on a network
}

// encodeDatagram frames a forwarded packet: the client's address (one
// octet 4 or 6, the IP, the port), then the packet. An IPv4-mapped address
// stays one: the older process must see the address it saw before, or
// quic-go would take the packet for a migration.
func encodeDatagram(b []byte, ap netip.AddrPort, p []byte) []byte {
	ip := ap.Addr()
	if ip.Is4() {
		a := ip.As4()
		b = append(append(b, 4), a[:]...)
	} else {
		a := ip.As16()
		b = append(append(b, 6), a[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	return append(b, p...)
}

func decodeDatagram(b []byte) (netip.AddrPort, []byte, bool) {
	if len(b) < 1 {
		return netip.AddrPort{}, nil, false
	}
	var ip netip.Addr
	switch b[0] {
	case 4:
		if len(b) < 7 {
			return netip.AddrPort{}, nil, false
		}
		ip = netip.AddrFrom4([4]byte(b[1:5]))
		b = b[5:]
	case 6:
		if len(b) < 19 {
			return netip.AddrPort{}, nil, false
		}
		ip = netip.AddrFrom16([16]byte(b[1:17]))
		b = b[17:]
	default:
		return netip.AddrPort{}, nil, false
	}
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b)), b[2:], true
}
