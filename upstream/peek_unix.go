//go:build unix

package upstream

import (
	"crypto/tls"
	"net"
	"syscall"
	"unsafe"
)

// prober tells whether an idle TCP connection is still open and quiet: one
// non-blocking MSG_PEEK read, which sees a FIN (EOF), a reset, or bytes the
// backend sent without being asked, without consuming anything. It is made
// once per connection so a check allocates nothing. On a TLS connection it
// peeks at the socket under TLS, and bytes there are read through TLS (see
// tlsQuiet): a TLS 1.3 backend may send post-handshake messages unasked.
type prober struct {
	rc    syscall.RawConn // nil: not a socket, assumed alive
	tls   *tls.Conn       // nil: not TLS
	fn    func(fd uintptr) bool
	alive bool
	b     [1]byte
}

func (p *prober) init(nc net.Conn) {
	if tc, ok := nc.(*tls.Conn); ok {
		p.tls, nc = tc, tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	p.rc = rc
	p.fn = func(fd uintptr) bool {
		// Data (n > 0) or EOF (n == 0) both mean the connection cannot
		// carry a new request; only "would block" means quiet. recvfrom
		// with no address buffer, so nothing escapes.
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		p.alive = errno == syscall.EAGAIN || errno == syscall.EWOULDBLOCK
		return true
	}
}

func (p *prober) aliveNow() bool {
	if p.rc == nil {
		return true
	}
	p.alive = false
	err := p.rc.Read(p.fn)
	if err == nil && !p.alive && p.tls != nil {
		return tlsQuiet(p.tls)
	}
	return err == nil && p.alive
}
