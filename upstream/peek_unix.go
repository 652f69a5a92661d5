//go:build unix

package upstream

import (
	"net"
	"syscall"
)

// peekAlive reports whether an idle TCP connection is still open and quiet:
// one non-blocking MSG_PEEK read, which sees a FIN (EOF), a reset, or bytes
// the backend sent without being asked, without consuming anything.
func peekAlive(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// Data (n > 0) or EOF (n == 0, no error) both mean the connection
		// cannot carry a new request; only "would block" means quiet.
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true
	})
	return err == nil && alive
}
