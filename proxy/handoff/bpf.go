package handoff

import (
	"context"
	"fmt"
	"net"

	"github.com/roamgate/roamgate/proxy/steer"
)

// bpfSocket is a UDP socket of BPF mode: this process's own in the port's
// SO_REUSEPORT group, and the group's steering maps.
type bpfSocket struct {
	conn *net.UDPConn
	st   *steer.Steering
}

func bpfSupported() error { return steer.Supported() }

// listenBPF binds this process's socket for address into its reuseport
// group: the predecessor's group (its maps inherited) or a new one (the
// program loaded and attached), and puts it in this generation's slot.
// New clients are sent to it once it serves.
func (s *Sockets) listenBPF(address string) (*bpfSocket, error) {
	socks, inherited := s.take("steer", address)
	newest, _ := s.take("newest", address)
	b := &bpfSocket{}
	var err error
	if inherited {
		if newest.file == nil {
			socks.file.Close()
			return nil, fmt.Errorf("upgrade: udp %s: the predecessor passed one of the two steering maps", address)
		}
		// The predecessor's group: bind into it at the address it has.
		if b.conn, err = steer.ListenUDP(context.Background(), "udp", socks.Addr); err != nil {
			socks.file.Close()
			newest.file.Close()
			return nil, err
		}
		sfd, err1 := takeFD(socks.file)
		nfd, err2 := takeFD(newest.file)
		if err1 != nil || err2 != nil {
			b.conn.Close()
			return nil, fmt.Errorf("upgrade: udp %s: steering maps: %v %v", address, err1, err2)
		}
		if b.st, err = steer.Adopt(sfd, nfd); err != nil {
			b.conn.Close()
			return nil, err
		}
		if busy, err := b.st.Occupied(s.gen); err != nil || busy {
			b.close()
			b.conn.Close()
			return nil, fmt.Errorf("upgrade: udp %s: generation %d still has a socket (a process of that generation still drains): %v", address, s.gen, err)
		}
	} else {
		if b.conn, err = steer.ListenUDP(context.Background(), "udp", address); err != nil {
			return nil, err
		}
		if b.st, err = steer.Load(); err != nil {
			b.conn.Close()
			return nil, err
		}
		if err := b.st.Attach(b.conn); err != nil {
			b.close()
			b.conn.Close()
			return nil, fmt.Errorf("upgrade: udp %s: attach the steering program: %w", address, err)
		}
	}
	if err := b.st.Set(s.gen, b.conn); err != nil {
		b.close()
		b.conn.Close()
		return nil, err
	}
	return b, nil
}

// serving makes this process's socket the one new clients reach.
func (b *bpfSocket) serving(gen int) error { return b.st.SetNewest(gen) }

// mapFDs returns duplicates of the group's steering maps for a successor.
func (b *bpfSocket) mapFDs() (socks, newest int, err error) { return b.st.MapFDs() }

func (b *bpfSocket) close() { _ = b.st.Close() }
