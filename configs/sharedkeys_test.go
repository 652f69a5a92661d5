package configs

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseSharedKeys(t *testing.T) {
	hex32 := strings.Repeat("ab", 32)
	env := func(name string) (string, bool) {
		v, ok := map[string]string{"SECRET": hex32, "B64": "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="}[name]
		return v, ok
	}
	want := bytes.Repeat([]byte{0xab}, 32)
	for _, tt := range []struct {
		name, src string
		check     func(*SharedKeys) bool
	}{
		{"hex from env", "shared_keys {\n\t\tsecret {$SECRET}\n\t}", func(k *SharedKeys) bool {
			return bytes.Equal(k.Secret, want) && k.TicketRotation == DefaultTicketRotation && k.Pos == at(2, 2)
		}},
		{"base64", "shared_keys { secret {$B64}; ticket_rotation 1h }", func(k *SharedKeys) bool {
			return bytes.Equal(k.Secret, want) && k.TicketRotation == time.Hour
		}},
		{"file", "shared_keys { secret_file /run/secrets/roamgate }", func(k *SharedKeys) bool {
			return k.SecretFile == "/run/secrets/roamgate" && k.Secret == nil && !k.FromStorage
		}},
		{"storage", "shared_keys { secret storage }", func(k *SharedKeys) bool { return k.FromStorage && k.Secret == nil }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("Roamfile", []byte(inGlobal(tt.src)), env)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.SharedKeys == nil || !tt.check(cfg.SharedKeys) {
				t.Fatalf("SharedKeys = %+v", cfg.SharedKeys)
			}
		})
	}
	if cfg, err := Parse("Roamfile", []byte(inGlobal("admin off")), nil); err != nil || cfg.SharedKeys != nil {
		t.Fatalf("without shared_keys: %+v %v", cfg.SharedKeys, err)
	}
}

func TestParseSharedKeysErrors(t *testing.T) {
	sk := func(lines ...string) string {
		return inGlobal("shared_keys {\n\t\t" + strings.Join(lines, "\n\t\t") + "\n\t}")
	}
	hex32 := strings.Repeat("ab", 32)
	testParseErrors(t, []errorTest{
		{"no secret", sk("ticket_rotation 1h"), `Roamfile:2:2: shared_keys: a secret required (want secret HEX, secret_file PATH or secret storage)`},
		{"short", sk("secret 00112233"), `Roamfile:3:10: shared_keys: secret: 4 bytes: want 32 or more (openssl rand -hex 32 makes one)`},
		{"not hex", sk("secret hunter2!"), `Roamfile:3:10: shared_keys: secret: not hex or base64 (want 32 random bytes or more, e.g. from: openssl rand -hex 32; or secret storage)`},
		{"two sources", sk("secret "+hex32, "secret_file /k"), `Roamfile:4:3: shared_keys: secret_file: the secret is set already at Roamfile:3:3 (one source)`},
		{"rotation", sk("secret storage", "ticket_rotation 10s"), `Roamfile:4:3: shared_keys: ticket_rotation: at least 1m (clients keep a ticket for hours)`},
		{"unknown", sk("secret storage", "reset_key x"), `Roamfile:4:3: shared_keys: unknown subdirective "reset_key"`},
		{"argument", inGlobal("shared_keys on"), `Roamfile:2:14: shared_keys: unexpected argument "on"`},
	})
}
