// Package steer routes the QUIC packets of one UDP port between the
// processes of a binary upgrade with an eBPF SK_REUSEPORT program: each
// process has its own socket in one SO_REUSEPORT group, and the program
// picks, for every packet, the socket of the process generation its
// destination connection ID names (package quiclb puts two generation
// bits in every ID roamgate issues).
//
// The program reads the packet's first eight bytes after the UDP header:
//
//   - a short header carries a server-chosen ID at byte 1: the generation
//     is read from it, as quiclb.Generation reads it (the second octet's
//     low bits when the first octet's config rotation is 7, the unroutable
//     layout, else the first octet's);
//   - of long headers, only Handshake packets (QUIC v1 type 2, v2 type 3)
//     carry an ID the server chose, at byte 6 after its length at byte 5;
//   - Initial, 0-RTT and Retry packets, version negotiation, unknown
//     versions and anything that is not QUIC (fixed bit clear) go to the
//     newest process: their IDs were made up by the client, and new
//     connections are the newest process's.
//
// A REUSEPORT_SOCKARRAY map has a slot per generation (0 to 3), and a
// one-entry array the generation of the process that takes new
// connections (the newest; a socket can be in one slot only). A packet goes
// to its generation's slot, or to the newest's when that slot is empty (its
// process has exited: the kernel takes a closed socket out of the map), or,
// when that is empty too, wherever the kernel's 4-tuple hash sends it. One
// pair of maps and one program per reuseport group, that is per UDP
// address: a map can only select sockets of the group the program runs
// for.
//
// The first process loads the program and the maps and attaches the
// program to its socket; a successor gets the maps as inherited
// descriptors (Adopt), binds its socket into the group (ListenUDP), puts
// it in its generation's slot, and makes its generation the newest once it
// serves.
// Loading needs CAP_BPF and CAP_NET_ADMIN (or root); Supported says
// whether this process may.
package steer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Slots is the number of sockets the map holds: one per generation.
const Slots = 4

// ErrUnsupported is wrapped by the errors of Load (and Supported) when
// this process may not load the program: no CAP_BPF, a kernel without
// BPF or SK_REUSEPORT.
var ErrUnsupported = errors.New("eBPF SK_REUSEPORT steering unavailable")

// soAttachReuseportEBPF is SO_ATTACH_REUSEPORT_EBPF (asm-generic/socket.h).
const soAttachReuseportEBPF = 52

// Steering is the maps and program of one reuseport group.
type Steering struct {
	m      *ebpf.Map     // the sockets, by generation
	newest *ebpf.Map     // key 0: the newest generation
	prog   *ebpf.Program // nil when adopted: the program is attached already
}

// Load creates the maps and loads the program.
func Load() (*Steering, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "roamgate_socks",
		Type:       ebpf.ReusePortSockArray,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: Slots,
	})
	if err != nil {
		return nil, unsupported("create the socket map", err)
	}
	newest, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "roamgate_newest",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: 1,
	})
	if err != nil {
		m.Close()
		return nil, unsupported("create the newest-generation map", err)
	}
	// Until a socket says it is the newest, none is: no slot matches.
	if err := newest.Update(uint32(0), uint32(Slots), ebpf.UpdateAny); err != nil {
		m.Close()
		newest.Close()
		return nil, unsupported("set the newest generation", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "roamgate_steer",
		Type:         ebpf.SkReuseport,
		AttachType:   ebpf.AttachSkReuseportSelect,
		License:      "Dual MIT/GPL",
		Instructions: program(m.FD(), newest.FD()),
	})
	if err != nil {
		m.Close()
		newest.Close()
		return nil, unsupported("load the program", err)
	}
	return &Steering{m: m, newest: newest, prog: prog}, nil
}

func unsupported(what string, err error) error {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, syscall.EPERM) ||
		errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("%w: %s: %v", ErrUnsupported, what, err)
	}
	return fmt.Errorf("steer: %s: %w", what, err)
}

// Supported returns nil when Load works in this process, else why not.
func Supported() error {
	s, err := Load()
	if err != nil {
		return err
	}
	return s.Close()
}

// Adopt takes over the maps a predecessor passed (inherited descriptors
// of the maps MapFDs returned, which Adopt takes over); the program is
// attached to the group already.
func Adopt(socks, newest int) (*Steering, error) {
	sm, err := adoptMap(socks, ebpf.ReusePortSockArray)
	if err != nil {
		syscall.Close(newest)
		return nil, err
	}
	nm, err := adoptMap(newest, ebpf.Array)
	if err != nil {
		sm.Close()
		return nil, err
	}
	return &Steering{m: sm, newest: nm}, nil
}

func adoptMap(fd int, typ ebpf.MapType) (*ebpf.Map, error) {
	m, err := ebpf.NewMapFromFD(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("steer: adopt a map: %w", err)
	}
	if info, err := m.Info(); err != nil || info.Type != typ {
		m.Close()
		return nil, fmt.Errorf("steer: adopt a map: want a %v (%v)", typ, err)
	}
	return m, nil
}

// ListenUDP binds a UDP socket with SO_REUSEPORT, so that a successor can
// bind its own into the same group.
func ListenUDP(ctx context.Context, network, address string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error { return SetReusePort(rc) }}
	pc, err := lc.ListenPacket(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// SetReusePort sets SO_REUSEPORT on a socket before it is bound.
func SetReusePort(rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
	}); err != nil {
		return err
	}
	return serr
}

// Attach attaches the program to c's reuseport group (replacing any other
// program of the group).
func (s *Steering) Attach(c *net.UDPConn) error {
	if s.prog == nil {
		return errors.New("steer: an adopted map has no program of its own to attach")
	}
	return control(c, func(fd int) error {
		return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, soAttachReuseportEBPF, s.prog.FD())
	})
}

// Set puts c in slot (a generation); a socket can be in one slot only.
func (s *Steering) Set(slot int, c *net.UDPConn) error {
	if slot < 0 || slot >= Slots {
		return fmt.Errorf("steer: slot %d out of range", slot)
	}
	return control(c, func(fd int) error {
		if err := s.m.Update(uint32(slot), uint64(fd), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("steer: slot %d: %w", slot, err)
		}
		return nil
	})
}

// Clear empties slot.
func (s *Steering) Clear(slot int) error {
	if err := s.m.Delete(uint32(slot)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("steer: clear slot %d: %w", slot, err)
	}
	return nil
}

// Occupied reports whether a live socket is in slot.
func (s *Steering) Occupied(slot int) (bool, error) {
	var cookie uint64
	err := s.m.Lookup(uint32(slot), &cookie)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return false, nil
	}
	return false, fmt.Errorf("steer: slot %d: %w", slot, err)
}

// SetNewest makes gen the generation whose socket takes new connections.
func (s *Steering) SetNewest(gen int) error {
	if gen < 0 || gen >= Slots {
		return fmt.Errorf("steer: generation %d out of range", gen)
	}
	if err := s.newest.Update(uint32(0), uint32(gen), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("steer: newest generation: %w", err)
	}
	return nil
}

// Newest returns the generation that takes new connections (Slots: none).
func (s *Steering) Newest() (int, error) {
	var gen uint32
	if err := s.newest.Lookup(uint32(0), &gen); err != nil {
		return 0, fmt.Errorf("steer: newest generation: %w", err)
	}
	return int(gen), nil
}

// MapFDs returns duplicates of the maps' descriptors (close-on-exec), to
// pass to a successor (Adopt); the caller closes them.
func (s *Steering) MapFDs() (socks, newest int, err error) {
	if socks, err = dupCloexec(s.m.FD()); err != nil {
		return -1, -1, err
	}
	if newest, err = dupCloexec(s.newest.FD()); err != nil {
		syscall.Close(socks)
		return -1, -1, err
	}
	return socks, newest, nil
}

func dupCloexec(fd int) (int, error) {
	nfd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return -1, fmt.Errorf("steer: dup a map: %w", errno)
	}
	return int(nfd), nil
}

// Close releases the maps and program handles; the program stays attached
// to its group while a socket of it is open.
func (s *Steering) Close() error {
	var err error
	if s.prog != nil {
		err = s.prog.Close()
	}
	return errors.Join(err, s.m.Close(), s.newest.Close())
}

func control(c *net.UDPConn, f func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// Offsets in the packet the program reads: the QUIC payload starts after
// the UDP header, where sk_reuseport's bpf_skb_load_bytes counts from.
const (
	udpHeader = 8
	loaded    = 8 // bytes of the payload loaded onto the stack
	buf       = -16
	key       = -4
)

// program is the SK_REUSEPORT program, with the socket map at mapFD and
// the newest generation's at newestFD.
func program(mapFD, newestFD int) asm.Instructions {
	const (
		ctx   = asm.R6
		first = asm.R7 // the packet's first byte
		cid0  = asm.R8 // the first two bytes of the destination ID
		cid1  = asm.R9
	)
	at := func(i int16) int16 { return buf + i } // byte i of the payload, on the stack
	return asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		// bpf_skb_load_bytes(ctx, 8, fp-16, 8): the payload's first bytes.
		asm.Mov.Reg(asm.R1, ctx),
		asm.Mov.Imm(asm.R2, udpHeader),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, buf),
		asm.Mov.Imm(asm.R4, loaded),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "newest"), // shorter than that

		asm.LoadMem(first, asm.RFP, at(0), asm.Byte),
		asm.Mov.Reg(asm.R1, first),
		asm.And.Imm(asm.R1, 0x40),
		asm.JEq.Imm(asm.R1, 0, "newest"), // fixed bit clear: not QUIC
		asm.Mov.Reg(asm.R1, first),
		asm.And.Imm(asm.R1, 0x80),
		asm.JNE.Imm(asm.R1, 0, "long"),
		// Short header: the ID follows the first byte.
		asm.LoadMem(cid0, asm.RFP, at(1), asm.Byte),
		asm.LoadMem(cid1, asm.RFP, at(2), asm.Byte),
		asm.Ja.Label("generation"),

		// Long header: only a Handshake packet's ID is the server's.
		asm.Mov.Reg(asm.R2, first).WithSymbol("long"),
		asm.RSh.Imm(asm.R2, 4),
		asm.And.Imm(asm.R2, 3), // R2: the long packet type
		// The version, byte by byte (stack loads of bytes need no
		// alignment): R1 = bytes 1-4 big endian.
		asm.LoadMem(asm.R1, asm.RFP, at(1), asm.Byte),
		asm.LSh.Imm(asm.R1, 8),
		asm.LoadMem(asm.R3, asm.RFP, at(2), asm.Byte),
		asm.Or.Reg(asm.R1, asm.R3),
		asm.LSh.Imm(asm.R1, 8),
		asm.LoadMem(asm.R3, asm.RFP, at(3), asm.Byte),
		asm.Or.Reg(asm.R1, asm.R3),
		asm.LSh.Imm(asm.R1, 8),
		asm.LoadMem(asm.R3, asm.RFP, at(4), asm.Byte),
		asm.Or.Reg(asm.R1, asm.R3),
		asm.JNE.Imm(asm.R1, 1, "v2"),
		asm.JNE.Imm(asm.R2, 2, "newest"), // v1, not Handshake
		asm.Ja.Label("handshake"),
		asm.LoadImm(asm.R3, 0x6b3343cf, asm.DWord).WithSymbol("v2"),
		asm.JNE.Reg(asm.R1, asm.R3, "newest"), // an unknown version
		asm.JNE.Imm(asm.R2, 3, "newest"),      // v2, not Handshake
		asm.LoadMem(asm.R1, asm.RFP, at(5), asm.Byte).WithSymbol("handshake"),
		asm.JLT.Imm(asm.R1, 2, "newest"), // an ID too short to carry a generation
		asm.LoadMem(cid0, asm.RFP, at(6), asm.Byte),
		asm.LoadMem(cid1, asm.RFP, at(7), asm.Byte),

		// The generation: the second byte's low bits in the unroutable
		// layout (config rotation 7), else the first's.
		asm.Mov.Reg(asm.R1, cid0).WithSymbol("generation"),
		asm.RSh.Imm(asm.R1, 5),
		asm.JNE.Imm(asm.R1, 7, "routable"),
		asm.Mov.Reg(cid0, cid1),
		asm.And.Imm(cid0, 3).WithSymbol("routable"),
		asm.StoreMem(asm.RFP, key, cid0, asm.Word),
		asm.Mov.Reg(asm.R1, ctx),
		asm.LoadMapPtr(asm.R2, mapFD),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, key),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),

		// The newest process's socket, if there is one.
		asm.StoreImm(asm.RFP, key, 0, asm.Word).WithSymbol("newest"),
		asm.LoadMapPtr(asm.R1, newestFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, key),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, key, asm.R1, asm.Word),
		asm.Mov.Reg(asm.R1, ctx),
		asm.LoadMapPtr(asm.R2, mapFD),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, key),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),

		asm.Mov.Imm(asm.R0, 1).WithSymbol("pass"), // SK_PASS: the selected socket, or the kernel's hash
		asm.Return(),
	}
}
