package handoff

import (
	"errors"
	"net"
)

// TEMPORARY until package steer lands.
type bpfSocket struct{ conn *net.UDPConn }

func bpfSupported() error                               { return errors.New("not built yet") }
func (s *Sockets) listenBPF(string) (*bpfSocket, error) { return nil, errors.New("no bpf") }
func (b *bpfSocket) serving(int) error                  { return nil }
func (b *bpfSocket) mapFD() (int, error)                { return -1, errors.New("no bpf") }
func (b *bpfSocket) close()                             {}
