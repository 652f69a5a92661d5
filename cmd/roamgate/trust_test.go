package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/tlsmgr"
	"github.com/roamgate/roamgate/tlsmgr/redistest"
)

func TestTrustPrintsTheRoot(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	// No CA there yet: an error, and nothing created (issue 13: a wrong
	// --data-dir got a new CA no server uses).
	err := run(t.Context(), []string{"trust", "--data-dir", dir}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "no local CA in "+dir) || !strings.Contains(err.Error(), "--create") {
		t.Fatalf("empty data dir: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 || out.Len() != 0 {
		t.Fatalf("an empty data dir got %v, stdout %q", ents, out.String())
	}
	if err := run(t.Context(), []string{"trust", "--data-dir", dir, "--create"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	stored, err := os.ReadFile(tlsmgr.RootCertPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), stored) || !strings.HasPrefix(out.String(), "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("printed %q, stored %q", out.String(), stored)
	}
	// The same CA every time.
	var again bytes.Buffer
	if err := run(t.Context(), []string{"trust", "--data-dir", dir}, &again, io.Discard); err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
		t.Fatalf("second run: %v, same root: %v", err, bytes.Equal(again.Bytes(), out.Bytes()))
	}
}

func TestInstallRoot(t *testing.T) {
	anchors := t.TempDir()
	stores := []trustStore{
		{name: "missing dir", dir: filepath.Join(anchors, "nope"), file: "x.crt", cmd: []string{"true"}},
		{name: "missing command", dir: anchors, file: "x.crt", cmd: []string{"roamgate-no-such-command"}},
		{name: "fake store", dir: anchors, file: "roamgate-local-ca.crt", cmd: []string{"true"}},
	}
	where, err := installRoot([]byte("PEM"), stores, io.Discard)
	if err != nil || where != "fake store" {
		t.Fatalf("installRoot = %q, %v", where, err)
	}
	if b, err := os.ReadFile(filepath.Join(anchors, "roamgate-local-ca.crt")); err != nil || string(b) != "PEM" {
		t.Fatalf("anchor file %q, %v", b, err)
	}
	if _, err := installRoot([]byte("PEM"), stores[:2], io.Discard); err == nil || !strings.Contains(err.Error(), "no supported system trust store") {
		t.Fatalf("no usable store: %v", err)
	}
	failing := []trustStore{{name: "failing", dir: anchors, file: "y.crt", cmd: []string{"false"}}}
	if _, err := installRoot([]byte("PEM"), failing, io.Discard); err == nil {
		t.Fatal("a failing update command was not reported")
	}
}

// TestTrustReadsTheFleetsRedis: with a Roamfile whose storage is Redis,
// trust prints the local CA the fleet shares there (the one its instances
// serve from), creating none unless asked, and nothing in the data
// directory.
func TestTrustReadsTheFleetsRedis(t *testing.T) {
	redis := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	roamfile := writeFile(t, dir, "Roamfile", "{\n\tdata_dir "+dataDir+"\n\tstorage redis {\n\t\taddress "+redis.Addr()+
		"\n\t\tkey_prefix trust-test\n\t}\n}\nlocalhost {\n\trespond hi\n}\n")
	var out bytes.Buffer
	err := run(t.Context(), []string{"trust", "--config", roamfile}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no local CA in the Redis storage at "+redis.Addr()) {
		t.Fatalf("an empty Redis: %v", err)
	}
	var errOut bytes.Buffer
	if err := run(t.Context(), []string{"trust", "--config", roamfile, "--create"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "-----BEGIN CERTIFICATE-----") || !strings.Contains(errOut.String(), "from the Redis storage") {
		t.Fatalf("printed %q (%q)", out.String(), errOut.String())
	}
	if _, err := os.Stat(tlsmgr.RootCertPath(dataDir)); err == nil {
		t.Fatal("the CA went to the data directory, not to Redis")
	}
	// An instance of the fleet serves from that CA.
	cfg, err := configs.Load(roamfile)
	if err != nil {
		t.Fatal(err)
	}
	m, err := tlsmgr.New(tlsmgr.ConfigFor(cfg, dataDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	if !bytes.Equal(m.LocalCA().RootPEM(), out.Bytes()) {
		t.Fatal("trust printed another root than the fleet's")
	}
	var again bytes.Buffer
	if err := run(t.Context(), []string{"trust", "--config", roamfile}, &again, io.Discard); err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
		t.Fatalf("second run: %v, same root: %v", err, bytes.Equal(again.Bytes(), out.Bytes()))
	}
}
