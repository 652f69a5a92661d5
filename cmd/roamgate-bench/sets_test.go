package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestSetFigures: the backend's record of the storm's clients gives
// connections per client, the clients whose set changed across their
// migration, and connections shared by clients.
func TestSetFigures(t *testing.T) {
	f := setsReport{
		"0": {{1, 2}, {1, 2}}, // kept its set
		"1": {{3}, {3}},       // one connection
		"2": {{4, 5}, {4, 6}}, // a new connection after migrating
		"3": {{7}, {1}},       // another client's connection
		"4": {{8}, {8, 9}},    // reached its second connection late
		"5": {{10}, {11}},     // one connection in place of another
	}.figures(2)
	if f.Clients != 6 || f.Changed != 3 || f.Grew != 1 || f.MaxPerConn != 3 || f.Shared != 1 {
		t.Fatalf("figures = %+v, want 6 clients, 3 changed, 1 grew, at most 3, 1 shared", f)
	}
	if f.PerClient != 2 { // (2+1+3+2+2+2)/6
		t.Fatalf("per client = %v, want 2", f.PerClient)
	}
}

// TestSetRecorder: the backend records each labelled request's connection
// by client and phase, and answers and resets the record on its control
// endpoint.
func TestSetRecorder(t *testing.T) {
	rec := &setRecorder{}
	mux := http.NewServeMux()
	rec.serve(mux)
	ctl := httptest.NewServer(mux)
	defer ctl.Close()
	for _, tc := range []struct {
		label string
		conn  uint64
	}{{"7/0", 1}, {"7/0", 2}, {"7/1", 2}, {"", 3}, {"8/1", 4}} {
		r := httptest.NewRequest("GET", "/", nil)
		if tc.label != "" {
			r.Header.Set(clientHeader, tc.label)
		}
		rec.record(r.WithContext(context.WithValue(r.Context(), connIDKey{}, tc.conn)))
	}
	c := newControlClient()
	defer c.close()
	addr := strings.TrimPrefix(ctl.URL, "http://")
	got, err := c.sets(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got["7"][0]) != 2 || len(got["7"][1]) != 1 || got["8"][1][0] != 4 {
		t.Fatalf("sets = %v", got)
	}
	if err := c.resetSets(context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	if got, err := c.sets(context.Background(), addr); err != nil || len(got) != 0 {
		t.Fatalf("after reset: %v, %v", got, err)
	}
}

// TestStormChecksCatchAGrowingSet: the storm's checks fail when a client
// used more connections than it had requests in flight, or changed its set.
func TestStormChecksCatchAGrowingSet(t *testing.T) {
	b := &bench{o: &options{}}
	tg := &target{builtin: true}
	run := func(maxPer, changed, opened int64) map[string]bool {
		s := figures{Conns: 10, Handshakes: 10, Migrations: 10, Streams: 2,
			TrackedClients: ptr(int64(10)), UpstreamPerClient: ptr(2.0), UpstreamMaxPerClient: &maxPer,
			SetsChanged: &changed, SetsGrew: ptr(int64(1)), SharedUpstream: ptr(int64(0)),
			// One session reached its second connection after the warm-up.
			UpstreamOpened: ptr(int64(1)), UpstreamOpenedAll: &opened}
		ok := map[string]bool{}
		for _, c := range b.checks(scStorm, tg, &targetReport{Rounds: []figures{s}, Summary: s}) {
			ok[c.Name] = c.OK
		}
		return ok
	}
	const bound, kept, life = "backend saw at most --storm-streams connections per client",
		"every client kept its set across its migration", "sessions never outgrew their clients"
	if ok := run(2, 0, 20); !ok[bound] || !ok[kept] || !ok[life] {
		t.Fatalf("clients within their bound failed the checks: %v", ok)
	}
	if kept, present := run(2, 0, 20)["sessions kept their upstream connections"]; present && !kept {
		t.Fatal("a connection first dialled after the warm-up, within the bound, failed the storm")
	}
	if ok := run(3, 0, 20); ok[bound] {
		t.Fatal("3 connections for 2 in flight passed")
	}
	if ok := run(2, 1, 20); ok[kept] {
		t.Fatal("a changed set passed")
	}
	if ok := run(2, 0, 21); ok[life] {
		t.Fatal("21 connections for 10 clients × 2 in flight passed")
	}
}
