package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestHashedBody: the body of an id has the size asked for, is the same
// every time, grows by extension, and differs from the body of any other
// id.
func TestHashedBody(t *testing.T) {
	for _, size := range []int64{0, 1, 31, 32, 33, 1024, 20000} {
		b := hashedBody(nil, "a-1", size)
		if int64(len(b)) != size {
			t.Fatalf("hashedBody(a-1, %d) has %d bytes", size, len(b))
		}
		if !bytes.Equal(b, hashedBody(nil, "a-1", size)) {
			t.Fatalf("hashedBody(a-1, %d) differs from one call to the next", size)
		}
		if size > 0 && bytes.Equal(b, hashedBody(nil, "a-2", size)) {
			t.Fatalf("a-1 and a-2 give the same %d bytes", size)
		}
	}
	if long := hashedBody(nil, "a-1", 100); !bytes.HasPrefix(long, hashedBody(nil, "a-1", 40)) {
		t.Fatal("the 40-byte body is not the start of the 100-byte one")
	}
	if got := hashedBody([]byte("x"), "a-1", 3); len(got) != 4 || got[0] != 'x' {
		t.Fatalf("hashedBody does not append to dst: %q", got)
	}
}

// TestVerifyBody: a body that is not its request's own (another id's, one
// byte changed, one too long) is a mismatch even when its read failed; its
// own body cut short is truncated; a whole body whose read failed is a
// read error.
func TestVerifyBody(t *testing.T) {
	const id, size = "r-7", 1024
	own := hashedBody(nil, id, size)
	flipped := bytes.Clone(own)
	flipped[500] ^= 1
	cut := errors.New("stream reset")
	for _, tc := range []struct {
		name     string
		body     []byte
		readErr  error
		mismatch bool
		truncate bool
		at       int64
		fails    bool
	}{
		{name: "own", body: own},
		{name: "another request's", body: hashedBody(nil, "r-8", size), mismatch: true, at: 0},
		{name: "one byte changed", body: flipped, mismatch: true, at: 500},
		{name: "one byte changed, then reset", body: flipped[:700], readErr: cut, mismatch: true, at: 500},
		{name: "another's appended", body: append(bytes.Clone(own), hashedBody(nil, "r-8", 10)...), mismatch: true, at: size},
		{name: "own, cut short", body: own[:600], truncate: true},
		{name: "own, cut short by a reset", body: own[:600], readErr: cut, truncate: true},
		{name: "empty", body: nil, truncate: true},
		{name: "whole, then reset", body: own, readErr: cut, fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verifyBody(id, size, tc.body, tc.readErr)
			if got := isMismatch(err); got != tc.mismatch {
				t.Fatalf("verifyBody = %v: mismatch %v, want %v", err, got, tc.mismatch)
			}
			if got := isTruncated(err); got != tc.truncate {
				t.Fatalf("verifyBody = %v: truncated %v, want %v", err, got, tc.truncate)
			}
			if want := tc.mismatch || tc.truncate || tc.fails; (err != nil) != want {
				t.Fatalf("verifyBody = %v, want an error: %v", err, want)
			}
			var be *bodyError
			if tc.mismatch && errors.As(err, &be) && be.At != tc.at {
				t.Fatalf("first wrong byte %d, want %d", be.At, tc.at)
			}
			if tc.readErr != nil && !errors.Is(err, tc.readErr) && !tc.mismatch {
				t.Fatalf("verifyBody = %v does not wrap the read error", err)
			}
		})
	}
}

// TestBodyHandler: the backend (and h3-plain, the same handler) answers
// GET /body?id=ID with the id's hashed body of its --size.
func TestBodyHandler(t *testing.T) {
	h := newBackendHandler(100)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/body?id=q-3", nil))
	if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), hashedBody(nil, "q-3", 100)) || rec.Header().Get("Content-Length") != "100" {
		t.Fatalf("status %d, Content-Length %q, body %x", rec.Code, rec.Header().Get("Content-Length"), rec.Body.Bytes())
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/body", nil))
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("without an id: status %d, want 400", rec.Code)
	}
}

// TestHashCheckCatchesWrongBodies: the load generator's workers count a
// body that is another request's as a mismatch (not an error), one cut
// short as truncated and an error, and the rest as verified.
func TestHashCheckCatchesWrongBodies(t *testing.T) {
	const size = 4096
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		_, seq, _ := strings.Cut(id, "-")
		n, _ := strconv.Atoi(seq)
		w.Header().Set("Content-Length", strconv.Itoa(size))
		switch n % 4 {
		case 1: // another request's body
			w.Write(hashedBody(nil, id+"0", size))
		case 2: // cut short: the server closes the connection
			w.Write(hashedBody(nil, id, size)[:size/2])
		default:
			w.Write(hashedBody(nil, id, size))
		}
	}))
	defer srv.Close()
	tg := &target{kind: kindH1, base: srv.URL}
	p := newClientPool(tg, 4, 5*time.Second)
	defer p.close()
	p.idPrefix = "t"
	r := request{method: "GET", wantBytes: size, timeout: 5 * time.Second, hashed: true}
	res := p.run(context.Background(), 4, 1, phase{end: time.Now(), minOne: true}, r)
	want := bodyCounts{verified: 2, mismatched: 1, truncated: 1}
	if res.bodies != want || res.errors != 1 || len(res.lat) != 2 {
		t.Fatalf("bodies %+v, %d errors, %d answered; want %+v, 1 error, 2 answered (errors: %v)", res.bodies, res.errors, len(res.lat), want, p.errs.samples())
	}
}

// TestStormChecksCatchABadBody: under faults the storm fails when a body
// was not its own or was cut short, and passes when every one was whole.
func TestStormChecksCatchABadBody(t *testing.T) {
	b := &bench{o: &options{}}
	tg := &target{builtin: true}
	const name = "every body was its request's, whole"
	run := func(verified, mismatched, truncated int64) (ok, present bool) {
		s := figures{Conns: 10, Handshakes: 10, Migrations: 10, Streams: 2, Errors: truncated,
			RelayForwarded: ptr(int64(1000)), RelayDropped: ptr(int64(50)),
			BodiesVerified: &verified, BodiesMismatched: &mismatched, BodiesTruncated: &truncated}
		for _, c := range b.checks(scStorm, tg, &targetReport{Rounds: []figures{s}, Summary: s}) {
			if c.Name == name {
				return c.OK, true
			}
		}
		return false, false
	}
	if ok, present := run(100, 0, 0); !ok || !present {
		t.Fatalf("100 verified bodies: check %v, present %v", ok, present)
	}
	if ok, _ := run(100, 1, 0); ok {
		t.Fatal("a body not its own passed")
	}
	if ok, _ := run(100, 0, 1); ok {
		t.Fatal("a body cut short passed")
	}
	if ok, _ := run(0, 0, 0); ok {
		t.Fatal("no body verified passed")
	}
}

func TestFaultSettingsString(t *testing.T) {
	for f, want := range map[faultSettings]string{
		{Loss: 0.05, JitterMS: 50}:                  "5 % loss each way, 0s delay, up to 50ms jitter",
		{Loss: 0.125, DelayMS: 1500, JitterMS: 0.5}: "12.5 % loss each way, 1.5s delay, up to 500µs jitter",
	} {
		if got := f.String(); got != want {
			t.Errorf("%+v: %q, want %q", f, got, want)
		}
	}
}

func TestParseFaultOptions(t *testing.T) {
	o, err := parseOptions([]string{"--scenarios", "storm", "--faults"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f := o.faults; f == nil || f.Loss != 0.05 || f.Jitter != 50*time.Millisecond || f.Delay != 0 {
		t.Fatalf("faults %+v, want 5 %% loss, 50ms jitter, no delay", o.faults)
	}
	o, err = parseOptions([]string{"--faults", "--fault-loss", "0.1", "--fault-delay", "20ms", "--fault-jitter", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f := o.faults; f == nil || f.Loss != 0.1 || f.Jitter != 0 || f.Delay != 20*time.Millisecond {
		t.Fatalf("faults %+v", o.faults)
	}
	if o, err := parseOptions(nil, io.Discard); err != nil || o.faults != nil {
		t.Fatalf("no --faults: faults %+v, %v", o.faults, err)
	}
	for _, args := range [][]string{
		{"--fault-loss", "0.1"},
		{"--faults", "--fault-loss", "1"},
		{"--faults", "--fault-loss", "-0.1"},
		{"--faults", "--fault-jitter", "-1ms"},
		{"--faults", "--scenarios", "latency"},
	} {
		if _, err := parseOptions(args, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("parseOptions(%q) = %v, want a usage error", args, err)
		}
	}
}

// TestFaultSmoke runs the storm under faults with tiny settings on the
// baseline, the relay and roamgate (roamgate-unix differs from roamgate
// only behind it): the relay dropped packets, every client migrated, every
// body was verified whole and its own, and every check passed (roamgate's:
// sets kept across migrations, every migration seen).
func TestFaultSmoke(t *testing.T) {
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	tmp := t.TempDir()
	quietChildren(t, tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	args := []string{"--scenarios", "storm", "--faults", "--fault-loss", "0.05", "--storm", "10", "--storm-streams", "2",
		"--duration", "300ms", "--rounds", "1", "--targets", "h3-plain,h3-relay,roamgate", "--json", jsonPath}
	if err := run(ctx, args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	if out := stdout.String(); !strings.Contains(out, "relay packets forwarded") || !strings.Contains(out, "every body whole and its own") {
		t.Errorf("no fault table or check in:\n%s", out)
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("decode the JSON report: %v", err)
	}
	if f := rep.Settings.Faults; f == nil || f.Loss != 0.05 || f.JitterMS != 50 {
		t.Errorf("settings: faults %+v", f)
	}
	if len(rep.Scenarios) != 1 || len(rep.Scenarios[0].Targets) != 3 {
		t.Fatalf("want the storm on 3 targets:\n%s", &stdout)
	}
	for _, tr := range rep.Scenarios[0].Targets {
		s := tr.Summary
		switch {
		case s.RelayDropped == nil || *s.RelayDropped == 0 || *s.RelayForwarded == 0:
			t.Errorf("%s: the relay dropped nothing (%s of %s)", tr.Target, fmtInt(s.RelayDropped), fmtInt(s.RelayForwarded))
		case *s.BodiesVerified == 0 || *s.BodiesMismatched != 0 || *s.BodiesTruncated != 0:
			t.Errorf("%s: %d bodies verified, %d mismatched, %d truncated", tr.Target, *s.BodiesVerified, *s.BodiesMismatched, *s.BodiesTruncated)
		case s.Migrations != 10 || s.Errors != 0:
			t.Errorf("%s: %d migrations, %d errors", tr.Target, s.Migrations, s.Errors)
		}
		found := false
		for _, c := range tr.Checks {
			found = found || c.Name == "every body was its request's, whole"
		}
		if !found {
			t.Errorf("%s: no body check among %v", tr.Target, tr.Checks)
		}
	}
	if kids := childrenOf(t, os.Getpid()); len(kids) > 0 {
		t.Errorf("child processes left: %v", kids)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
		t.Errorf("temporary files left: %v", entries)
	}
	goleak.VerifyNone(t)
}
