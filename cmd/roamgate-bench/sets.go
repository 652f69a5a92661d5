package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// clientHeader labels a storm request "CLIENT/PHASE" (phase 0 before the
// client's migration, 1 after), so the backend can tell which upstream
// connections each client's requests came over (issue 12).
const clientHeader = "X-Bench-Client"

// connID numbers the backend's connections; it is in each request's
// context. A Unix socket has no peer address to tell its connections by.
type connIDKey struct{}

var nextConnID atomic.Uint64

func withConnID(ctx context.Context) context.Context {
	return context.WithValue(ctx, connIDKey{}, nextConnID.Add(1))
}

// setRecorder is the backend's record of the connections each labelled
// client's requests came over, by phase.
type setRecorder struct {
	mu   sync.Mutex
	sets clientSets
}

// clientSets maps a client to the connection IDs of its requests, before
// and after its migration.
type clientSets map[string]*[2]map[uint64]bool

func (s *setRecorder) record(r *http.Request) {
	label := r.Header.Get(clientHeader)
	if label == "" {
		return
	}
	client, phase, _ := strings.Cut(label, "/")
	id, _ := r.Context().Value(connIDKey{}).(uint64)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sets == nil {
		s.sets = clientSets{}
	}
	cs := s.sets[client]
	if cs == nil {
		cs = &[2]map[uint64]bool{{}, {}}
		s.sets[client] = cs
	}
	p := 0
	if phase == "1" {
		p = 1
	}
	cs[p][id] = true
}

// setsReport is what GET /sets answers: client → [before, after] IDs.
type setsReport map[string][2][]uint64

// serve answers GET /sets and POST /sets/reset on the control endpoint.
func (s *setRecorder) serve(mux *http.ServeMux) {
	mux.HandleFunc("GET /sets", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		out := setsReport{}
		for c, cs := range s.sets {
			var r [2][]uint64
			for p := range cs {
				for id := range cs[p] {
					r[p] = append(r[p], id)
				}
				sort.Slice(r[p], func(i, j int) bool { return r[p][i] < r[p][j] })
			}
			out[c] = r
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("POST /sets/reset", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.sets = nil
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
}

// setFigures is what the backend saw of the storm's clients: connections
// per client (mean and largest), clients whose set changed across their
// migration, and clients whose set grew after it.
//
// A client with streams requests in flight may reach the backend over
// fewer connections for a while (roamgate waits briefly for a connection
// about to be free rather than dial), so a set that had fewer than streams
// connections before the migration and only gained one after it, keeping
// the ones it had, grew: the bound (at most streams per client) still
// holds. A set changed when a connection appeared after the migration in
// place of one from before: a full set gained one, or one from before was
// never used again.
type setFigures struct {
	Clients    int64
	PerClient  float64
	MaxPerConn int64 // largest set of one client
	Changed    int64
	Grew       int64
	Shared     int64 // connections that carried more than one client
}

func (r setsReport) figures(streams int) setFigures {
	var f setFigures
	var total int64
	owner := map[uint64]string{}
	shared := map[uint64]bool{}
	for c, sets := range r {
		f.Clients++
		all := map[uint64]bool{}
		for _, id := range sets[0] {
			all[id] = true
		}
		after := map[uint64]bool{}
		added := false
		for _, id := range sets[1] {
			after[id] = true
			if !all[id] {
				added = true
				all[id] = true
			}
		}
		if added {
			dropped := false
			for _, id := range sets[0] {
				dropped = dropped || !after[id]
			}
			if dropped || len(sets[0]) >= streams {
				f.Changed++
			} else {
				f.Grew++
			}
		}
		for id := range all {
			if o, ok := owner[id]; ok && o != c {
				shared[id] = true
			}
			owner[id] = c
		}
		total += int64(len(all))
		f.MaxPerConn = max(f.MaxPerConn, int64(len(all)))
	}
	if f.Clients > 0 {
		f.PerClient = float64(total) / float64(f.Clients)
	}
	f.Shared = int64(len(shared))
	return f
}

// sets asks the backend's control endpoint for what it recorded.
func (c *controlClient) sets(ctx context.Context, addr string) (setsReport, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/sets", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client sets of child %s: %w", addr, err)
	}
	defer resp.Body.Close()
	var r setsReport
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("client sets of child %s: %w", addr, err)
	}
	return r, nil
}

// resetSets clears the backend's record.
func (c *controlClient) resetSets(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/sets/reset", nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reset client sets of child %s: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("reset client sets of child %s: status %d", addr, resp.StatusCode)
	}
	return nil
}
