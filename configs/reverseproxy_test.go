package configs

import (
	"testing"
	"time"
)

func TestParseReverseProxyOptions(t *testing.T) {
	// The reverse_proxy is at 2:2 with upstream b at 2:16; its block's lines
	// are given.
	tests := []struct {
		name  string
		block string
		want  func(rp *ReverseProxy) // changes to proxy's defaults
	}{
		{"no block", "", func(*ReverseProxy) {}},
		{"keepalive_idle", "keepalive_idle 90s", func(rp *ReverseProxy) { rp.KeepaliveIdle = 90 * time.Second }},
		{"keepalive_idle zero", "keepalive_idle 0", func(rp *ReverseProxy) {}},
		{"round_robin", "lb_policy round_robin", func(rp *ReverseProxy) { rp.LBPolicy = LBRoundRobin }},
		{"least_conn", "lb_policy least_conn", func(rp *ReverseProxy) { rp.LBPolicy = LBLeastConn }},
		{"random", "lb_policy random", func(rp *ReverseProxy) { rp.LBPolicy = LBRandom }},
		{"first", "lb_policy first", func(rp *ReverseProxy) { rp.LBPolicy = LBFirst }},
		{"cookie", "lb_policy cookie", func(rp *ReverseProxy) { rp.LBPolicy, rp.LBKey = LBCookie, DefaultLBCookie }},
		{"cookie name", "lb_policy cookie __Host-lb", func(rp *ReverseProxy) { rp.LBPolicy, rp.LBKey = LBCookie, "__Host-lb" }},
		{"header", "lb_policy header x-session-id", func(rp *ReverseProxy) { rp.LBPolicy, rp.LBKey = LBHeader, "X-Session-Id" }},
		{"lb_try_duration", "lb_try_duration 10s", func(rp *ReverseProxy) { rp.LBTryDuration = 10 * time.Second }},
		{"lb_try_duration zero", "lb_try_duration 0s", func(rp *ReverseProxy) { rp.LBTryDuration = 0 }},
		{"lb_try_interval", "lb_try_interval 1ms", func(rp *ReverseProxy) { rp.LBTryInterval = time.Millisecond }},
		{"health_uri", "health_uri /healthz?full=1", func(rp *ReverseProxy) { rp.HealthURI = "/healthz?full=1" }},
		{"active health", "health_uri /h\n\t\thealth_interval 10s\n\t\thealth_timeout 2s\n\t\thealth_status 204", func(rp *ReverseProxy) {
			rp.HealthURI, rp.HealthInterval, rp.HealthTimeout = "/h", 10*time.Second, 2*time.Second
			rp.HealthStatus, rp.HealthStatusClass = 204, false
		}},
		{"health_status class", "health_uri /h; health_status 3XX", func(rp *ReverseProxy) {
			rp.HealthURI, rp.HealthStatus, rp.HealthStatusClass = "/h", 300, true
		}},
		{"fail_duration", "fail_duration 30s", func(rp *ReverseProxy) { rp.FailDuration = 30 * time.Second }},
		{"passive health", "fail_duration 1m\n\t\tmax_fails 3\n\t\tunhealthy_status 5xx 429 404", func(rp *ReverseProxy) {
			rp.FailDuration, rp.MaxFails = time.Minute, 3
			rp.UnhealthyStatus = []StatusMatcher{{Code: 500, Class: true}, {Code: 429}, {Code: 404}}
		}},
		{"old options keep working", "max_conns_per_session 2\n\t\tdial_timeout 1s\n\t\tresponse_header_timeout 5s", func(rp *ReverseProxy) {
			rp.MaxConnsPerSession, rp.DialTimeout, rp.ResponseHeaderTimeout = 2, time.Second, 5*time.Second
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "reverse_proxy b"
			if tt.block != "" {
				src += " {\n\t\t" + tt.block + "\n\t}"
			}
			cfg, err := Parse("Roamfile", []byte(inSite(src)), testEnv)
			if err != nil {
				t.Fatalf("Parse(%q):\n%v", src, err)
			}
			want := proxy(at(2, 2), Upstream{Pos: at(2, 16), Addr: "b:80", Text: "b"})
			tt.want(want)
			if d := diffRoute(cfg.Sites[0].Routes[0], Route{Pos: at(2, 2), ReverseProxy: want}); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestParseReverseProxyErrors(t *testing.T) {
	rp := func(sub string) string { return inSite("reverse_proxy b {\n\t\t" + sub + "\n\t}") }
	const want = ` (want round_robin, least_conn, random, first, cookie, header)`
	testParseErrors(t, []errorTest{
		{"misspelt new subdirective", rp("health_statu 200"), `Roamfile:3:3: reverse_proxy: unknown subdirective "health_statu" (did you mean health_status?)`},
		{"subdirective by prefix", rp("lb_pol random"), `Roamfile:3:3: reverse_proxy: unknown subdirective "lb_pol" (did you mean lb_policy?)`},
		{"Caddy subdirective", rp("transport http"), `Roamfile:3:3: reverse_proxy: unknown subdirective "transport"`},
		{"keepalive_idle negative", rp("keepalive_idle -1s"), `Roamfile:3:18: reverse_proxy: keepalive_idle: duration "-1s" must not be negative`},
		{"keepalive_idle invalid", rp("keepalive_idle forever"), `Roamfile:3:18: reverse_proxy: keepalive_idle: invalid duration "forever" (examples: 500ms, 5s, 2m, 1h30m)`},
		{"keepalive_idle twice", rp("keepalive_idle 1s\n\t\tkeepalive_idle 2s"), `Roamfile:4:3: reverse_proxy: keepalive_idle: already set at Roamfile:3:3`},

		{"lb_policy missing", rp("lb_policy"), `Roamfile:3:3: reverse_proxy: lb_policy: missing argument`},
		{"lb_policy unknown", rp("lb_policy rnd"), `Roamfile:3:13: reverse_proxy: lb_policy: unknown policy "rnd"` + want},
		{"lb_policy misspelt", rp("lb_policy least_con"), `Roamfile:3:13: reverse_proxy: lb_policy: unknown policy "least_con" (did you mean least_conn?)`},
		{"lb_policy Caddy uri_hash", rp("lb_policy uri_hash"), `Roamfile:3:13: reverse_proxy: lb_policy: unknown policy "uri_hash"` + want},
		{"lb_policy ip_hash", rp("lb_policy ip_hash"), `Roamfile:3:13: reverse_proxy: lb_policy: ip_hash is not supported: the client address changes when a QUIC client migrates (use cookie or header)`},
		{"lb_policy client_ip_hash", rp("lb_policy client_ip_hash"), `Roamfile:3:13: reverse_proxy: lb_policy: client_ip_hash is not supported: the client address changes when a QUIC client migrates (use cookie or header)`},
		{"lb_policy extra", rp("lb_policy random x"), `Roamfile:3:20: reverse_proxy: lb_policy: unexpected argument "x"`},
		{"lb_policy cookie extra", rp("lb_policy cookie a b"), `Roamfile:3:22: reverse_proxy: lb_policy: unexpected argument "b"`},
		{"lb_policy cookie name", rp("lb_policy cookie a=b"), `Roamfile:3:20: reverse_proxy: lb_policy: invalid cookie name "a=b"`},
		{"lb_policy cookie empty name", rp(`lb_policy cookie ""`), `Roamfile:3:20: reverse_proxy: lb_policy: invalid cookie name ""`},
		{"lb_policy header missing", rp("lb_policy header"), `Roamfile:3:13: reverse_proxy: lb_policy: missing header name (want lb_policy header NAME)`},
		{"lb_policy header name", rp("lb_policy header X:Y"), `Roamfile:3:20: reverse_proxy: lb_policy: invalid header name "X:Y"`},
		{"lb_policy twice", rp("lb_policy first\n\t\tlb_policy random"), `Roamfile:4:3: reverse_proxy: lb_policy: already set at Roamfile:3:3`},
		{"lb_try_duration negative", rp("lb_try_duration -1s"), `Roamfile:3:19: reverse_proxy: lb_try_duration: duration "-1s" must not be negative`},
		{"lb_try_interval zero", rp("lb_try_interval 0"), `Roamfile:3:19: reverse_proxy: lb_try_interval: duration "0" must be positive`},

		{"health_uri relative", rp("health_uri healthz"), `Roamfile:3:14: reverse_proxy: health_uri: invalid path "healthz" (want a path starting with /, as in /healthz)`},
		{"health_uri URL", rp("health_uri http://b/healthz"), `Roamfile:3:14: reverse_proxy: health_uri: invalid path "http://b/healthz" (want a path starting with /, as in /healthz)`},
		{"health_uri space", rp(`health_uri "/a b"`), `Roamfile:3:14: reverse_proxy: health_uri: invalid path "/a b" (want a path starting with /, as in /healthz)`},
		{"health_uri fragment", rp("health_uri /a#b"), `Roamfile:3:14: reverse_proxy: health_uri: invalid path "/a#b" (want a path starting with /, as in /healthz)`},
		{"health_uri missing", rp("health_uri"), `Roamfile:3:3: reverse_proxy: health_uri: missing argument`},
		{"health_interval zero", rp("health_uri /h; health_interval 0s"), `Roamfile:3:34: reverse_proxy: health_interval: duration "0s" must be positive`},
		{"health_timeout negative", rp("health_uri /h; health_timeout -5s"), `Roamfile:3:33: reverse_proxy: health_timeout: duration "-5s" must be positive`},
		{"health_status invalid", rp("health_uri /h; health_status 2x"), `Roamfile:3:32: reverse_proxy: health_status: invalid status "2x" (want a code 100-599 or a class such as 5xx)`},
		{"health_status 600", rp("health_uri /h; health_status 600"), `Roamfile:3:32: reverse_proxy: health_status: invalid status "600" (want a code 100-599 or a class such as 5xx)`},
		{"health_status 6xx", rp("health_uri /h; health_status 6xx"), `Roamfile:3:32: reverse_proxy: health_status: invalid status "6xx" (want a code 100-599 or a class such as 5xx)`},
		{"health_status two", rp("health_uri /h; health_status 200 204"), `Roamfile:3:36: reverse_proxy: health_status: unexpected argument "204"`},
		{"health_interval without health_uri", rp("health_interval 5s"), `Roamfile:3:3: reverse_proxy: health_interval: needs health_uri`},
		{"health_timeout without health_uri", rp("health_timeout 5s"), `Roamfile:3:3: reverse_proxy: health_timeout: needs health_uri`},
		{"health_status without health_uri", rp("health_status 2xx"), `Roamfile:3:3: reverse_proxy: health_status: needs health_uri`},
		{"health_status invalid and without health_uri", rp("health_status 2x"), "Roamfile:3:3: reverse_proxy: health_status: needs health_uri\n" +
			`Roamfile:3:17: reverse_proxy: health_status: invalid status "2x" (want a code 100-599 or a class such as 5xx)`},
		{"invalid health_uri counts as written", rp("health_uri x; health_interval 5s"), `Roamfile:3:14: reverse_proxy: health_uri: invalid path "x" (want a path starting with /, as in /healthz)`},

		{"fail_duration zero", rp("fail_duration 0s"), `Roamfile:3:17: reverse_proxy: fail_duration: duration "0s" must be positive`},
		{"max_fails zero", rp("fail_duration 1s; max_fails 0"), `Roamfile:3:31: reverse_proxy: max_fails: 0 out of range (want 1 or more)`},
		{"max_fails not a number", rp("fail_duration 1s; max_fails few"), `Roamfile:3:31: reverse_proxy: max_fails: invalid number "few"`},
		{"unhealthy_status missing", rp("fail_duration 1s; unhealthy_status"), `Roamfile:3:21: reverse_proxy: unhealthy_status: missing argument`},
		{"unhealthy_status invalid", rp("fail_duration 1s; unhealthy_status 5xx 50x"), `Roamfile:3:42: reverse_proxy: unhealthy_status: invalid status "50x" (want a code 100-599 or a class such as 5xx)`},
		{"unhealthy_status block", rp("fail_duration 1s; unhealthy_status 5xx {\n\t\t}"), `Roamfile:3:42: reverse_proxy: unhealthy_status: unexpected block`},
		{"unhealthy_status twice", rp("fail_duration 1s\n\t\tunhealthy_status 502\n\t\tunhealthy_status 503"), `Roamfile:5:3: reverse_proxy: unhealthy_status: already set at Roamfile:4:3`},
		{"max_fails without fail_duration", rp("max_fails 2"), `Roamfile:3:3: reverse_proxy: max_fails: needs fail_duration`},
		{"unhealthy_status without fail_duration", rp("unhealthy_status 5xx"), `Roamfile:3:3: reverse_proxy: unhealthy_status: needs fail_duration`},
	})
}

// TestParseReverseProxyEverything checks a reverse_proxy that uses every
// subdirective, in a handle_path block.
func TestParseReverseProxyEverything(t *testing.T) {
	src := `a.com {
	handle_path /api/* {
		reverse_proxy 10.0.0.1:8080 {
			to 10.0.0.2:8080
			max_conns_per_session 16
			dial_timeout 2s
			response_header_timeout 30s
			keepalive_idle 5m
			lb_policy cookie lb
			lb_try_duration 5s
			lb_try_interval 100ms
			health_uri /healthz
			health_interval 15s
			health_timeout 3s
			health_status 2xx
			fail_duration 30s
			max_fails 5
			unhealthy_status 502 503 504
			header_up Host {upstream_hostport}
			header_down -Server
		}
	}
}`
	cfg, err := Parse("Roamfile", []byte(src), testEnv)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	want := Route{Pos: at(2, 2), Path: "/api/*", StripPrefix: "/api", ReverseProxy: &ReverseProxy{
		Pos: at(3, 3),
		Upstreams: []Upstream{
			{Pos: at(3, 17), Addr: "10.0.0.1:8080", Text: "10.0.0.1:8080"},
			{Pos: at(4, 7), Addr: "10.0.0.2:8080", Text: "10.0.0.2:8080"},
		},
		MaxConnsPerSession:    16,
		DialTimeout:           2 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		KeepaliveIdle:         5 * time.Minute,
		LBPolicy:              LBCookie,
		LBKey:                 "lb",
		LBTryDuration:         5 * time.Second,
		LBTryInterval:         100 * time.Millisecond,
		HealthURI:             "/healthz",
		HealthInterval:        15 * time.Second,
		HealthTimeout:         3 * time.Second,
		HealthStatus:          200,
		HealthStatusClass:     true,
		FailDuration:          30 * time.Second,
		MaxFails:              5,
		UnhealthyStatus:       []StatusMatcher{{Code: 502}, {Code: 503}, {Code: 504}},
		HeaderUp:              []HeaderOp{{Pos: at(19, 4), Name: "Host", Value: "{upstream_hostport}"}},
		HeaderDown:            []HeaderOp{{Pos: at(20, 4), Name: "Server", Delete: true}},
	}}
	if d := diffRoute(cfg.Sites[0].Routes[0], want); d != "" {
		t.Error(d)
	}
}

func TestStatusMatcherMatches(t *testing.T) {
	tests := []struct {
		m    StatusMatcher
		code int
		want bool
	}{
		{StatusMatcher{Code: 503}, 503, true},
		{StatusMatcher{Code: 503}, 502, false},
		{StatusMatcher{Code: 500, Class: true}, 599, true},
		{StatusMatcher{Code: 500, Class: true}, 404, false},
	}
	for _, tt := range tests {
		if got := tt.m.Matches(tt.code); got != tt.want {
			t.Errorf("%+v.Matches(%d) = %v, want %v", tt.m, tt.code, got, tt.want)
		}
	}
}
