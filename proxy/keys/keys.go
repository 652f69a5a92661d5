// Package keys derives the keys that instances of a roamgate fleet (and
// the processes of a binary upgrade) share, from one secret (the
// Roamfile's shared_keys), so that any of them can finish what another
// started:
//
//   - the address-validation token key: a Retry or NEW_TOKEN token one
//     instance issued is valid at every other, so a client whose next
//     packet reaches another instance proves its address without a second
//     Retry;
//   - the TLS session-ticket keys (Tickets): a client resumes (and sends
//     0-RTT) on any instance. They rotate every rotation period, by the
//     clock alone: the key of period n is derived from the secret and n, so
//     instances agree without talking to each other. A ticket is sealed
//     under the current period's key and accepted under the two before it
//     and the one after it (clock skew between instances);
//   - the lb_policy cookie key: a client's cookie names its backend on
//     every instance;
//   - with quic_lb, the stateless-reset key, per server ID (below).
//
// Stateless resets are the trap of shared keys (RFC 9000 §10.3): a server
// that gets a packet for a connection it does not know answers with a
// reset token derived from its key and the connection ID, and a client
// takes a reset whose token matches for the end of its connection. With
// one reset key for the whole fleet, a balancer that misroutes a packet
// (a migrated client hashed to another instance) lets that instance end a
// live connection of another. roamgate therefore derives the reset key
// from the secret and the instance's quic_lb server ID: packets that reach
// the instance they belong to, or its successor (a restart, an upgrade),
// get a valid reset when their connection is gone, so clients reconnect at
// once instead of after the idle timeout, and packets that reach any
// other instance get a reset the client ignores. Without quic_lb there is
// no server ID to bind the key to, and roamgate sends no resets at all
// (quic-go's default).
package keys

import (
	"crypto/hkdf"
	"crypto/sha256"

	"github.com/quic-go/quic-go"
)

// Keys are those derived from a secret for one instance.
type Keys struct {
	// Token is the quic.Transport's TokenGeneratorKey.
	Token quic.TokenGeneratorKey
	// Reset is the quic.Transport's StatelessResetKey; nil without a
	// server ID.
	Reset *quic.StatelessResetKey
	// Cookie signs lb_policy cookie values.
	Cookie []byte
}

// labels keep the keys of different uses apart (HKDF info).
const (
	tokenLabel  = "roamgate quic address validation token key v1"
	resetLabel  = "roamgate quic stateless reset key v1 "
	cookieLabel = "roamgate lb_policy cookie key v1"
	ticketLabel = "roamgate tls session ticket key v1 "
)

func derive(secret []byte, info string, n int) []byte {
	k, err := hkdf.Key(sha256.New, secret, nil, info, n)
	if err != nil {
		panic("keys: " + err.Error()) // only for n beyond 255*32 bytes
	}
	return k
}

// Derive returns the keys of secret for the instance whose quic_lb server
// ID is serverID (nil without quic_lb: no reset key).
func Derive(secret, serverID []byte) Keys {
	var k Keys
	copy(k.Token[:], derive(secret, tokenLabel, len(k.Token)))
	k.Cookie = derive(secret, cookieLabel, 32)
	if len(serverID) > 0 {
		var r quic.StatelessResetKey
		copy(r[:], derive(secret, resetLabel+string(serverID), len(r)))
		k.Reset = &r
	}
	return k
}
