package configs

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseQUICLB(t *testing.T) {
	env := func(name string) (string, bool) {
		v, ok := map[string]string{"LB_KEY": "8f95f09245765f80256934e50c66207f", "SID": "0a:3f"}[name]
		return v, ok
	}
	tests := []struct {
		name, src string
		want      QUICLB
	}{
		{"plaintext", "quic_lb {\n\t\tserver_id c4605e\n\t\tnonce_len 8\n\t}",
			QUICLB{Pos: at(2, 2), ServerID: []byte{0xc4, 0x60, 0x5e}, NonceLen: 8}},
		{"all", "quic_lb {\n\t\tserver_id {$SID}\n\t\tnonce_len 13\n\t\tkey {$LB_KEY}\n\t\tconfig_id 6\n\t\tself_encode_length off\n\t}",
			QUICLB{Pos: at(2, 2), ConfigID: 6, ServerID: []byte{0x0a, 0x3f}, NonceLen: 13,
				Key: []byte{0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f}}},
		{"one line", "quic_lb { server_id 01; nonce_len 18 }", QUICLB{Pos: at(2, 2), ServerID: []byte{1}, NonceLen: 18}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("Roamfile", []byte(inGlobal(tt.src)), env)
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.QUICLB
			if got == nil || got.Pos != tt.want.Pos || got.ConfigID != tt.want.ConfigID || !bytes.Equal(got.ServerID, tt.want.ServerID) ||
				got.NonceLen != tt.want.NonceLen || !bytes.Equal(got.Key, tt.want.Key) {
				t.Fatalf("QUICLB = %+v, want %+v", got, tt.want)
			}
		})
	}
	cfg, err := Parse("Roamfile", []byte(inGlobal("admin off")), nil)
	if err != nil || cfg.QUICLB != nil {
		t.Fatalf("without quic_lb: %+v, %v", cfg.QUICLB, err)
	}
}

// TestParseQUICLBErrors: each constraint of draft-ietf-quic-load-balancers-21
// (server ID of 1 byte or more, nonce of 4 or more, both at most 19, a
// 16-byte key, config rotation 0-6), roamgate's own (nonces of 8 bytes or
// more; no self-encoded length, for the process generation) and the block's
// syntax, each at its file:line:col.
func TestParseQUICLBErrors(t *testing.T) {
	lb := func(lines ...string) string {
		return inGlobal("quic_lb {\n\t\t" + strings.Join(lines, "\n\t\t") + "\n\t}")
	}
	testParseErrors(t, []errorTest{
		{"argument", inGlobal("quic_lb on"), `Roamfile:2:10: quic_lb: unexpected argument "on"`},
		{"empty block", inGlobal("quic_lb {\n\t}"), `Roamfile:2:2: quic_lb: server_id and nonce_len required (want quic_lb { server_id HEX; nonce_len N })`},
		{"no block", inGlobal("quic_lb"), `Roamfile:2:2: quic_lb: server_id and nonce_len required (want quic_lb { server_id HEX; nonce_len N })`},
		{"no nonce_len", lb("server_id 01"), `Roamfile:2:2: quic_lb: nonce_len required (want quic_lb { server_id HEX; nonce_len N })`},
		{"unknown", lb("server_id 01", "nonce_len 8", "nonce_length 8"), `Roamfile:5:3: quic_lb: unknown subdirective "nonce_length" (did you mean nonce_len?)`},
		{"twice", lb("server_id 01", "nonce_len 8", "server_id 02"), `Roamfile:5:3: quic_lb: server_id: already set at Roamfile:3:3`},
		{"server_id missing argument", lb("server_id", "nonce_len 8"), `Roamfile:3:3: quic_lb: server_id: missing argument`},
		{"server_id not hex", lb("server_id 0g", "nonce_len 8"), `Roamfile:3:13: quic_lb: server_id: invalid server ID "0g" (want hex bytes, as in 0a3f or 0a:3f)`},
		{"server_id odd", lb("server_id abc", "nonce_len 8"), `Roamfile:3:13: quic_lb: server_id: invalid server ID "abc" (want hex bytes, as in 0a3f or 0a:3f)`},
		{"server_id bad pairs", lb("server_id a:bc", "nonce_len 8"), `Roamfile:3:13: quic_lb: server_id: invalid server ID "a:bc" (want hex bytes, as in 0a3f or 0a:3f)`},
		{"server_id empty", lb(`server_id ""`, "nonce_len 8"), `Roamfile:3:13: quic_lb: server_id: empty`},
		// The lexer drops a word that is only an unset {$ENV}.
		{"server_id unset", lb("server_id {$EMPTY}", "nonce_len 8"), `Roamfile:3:3: quic_lb: server_id: missing argument`},
		{"server_id too long", lb("server_id 000102030405060708090a0b", "nonce_len 8"), `Roamfile:3:13: quic_lb: server_id: 12 bytes: want at most 11 (with a nonce of at least 8)`},
		{"nonce_len word", lb("server_id 01", "nonce_len eight"), `Roamfile:4:13: quic_lb: nonce_len: invalid length "eight" (want bytes, 8 to 18)`},
		{"nonce_len below the draft", lb("server_id 01", "nonce_len 3"), `Roamfile:4:13: quic_lb: nonce_len: 3 bytes: QUIC-LB wants at least 4, and roamgate 8 (its nonces are random)`},
		{"nonce_len below roamgate's", lb("server_id 01", "nonce_len 7"), `Roamfile:4:13: quic_lb: nonce_len: 7 bytes: want at least 8 (roamgate's nonces are random, and shorter ones risk two connections getting the same connection ID)`},
		{"nonce_len too long", lb("server_id 01", "nonce_len 19"), `Roamfile:4:13: quic_lb: nonce_len: 19 bytes: want at most 18 (with a server ID of at least 1)`},
		{"over 19 bytes at nonce_len", lb("server_id 0001020304", "nonce_len 15"),
			`Roamfile:4:3: quic_lb: nonce_len: a server ID of 5 bytes and a nonce of 15 make 20: want at most 19 (a connection ID is at most 20 bytes, the first octet included)`},
		{"over 19 bytes at server_id", lb("nonce_len 15", "server_id 0001020304"),
			`Roamfile:4:3: quic_lb: server_id: a server ID of 5 bytes and a nonce of 15 make 20: want at most 19 (a connection ID is at most 20 bytes, the first octet included)`},
		{"key short", lb("server_id 01", "nonce_len 8", "key 0011"), `Roamfile:5:7: quic_lb: key: 2 bytes: want 16 (an AES-128 key, 32 hex digits)`},
		{"key not hex", lb("server_id 01", "nonce_len 8", "key secret"), `Roamfile:5:7: quic_lb: key: not hex (want the 16-byte AES-128 key as 32 hex digits)`},
		{"key unset", lb("server_id 01", "nonce_len 8", "key {$NO_SUCH_KEY}"), `Roamfile:5:7: {$NO_SUCH_KEY} is not set: set NO_SUCH_KEY, or give a default: {$NO_SUCH_KEY:VALUE} ({$NO_SUCH_KEY:} for empty)`},
		{"key empty", lb("server_id 01", "nonce_len 8", `key ""`), `Roamfile:5:7: quic_lb: key: empty`},
		{"config_id 7", lb("server_id 01", "nonce_len 8", "config_id 7"), `Roamfile:5:13: quic_lb: config_id: 7 is reserved for unroutable connection IDs (want 0 to 6)`},
		{"config_id negative", lb("server_id 01", "nonce_len 8", "config_id -1"), `Roamfile:5:13: quic_lb: config_id: invalid config ID "-1" (want 0 to 6)`},
		{"self_encode_length on", lb("server_id 01", "nonce_len 8", "self_encode_length on"),
			`Roamfile:5:22: quic_lb: self_encode_length: on is not supported: roamgate keeps two of the first octet's five low bits for the process generation, which routes packets to the old or the new process during a binary upgrade; upgrade routing needs length self-encoding off (load balancers do not need it)`},
		{"self_encode_length yes", lb("server_id 01", "nonce_len 8", "self_encode_length yes"), `Roamfile:5:22: quic_lb: self_encode_length: unknown value "yes" (want off)`},
		{"two errors", lb("server_id xx", "nonce_len 2"),
			"Roamfile:3:13: quic_lb: server_id: invalid server ID \"xx\" (want hex bytes, as in 0a3f or 0a:3f)\n" +
				"Roamfile:4:13: quic_lb: nonce_len: 2 bytes: QUIC-LB wants at least 4, and roamgate 8 (its nonces are random)"},
		{"in a site", inSite("quic_lb {\n\t}\n\trespond 1"), `Roamfile:2:2: quic_lb is a global option; set it in the global options block at the top of the file`},
		{"twice globally", inGlobal("quic_lb { server_id 01; nonce_len 8 }\n\tquic_lb { server_id 02; nonce_len 8 }"), `Roamfile:3:2: quic_lb: already set at Roamfile:2:2`},
	})
}
