package handoff

import (
	"encoding/binary"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

// QUIC versions whose Handshake packets carry a server-chosen DCID.
const (
	version1 = 0x00000001 // RFC 9000: Handshake is long-header type 2
	version2 = 0x6b3343cf // RFC 9369: Handshake is type 3
)

// PacketGeneration returns the process generation a QUIC packet is for,
// read from its destination connection ID the way the SO_REUSEPORT
// program does (package steer): short-header packets and Handshake
// packets carry an ID the server chose, so its generation bits name the
// process that owns the connection. Other packets (Initial, 0-RTT, version
// negotiation, anything that is not QUIC) carry IDs the client made up and
// go to the newest process: ok is false.
func PacketGeneration(b []byte) (gen int, ok bool) {
	if len(b) < 3 || b[0]&0x40 == 0 { // too short, or the fixed bit is clear
		return 0, false
	}
	var dcid []byte
	if b[0]&0x80 == 0 {
		dcid = b[1:] // short header: the ID's length is the server's to know
	} else {
		if len(b) < 8 {
			return 0, false
		}
		typ := b[0] >> 4 & 3
		switch binary.BigEndian.Uint32(b[1:5]) {
		case version1:
			ok = typ == 2
		case version2:
			ok = typ == 3
		}
		n := int(b[5])
		if !ok || n < 2 || len(b) < 6+n {
			return 0, false
		}
		dcid = b[6 : 6+n]
	}
	g, err := quiclb.Generation(dcid)
	if err != nil {
		return 0, false
	}
	return g, true
}
