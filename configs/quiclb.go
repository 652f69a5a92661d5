package configs

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// QUICLB is the global quic_lb option: the QUIC-LB configuration
// (draft-ietf-quic-load-balancers-21) that makes every server connection
// ID routable to this instance by a load balancer in front of several:
//
//	quic_lb {
//		server_id HEX             # this instance's server ID, 1 byte or more
//		nonce_len N               # random nonce bytes, 8 to 18
//		key HEX                   # optional: AES-128 key, 16 bytes; write it as {$ENV}
//		config_id N               # config rotation codepoint, 0 to 6; default 0
//		self_encode_length off    # the only value roamgate accepts (see below)
//	}
//
// The server ID and nonce make up at most 19 bytes, so that with the first
// octet a connection ID is at most 20. The first octet's five low bits do
// not self-encode the length: two of them carry the process generation that
// routes packets to the old or the new process during a binary upgrade
// (proxy/quiclb's package doc has the layout).
type QUICLB struct {
	Pos      Position // the quic_lb token
	ConfigID int      // 0-6
	ServerID []byte
	NonceLen int
	Key      []byte // nil (the plaintext algorithm) or 16 bytes
}

// Limits of quic_lb, as proxy/quiclb defines them.
const (
	quicLBMaxConfigID   = 6  // 7 marks unroutable connection IDs
	quicLBDraftMinNonce = 4  // the draft's minimum
	quicLBMinNonce      = 8  // roamgate's: nonces are random (quiclb.MinRandomNonceLen)
	quicLBMaxPlaintext  = 19 // server ID + nonce
	quicLBKeyLen        = 16 // AES-128
)

var quicLBOptions = []string{"config_id", "key", "nonce_len", "self_encode_length", "server_id"}

// quicLBOption reads the quic_lb block.
func quicLBOption(b *builder, c *Cursor) error {
	lb := &QUICLB{Pos: c.Token().Pos()}
	if c.CountRemainingArgs() > 0 {
		return c.ArgErr()
	}
	seen := make(map[string]Position)
	failed := false // a subdirective was written with errors: no "required" on top
	for c.NextBlock(0) {
		if err := quicLBSubdirective(c, lb, seen); err != nil {
			b.report(err)
			failed = true
		}
	}
	var missing []string
	for _, name := range []string{"server_id", "nonce_len"} {
		if _, ok := seen[name]; !ok {
			missing = append(missing, name)
		}
	}
	switch {
	case len(missing) > 0:
		return newError(lb.Pos, "quic_lb", nil, strings.Join(missing, " and ")+" required (want quic_lb { server_id HEX; nonce_len N })")
	case failed:
		return nil
	case len(lb.ServerID)+lb.NonceLen > quicLBMaxPlaintext:
		at, name := seen["nonce_len"], "nonce_len"
		if p := seen["server_id"]; p.Line > at.Line || p.Line == at.Line && p.Col > at.Col {
			at, name = p, "server_id"
		}
		return newError(at, "quic_lb", nil, fmt.Sprintf(
			"%s: a server ID of %d bytes and a nonce of %d make %d: want at most %d (a connection ID is at most 20 bytes, the first octet included)",
			name, len(lb.ServerID), lb.NonceLen, len(lb.ServerID)+lb.NonceLen, quicLBMaxPlaintext))
	}
	b.cfg.QUICLB = lb
	return nil
}

func quicLBSubdirective(c *Cursor, lb *QUICLB, seen map[string]Position) error {
	name := c.Val()
	if !slices.Contains(quicLBOptions, name) {
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, quicLBOptions))
	}
	if !setOnce(c, seen) {
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	switch name {
	case "server_id":
		id, ok := parseHexBytes(t.Text)
		switch {
		case t.Text == "":
			return c.Err("server_id: empty")
		case !ok:
			return c.Errf("server_id: invalid server ID %q (want hex bytes, as in 0a3f or 0a:3f)", t.Text)
		case len(id) > quicLBMaxPlaintext-quicLBMinNonce:
			return c.Errf("server_id: %d bytes: want at most %d (with a nonce of at least %d)", len(id), quicLBMaxPlaintext-quicLBMinNonce, quicLBMinNonce)
		}
		lb.ServerID = id
	case "nonce_len":
		n, err := strconv.Atoi(t.Text)
		switch {
		case err != nil:
			return c.Errf("nonce_len: invalid length %q (want bytes, %d to %d)", t.Text, quicLBMinNonce, quicLBMaxPlaintext-1)
		case n < quicLBDraftMinNonce:
			return c.Errf("nonce_len: %d bytes: QUIC-LB wants at least %d, and roamgate %d (its nonces are random)", n, quicLBDraftMinNonce, quicLBMinNonce)
		case n < quicLBMinNonce:
			return c.Errf("nonce_len: %d bytes: want at least %d (roamgate's nonces are random, and shorter ones risk two connections getting the same connection ID)", n, quicLBMinNonce)
		case n > quicLBMaxPlaintext-1:
			return c.Errf("nonce_len: %d bytes: want at most %d (with a server ID of at least 1)", n, quicLBMaxPlaintext-1)
		}
		lb.NonceLen = n
	case "key":
		// Never quote the key: errors end up in logs.
		key, ok := parseHexBytes(t.Text)
		switch {
		case t.Text == "":
			return c.Err("key: empty")
		case !ok:
			return c.Errf("key: not hex (want the %d-byte AES-128 key as %d hex digits)", quicLBKeyLen, 2*quicLBKeyLen)
		case len(key) != quicLBKeyLen:
			return c.Errf("key: %d bytes: want %d (an AES-128 key, %d hex digits)", len(key), quicLBKeyLen, 2*quicLBKeyLen)
		}
		lb.Key = key
	case "config_id":
		n, err := strconv.Atoi(t.Text)
		switch {
		case err == nil && n == quicLBMaxConfigID+1:
			return c.Errf("config_id: %d is reserved for unroutable connection IDs (want 0 to %d)", n, quicLBMaxConfigID)
		case err != nil || n < 0 || n > quicLBMaxConfigID:
			return c.Errf("config_id: invalid config ID %q (want 0 to %d)", t.Text, quicLBMaxConfigID)
		}
		lb.ConfigID = n
	case "self_encode_length":
		switch t.Text {
		case "off":
		case "on":
			return c.Err("self_encode_length: on is not supported: roamgate keeps two of the first octet's five low bits " +
				"for the process generation, which routes packets to the old or the new process during a binary upgrade; " +
				"upgrade routing needs length self-encoding off (load balancers do not need it)")
		default:
			return c.Errf("self_encode_length: unknown value %q (want off)", t.Text)
		}
	}
	return nil
}

// parseHexBytes parses hex digits, optionally in colon-separated pairs as
// QUIC-LB's YANG model writes them ("0a:3f").
func parseHexBytes(s string) ([]byte, bool) {
	if strings.Contains(s, ":") {
		parts := strings.Split(s, ":")
		for _, p := range parts {
			if len(p) != 2 {
				return nil, false
			}
		}
		s = strings.Join(parts, "")
	}
	b, err := hex.DecodeString(s)
	return b, err == nil && len(b) > 0
}
