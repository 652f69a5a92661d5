package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

// TestCIDDecode: roamgate cid decode prints config rotation, server ID and
// generation for draft -21's test vectors (its IDs self-encode the length:
// no generation) and for IDs issued with a Roamfile's quic_lb (--config),
// and fails, naming each, for unroutable and malformed IDs after printing
// the good ones.
func TestCIDDecode(t *testing.T) {
	key := "8f95f09245765f80256934e50c66207f"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"plaintext", []string{"--sid-len", "3", "--nonce-len", "4", "--self-encode-length", "07c4605e4504cc4f"},
			"07c4605e4504cc4f config_id=0 server_id=c4605e generation=none\n"},
		{"four-pass", []string{"--sid-len", "10", "--nonce-len", "5", "--key", key, "--config-id", "1", "--self-encode-length", "0x2FCC381BC74CB4FBAD2823A3D1F8FED2"},
			"2fcc381bc74cb4fbad2823a3d1f8fed2 config_id=1 server_id=ed793a51d49b8f5fab65 generation=none\n"},
		{"single-pass", []string{"--sid-len", "8", "--nonce-len", "8", "--key", key, "--config-id", "2", "--self-encode-length", "504dd2d05a7b0de9b2b9907afb5ecf8cc3"},
			"504dd2d05a7b0de9b2b9907afb5ecf8cc3 config_id=2 server_id=ed793a51d49b8f5f generation=none\n"},
		{"generation bits", []string{"--sid-len", "3", "--nonce-len", "4", "03c4605e4504cc4f", "1dc4605e4504cc4f"},
			"03c4605e4504cc4f config_id=0 server_id=c4605e generation=3\n1dc4605e4504cc4f config_id=0 server_id=c4605e generation=1\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := run(context.Background(), append([]string{"cid", "decode"}, tc.args...), &out, &errOut); err != nil {
				t.Fatalf("%v\n%s", err, errOut.String())
			}
			if out.String() != tc.want {
				t.Fatalf("output %q, want %q", out.String(), tc.want)
			}
		})
	}

	// IDs issued as roamgate issues them, decoded with the Roamfile.
	dir := t.TempDir()
	roamfile := writeFile(t, dir, "Roamfile", "{\n\tquic_lb {\n\t\tserver_id 0a3f\n\t\tnonce_len 12\n\t\tkey "+key+"\n\t\tconfig_id 2\n\t}\n}\nlocalhost {\n\trespond 1\n}\n")
	k, _ := hex.DecodeString(key)
	codec, err := quiclb.NewCodec(quiclb.Config{ID: 2, ServerIDLen: 2, NonceLen: 12, Key: k})
	if err != nil {
		t.Fatal(err)
	}
	gen, err := quiclb.NewGenerator(codec, []byte{0x0a, 0x3f}, 1)
	if err != nil {
		t.Fatal(err)
	}
	unroutable, _ := quiclb.NewGenerator(nil, nil, 2)
	id1, _ := gen.GenerateConnectionID()
	id2, _ := gen.GenerateConnectionID()
	bad, _ := unroutable.GenerateConnectionID()
	var out, errOut bytes.Buffer
	err = run(context.Background(), []string{"cid", "decode", "--config", roamfile, id1.String(), bad.String(), "xyz", id2.String()}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "2 of 4 connection IDs unroutable or malformed") {
		t.Fatalf("err = %v", err)
	}
	want := id1.String() + " config_id=2 server_id=0a3f generation=1\n" + id2.String() + " config_id=2 server_id=0a3f generation=1\n"
	if out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
	wantErr := "roamgate cid decode: " + bad.String() + ": unroutable connection ID: config rotation 7 (a server without a QUIC-LB configuration); generation 2\n" +
		"roamgate cid decode: xyz: malformed connection ID: not hex\n"
	if errOut.String() != wantErr {
		t.Fatalf("stderr %q, want %q", errOut.String(), wantErr)
	}

	noLB := writeFile(t, dir, "Plain", "localhost {\n\trespond 1\n}\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sid-len", "2", "--nonce-len", "12", "--config-id", "1", id1.String()}, "config rotation 2, not the configuration's 1"},
		{[]string{"--sid-len", "2", "--nonce-len", "11", "--config-id", "2", id1.String()}, "15 bytes, want 14"},
		{[]string{"--nonce-len", "8", "00"}, "want --sid-len and --nonce-len (or --config)"},
		{[]string{"--sid-len", "2", "--nonce-len", "3", "00"}, "nonce length 3: want at least 4"},
		{[]string{"--sid-len", "2", "--nonce-len", "8", "--config-id", "7", "00"}, "--config-id 7: want 0-6"},
		{[]string{"--sid-len", "2", "--nonce-len", "8", "--key", "00", "00"}, "--key: want 32 hex digits"},
		{[]string{"--config", roamfile, "--sid-len", "2", "00"}, "--config gives every setting; drop --sid-len"},
		{[]string{"--config", noLB, "00"}, "has no quic_lb block"},
	} {
		err := run(context.Background(), append([]string{"cid", "decode"}, tc.args...), &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) && !strings.Contains(errOutOf(t, tc.args), tc.want) {
			t.Errorf("cid decode %v: %v, want %q", tc.args, err, tc.want)
		}
	}

	for _, args := range [][]string{{"cid"}, {"cid", "encode"}, {"cid", "decode"}, {"cid", "decode", "--bogus", "00"}} {
		if err := run(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	var help bytes.Buffer
	if err := run(context.Background(), []string{"cid", "decode", "--help"}, &help, &bytes.Buffer{}); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "Usage: roamgate cid decode") {
		t.Fatalf("--help: %v, %q", err, help.String())
	}
}

// errOutOf runs cid decode with args and returns what it wrote to stderr.
func errOutOf(t *testing.T, args []string) string {
	t.Helper()
	var errOut bytes.Buffer
	_ = run(context.Background(), append([]string{"cid", "decode"}, args...), &bytes.Buffer{}, &errOut)
	return errOut.String()
}
