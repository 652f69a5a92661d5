package configs

import (
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strings"
	"time"
)

// SharedKeys is the global shared_keys option: the secret every instance
// of a fleet (and every process of an upgrade) derives the same keys from,
// so that any of them can finish what another started:
//
//	shared_keys {
//		secret HEX|BASE64        # 32 bytes or more; write it as {$ENV}
//		secret_file PATH         # or: the file holds it (hex, base64 or raw)
//		secret storage           # or: made once, kept in the certificate storage
//		ticket_rotation 6h       # a new session-ticket key each period; default 6h
//	}
//
// From the secret: the address-validation (Retry, NEW_TOKEN) token key, the
// TLS session-ticket keys (one per rotation period; the two before and the
// one after are accepted), the lb_policy cookie key, and, with quic_lb,
// the stateless-reset key of this instance's server ID (see proxy/keys).
type SharedKeys struct {
	Pos Position // the shared_keys token
	// Secret is the secret written in the Roamfile (decoded); nil when it
	// comes from SecretFile or the storage.
	Secret []byte
	// SecretFile is the file that holds the secret, read at start.
	SecretFile string
	// FromStorage: the secret lives in the certificate storage, made by
	// the first instance that finds none.
	FromStorage bool
	// TicketRotation is how often the session-ticket key changes.
	TicketRotation time.Duration
}

// Limits of shared_keys.
const (
	// MinSharedSecretLen is the shortest secret shared_keys accepts, in bytes.
	MinSharedSecretLen = 32
	// DefaultTicketRotation is shared_keys' default ticket_rotation.
	DefaultTicketRotation = 6 * time.Hour
)

var sharedKeysOptions = []string{"secret", "secret_file", "ticket_rotation"}

// sharedKeysOption reads the shared_keys block.
func sharedKeysOption(b *builder, c *Cursor) error {
	sk := &SharedKeys{Pos: c.Token().Pos(), TicketRotation: DefaultTicketRotation}
	if c.CountRemainingArgs() > 0 {
		return c.ArgErr()
	}
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		name := c.Val()
		if !slices.Contains(sharedKeysOptions, name) {
			b.report(c.Errf("unknown subdirective %q%s", name, didYouMean(name, sharedKeysOptions)))
			continue
		}
		if !setOnce(c, seen) {
			b.report(c.Errf("%s: already set at %s", name, seen[name]))
			continue
		}
		t, err := oneArg(c)
		if err != nil {
			b.report(err)
			continue
		}
		switch name {
		case "secret":
			if t.Text == "storage" {
				sk.FromStorage = true
				continue
			}
			key, ok := DecodeSecret(t.Text)
			switch {
			case !ok:
				b.report(c.Errf("secret: not hex or base64 (want %d random bytes or more, e.g. from: openssl rand -hex 32; or secret storage)", MinSharedSecretLen))
			case len(key) < MinSharedSecretLen:
				b.report(c.Errf("secret: %d bytes: want %d or more (openssl rand -hex 32 makes one)", len(key), MinSharedSecretLen))
			default:
				sk.Secret = key
			}
		case "secret_file":
			if t.Text == "" {
				b.report(c.Err("secret_file: empty path"))
				continue
			}
			sk.SecretFile = t.Text
		case "ticket_rotation":
			b.report(durationArg(c, t, &sk.TicketRotation, true))
		}
	}
	n := 0
	for _, k := range []string{"secret", "secret_file"} {
		if _, ok := seen[k]; ok {
			n++
		}
	}
	switch {
	case n == 0:
		return newError(sk.Pos, "shared_keys", nil, "a secret required (want secret HEX, secret_file PATH or secret storage)")
	case n > 1:
		return newError(seen["secret_file"], "shared_keys", nil, "secret_file: the secret is set already at "+seen["secret"].String()+" (one source)")
	}
	if sk.TicketRotation < time.Minute {
		return newError(seen["ticket_rotation"], "shared_keys", nil, "ticket_rotation: at least 1m (clients keep a ticket for hours)")
	}
	b.cfg.SharedKeys = sk
	return nil
}

// DecodeSecret reads a secret written as hex or (standard or URL-safe,
// padded or not) base64, surrounding white space ignored.
func DecodeSecret(s string) ([]byte, bool) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil {
		return b, true
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}
