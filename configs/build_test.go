package configs

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// at returns a position in "Roamfile".
func at(line, col int) Position { return Position{File: "Roamfile", Line: line, Col: col} }

// proxy returns a ReverseProxy at pos with the default settings.
func proxy(pos Position, upstreams ...Upstream) *ReverseProxy {
	return &ReverseProxy{
		Pos:                   pos,
		Upstreams:             upstreams,
		MaxConnsPerSession:    DefaultMaxConnsPerSession,
		DialTimeout:           DefaultDialTimeout,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		LBTryDuration:         DefaultLBTryDuration,
		LBTryInterval:         DefaultLBTryInterval,
		HealthInterval:        DefaultHealthInterval,
		HealthTimeout:         DefaultHealthTimeout,
		HealthStatus:          200,
		HealthStatusClass:     true,
		MaxFails:              1,
	}
}

// only returns the routes of a site whose one handler is rp, written
// outside any handle block.
func only(rp *ReverseProxy) []Route { return []Route{{Pos: rp.Pos, ReverseProxy: rp}} }

// defaults returns the Config of a file with no global options and sites.
func defaults(sites ...Site) *Config {
	return &Config{
		File:                "Roamfile",
		HTTPSPort:           DefaultHTTPSPort,
		HTTPPort:            DefaultHTTPPort,
		ZeroRTT:             true,
		MaxHeaderBytes:      DefaultMaxHeaderBytes,
		MaxHeaderFieldBytes: DefaultMaxHeaderFieldBytes,
		HandshakeRate:       DefaultHandshakeRate,
		HandshakeRatePerIP:  DefaultHandshakeRatePerIP,
		UpgradeGrace:        DefaultUpgradeGrace,
		UpgradeTimeout:      DefaultUpgradeTimeout,
		UpgradeSteering:     "auto",
		Log:                 Log{Level: "info", Format: "console"},
		Sites:               sites,
	}
}

// withLimits returns want with the global header limits in each site that
// names none of its own, as Parse gives them.
func withLimits(want *Config) *Config {
	w := *want
	w.Sites = slices.Clone(want.Sites)
	for i := range w.Sites {
		if w.Sites[i].Limits == (Limits{}) {
			w.Sites[i].Limits = Limits{HeaderBytes: w.MaxHeaderBytes, FieldBytes: w.MaxHeaderFieldBytes}
		}
	}
	return &w
}

// diffConfig describes the first difference between got and want, or
// returns "" if they are equal.
func diffConfig(got, want *Config) string {
	want = withLimits(want)
	if reflect.DeepEqual(got, want) {
		return ""
	}
	g, w := *got, *want
	g.Sites, w.Sites = nil, nil
	if !reflect.DeepEqual(g, w) {
		return fmt.Sprintf("global settings\n got %+v\nwant %+v", g, w)
	}
	if len(got.Sites) != len(want.Sites) {
		return fmt.Sprintf("%d sites, want %d", len(got.Sites), len(want.Sites))
	}
	for i := range got.Sites {
		gs, ws := got.Sites[i], want.Sites[i]
		if len(gs.Routes) != len(ws.Routes) {
			return fmt.Sprintf("site %d: %d routes, want %d\n got %s", i, len(gs.Routes), len(ws.Routes), renderRoutes(gs.Routes))
		}
		for j := range gs.Routes {
			if d := diffRoute(gs.Routes[j], ws.Routes[j]); d != "" {
				return fmt.Sprintf("site %d route %d: %s", i, j, d)
			}
		}
		gs.Routes, ws.Routes = nil, nil
		if !reflect.DeepEqual(gs, ws) {
			return fmt.Sprintf("site %d\n got %+v\nwant %+v", i, gs, ws)
		}
	}
	return "configs differ"
}

// diffRoute describes the first difference between routes got and want,
// or returns "" if they are equal.
func diffRoute(got, want Route) string {
	if reflect.DeepEqual(got, want) {
		return ""
	}
	for _, h := range []struct {
		name      string
		got, want any
	}{
		{"reverse_proxy", got.ReverseProxy, want.ReverseProxy},
		{"respond", got.Respond, want.Respond},
		{"redir", got.Redir, want.Redir},
	} {
		if !reflect.DeepEqual(h.got, h.want) {
			return fmt.Sprintf("%s\n got %+v\nwant %+v", h.name, h.got, h.want)
		}
	}
	got.ReverseProxy, got.Respond, got.Redir = nil, nil, nil
	want.ReverseProxy, want.Respond, want.Redir = nil, nil, nil
	return fmt.Sprintf("\n got %+v\nwant %+v", got, want)
}

// renderRoutes renders routes as "path@line:col" words.
func renderRoutes(routes []Route) string {
	var s []string
	for _, r := range routes {
		s = append(s, fmt.Sprintf("%q@%d:%d", r.Path, r.Pos.Line, r.Pos.Col))
	}
	return strings.Join(s, " ")
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want *Config
	}{
		{
			name: "minimal",
			src:  "example.com {\n\treverse_proxy localhost:8080\n}",
			want: defaults(Site{
				Pos:       at(1, 1),
				Addresses: []Address{{Pos: at(1, 1), Host: "example.com", Port: 443, Text: "example.com"}},
				TLS:       TLS{Pos: at(1, 1)},
				Routes:    only(proxy(at(2, 2), Upstream{Pos: at(2, 16), Addr: "localhost:8080", Text: "localhost:8080"})),
			}),
		},
		{
			name: "shorthand",
			src:  "# sidecar\nlocalhost:8443\nreverse_proxy :{$PORT}\n",
			want: defaults(Site{
				Pos:       at(2, 1),
				Addresses: []Address{{Pos: at(2, 1), Host: "localhost", Port: 8443, Text: "localhost:8443"}},
				TLS:       TLS{Pos: at(2, 1)},
				Routes:    only(proxy(at(3, 1), Upstream{Pos: at(3, 15), Addr: "localhost:8080", Text: ":8080"})),
			}),
		},
		{
			name: "global options",
			src: `{
	https_port 8443
	http_port 0
	data_dir "/var/lib/roam gate"
	default_bind 127.0.0.1 ::1 localhost
	admin localhost:2019
	log {
		level debug
		format json
	}
}
Example.COM:0 {
	reverse_proxy 10.0.0.5:8080
}
:9000, [::1], *.Example.com {
	reverse_proxy 10.0.0.6
}`,
			want: &Config{
				File:                "Roamfile",
				ZeroRTT:             true,
				MaxHeaderBytes:      DefaultMaxHeaderBytes,
				MaxHeaderFieldBytes: DefaultMaxHeaderFieldBytes,
				HandshakeRate:       DefaultHandshakeRate,
				HandshakeRatePerIP:  DefaultHandshakeRatePerIP,
				UpgradeGrace:        DefaultUpgradeGrace,
				UpgradeTimeout:      DefaultUpgradeTimeout,
				UpgradeSteering:     "auto",
				HTTPSPort:           8443,
				HTTPPort:            0,
				DataDir:             "/var/lib/roam gate",
				DefaultBind:         []string{"127.0.0.1", "::1", "localhost"},
				Admin:               "localhost:2019",
				Log:                 Log{Level: "debug", Format: "json"},
				Sites: []Site{
					{
						Pos:       at(12, 1),
						Addresses: []Address{{Pos: at(12, 1), Host: "example.com", Port: 0, Text: "Example.COM:0"}},
						TLS:       TLS{Pos: at(12, 1)},
						Routes:    only(proxy(at(13, 2), Upstream{Pos: at(13, 16), Addr: "10.0.0.5:8080", Text: "10.0.0.5:8080"})),
					},
					{
						Pos: at(15, 1),
						TLS: TLS{Pos: at(15, 1)},
						Addresses: []Address{
							{Pos: at(15, 1), Host: "", Port: 9000, Text: ":9000"},
							{Pos: at(15, 8), Host: "::1", Port: 8443, Text: "[::1]"},
							{Pos: at(15, 15), Host: "*.example.com", Port: 8443, Text: "*.Example.com"},
						},
						Routes: only(proxy(at(16, 2), Upstream{Pos: at(16, 16), Addr: "10.0.0.6:80", Text: "10.0.0.6"})),
					},
				},
			},
		},
		{
			name: "ACME global options",
			src: `{
	email ops@example.com
	acme_ca https://acme-staging-v02.api.letsencrypt.org/directory
	acme_ca_root /etc/roamgate/acme-ca.pem
	storage file_system /var/lib/roamgate
	on_demand_tls {
		ask http://localhost:9123/check?x=1
	}
	https_port 8443
	http_port 443
}
a {
	reverse_proxy b
}`,
			want: &Config{
				File:                "Roamfile",
				ZeroRTT:             true,
				MaxHeaderBytes:      DefaultMaxHeaderBytes,
				MaxHeaderFieldBytes: DefaultMaxHeaderFieldBytes,
				HandshakeRate:       DefaultHandshakeRate,
				HandshakeRatePerIP:  DefaultHandshakeRatePerIP,
				UpgradeGrace:        DefaultUpgradeGrace,
				UpgradeTimeout:      DefaultUpgradeTimeout,
				UpgradeSteering:     "auto",
				HTTPSPort:           8443,
				HTTPPort:            443,
				DataDir:             "/var/lib/roamgate",
				Email:               "ops@example.com",
				ACMECA:              "https://acme-staging-v02.api.letsencrypt.org/directory",
				ACMECARoot:          "/etc/roamgate/acme-ca.pem",
				OnDemandAsk:         "http://localhost:9123/check?x=1",
				Log:                 Log{Level: "info", Format: "console"},
				Sites: []Site{{
					Pos:       at(12, 1),
					Addresses: []Address{{Pos: at(12, 1), Host: "a", Port: 8443, Text: "a"}},
					TLS:       TLS{Pos: at(12, 1)},
					Routes:    only(proxy(at(13, 2), Upstream{Pos: at(13, 16), Addr: "b:80", Text: "b"})),
				}},
			},
		},
		{
			name: "storage block and ephemeral ports",
			src:  "{\n\tstorage file_system {\n\t\troot \"/srv/roam gate\"\n\t}\n\thttp_port 0; https_port 0\n}\na { reverse_proxy b }",
			want: func() *Config {
				c := defaults(Site{
					Pos:       at(7, 1),
					Addresses: []Address{{Pos: at(7, 1), Host: "a", Port: 0, Text: "a"}},
					TLS:       TLS{Pos: at(7, 1)},
					Routes:    only(proxy(at(7, 5), Upstream{Pos: at(7, 19), Addr: "b:80", Text: "b"})),
				})
				c.DataDir, c.HTTPPort, c.HTTPSPort = "/srv/roam gate", 0, 0
				return c
			}(),
		},
		{
			name: "storage redis with data_dir",
			src: `{
	data_dir /var/lib/roamgate
	storage redis {
		address redis.internal:6380
		db 2
		username roamgate
		password {$REDIS_PASSWORD}
		key_prefix fleet-eu
		tls on
		tls_ca /etc/roamgate/redis-ca.pem
		tls_server_name redis.internal
		dial_timeout 2s
		lock_ttl 30s
	}
}
a { reverse_proxy b }`,
			want: func() *Config {
				c := defaults(Site{
					Pos:       at(16, 1),
					Addresses: []Address{{Pos: at(16, 1), Host: "a", Port: 443, Text: "a"}},
					TLS:       TLS{Pos: at(16, 1)},
					Routes:    only(proxy(at(16, 5), Upstream{Pos: at(16, 19), Addr: "b:80", Text: "b"})),
				})
				c.DataDir = "/var/lib/roamgate"
				c.Redis = &RedisStorage{
					Pos: at(3, 2), Address: "redis.internal:6380", DB: 2, Username: "roamgate", Password: "hunter2",
					KeyPrefix: "fleet-eu", TLS: true, TLSCA: File{Pos: at(10, 10), Path: "/etc/roamgate/redis-ca.pem"},
					TLSServerName: "redis.internal", DialTimeout: 2 * time.Second, LockTTL: 30 * time.Second,
				}
				return c
			}(),
		},
		{
			name: "storage redis defaults, password file",
			src:  "{\n\tstorage redis {\n\t\taddress [::1]:6379\n\t\tpassword_file /run/secrets/redis\n\t}\n}\na { reverse_proxy b }",
			want: func() *Config {
				c := defaults(Site{
					Pos:       at(7, 1),
					Addresses: []Address{{Pos: at(7, 1), Host: "a", Port: 443, Text: "a"}},
					TLS:       TLS{Pos: at(7, 1)},
					Routes:    only(proxy(at(7, 5), Upstream{Pos: at(7, 19), Addr: "b:80", Text: "b"})),
				})
				c.Redis = &RedisStorage{
					Pos: at(2, 2), Address: "[::1]:6379", PasswordFile: File{Pos: at(4, 17), Path: "/run/secrets/redis"},
					KeyPrefix: DefaultRedisKeyPrefix, DialTimeout: DefaultRedisDialTimeout, LockTTL: DefaultRedisLockTTL,
				}
				return c
			}(),
		},
		{
			name: "one-line global block",
			src:  "{ log { format json }; admin off }\na { reverse_proxy b }",
			want: func() *Config {
				c := defaults(Site{
					Pos:       at(2, 1),
					Addresses: []Address{{Pos: at(2, 1), Host: "a", Port: 443, Text: "a"}},
					TLS:       TLS{Pos: at(2, 1)},
					Routes:    only(proxy(at(2, 5), Upstream{Pos: at(2, 19), Addr: "b:80", Text: "b"})),
				})
				c.Log.Format = "json"
				return c
			}(),
		},
		{
			name: "zero_rtt off and max_header_bytes",
			src:  "{\n\tzero_rtt off\n\tmax_header_bytes 64KiB\n}\na { respond 1 }",
			want: func() *Config {
				c := defaults(Site{
					Pos:       at(5, 1),
					Addresses: []Address{{Pos: at(5, 1), Host: "a", Port: 443, Text: "a"}},
					TLS:       TLS{Pos: at(5, 1)},
					Routes:    []Route{{Pos: at(5, 5), Respond: &Respond{Pos: at(5, 5), Status: 200, Body: "1"}}},
				})
				c.ZeroRTT, c.MaxHeaderBytes = false, 64<<10
				return c
			}(),
		},
		{
			name: "header limits, global and per site",
			src:  "{\n\tmax_header_bytes 16KiB\n\tmax_header_field_bytes 4KiB\n}\na {\n\tmax_header_bytes 64KiB\n\tmax_header_field_bytes 16KiB\n\trespond 1\n}\nb {\n\tmax_header_field_bytes 2KiB\n\trespond 1\n}",
			want: func() *Config {
				c := defaults(Site{
					Pos:       at(5, 1),
					Addresses: []Address{{Pos: at(5, 1), Host: "a", Port: 443, Text: "a"}},
					TLS:       TLS{Pos: at(5, 1)},
					Routes:    []Route{{Pos: at(8, 2), Respond: &Respond{Pos: at(8, 2), Status: 200, Body: "1"}}},
					Limits:    Limits{HeaderBytes: 64 << 10, FieldBytes: 16 << 10},
				}, Site{
					Pos:       at(10, 1),
					Addresses: []Address{{Pos: at(10, 1), Host: "b", Port: 443, Text: "b"}},
					TLS:       TLS{Pos: at(10, 1)},
					Routes:    []Route{{Pos: at(12, 2), Respond: &Respond{Pos: at(12, 2), Status: 200, Body: "1"}}},
					Limits:    Limits{HeaderBytes: 16 << 10, FieldBytes: 2 << 10}, // the global total
				})
				c.MaxHeaderBytes, c.MaxHeaderFieldBytes = 16<<10, 4<<10
				return c
			}(),
		},
		{
			name: "handshake rates",
			src:  "{\n\thandshake_rate 0\n\thandshake_rate_per_ip 50\n}\na { respond 1 }",
			want: func() *Config {
				c := defaults(Site{
					Pos:       at(5, 1),
					Addresses: []Address{{Pos: at(5, 1), Host: "a", Port: 443, Text: "a"}},
					TLS:       TLS{Pos: at(5, 1)},
					Routes:    []Route{{Pos: at(5, 5), Respond: &Respond{Pos: at(5, 5), Status: 200, Body: "1"}}},
				})
				c.HandshakeRate, c.HandshakeRatePerIP = 0, 50
				return c
			}(),
		},
		{
			name: "zero_rtt on",
			src:  "{\n\tzero_rtt on\n}\na { respond 1 }",
			want: defaults(Site{
				Pos:       at(4, 1),
				Addresses: []Address{{Pos: at(4, 1), Host: "a", Port: 443, Text: "a"}},
				TLS:       TLS{Pos: at(4, 1)},
				Routes:    []Route{{Pos: at(4, 5), Respond: &Respond{Pos: at(4, 5), Status: 200, Body: "1"}}},
			}),
		},
		{
			name: "reverse_proxy block",
			src: `https://example.com:8443 {
	reverse_proxy http://a:81 {
		to [::1]:8080 http://[fd00::1]
		to b
		max_conns_per_session 1024
		dial_timeout 1ms
		response_header_timeout 0
	}
}`,
			want: defaults(Site{
				Pos:       at(1, 1),
				Addresses: []Address{{Pos: at(1, 1), Host: "example.com", Port: 8443, Text: "https://example.com:8443"}},
				TLS:       TLS{Pos: at(1, 1)},
				Routes: only(func() *ReverseProxy {
					rp := proxy(at(2, 2),
						Upstream{Pos: at(2, 16), Addr: "a:81", Text: "http://a:81"},
						Upstream{Pos: at(3, 6), Addr: "[::1]:8080", Text: "[::1]:8080"},
						Upstream{Pos: at(3, 17), Addr: "[fd00::1]:80", Text: "http://[fd00::1]"},
						Upstream{Pos: at(4, 6), Addr: "b:80", Text: "b"},
					)
					rp.MaxConnsPerSession = 1024
					rp.DialTimeout = time.Millisecond
					rp.ResponseHeaderTimeout = 0
					return rp
				}()),
			}),
		},
		{
			name: "upstreams only in block",
			src:  "a {\n\treverse_proxy {\n\t\tto b:1\n\t}\n}",
			want: defaults(Site{
				Pos:       at(1, 1),
				Addresses: []Address{{Pos: at(1, 1), Host: "a", Port: 443, Text: "a"}},
				TLS:       TLS{Pos: at(1, 1)},
				Routes:    only(proxy(at(2, 2), Upstream{Pos: at(3, 6), Addr: "b:1", Text: "b:1"})),
			}),
		},
		{
			name: "unix socket upstreams",
			src:  "a {\n\treverse_proxy unix//run/app.sock unix/app.sock b:1\n}",
			want: defaults(Site{
				Pos:       at(1, 1),
				Addresses: []Address{{Pos: at(1, 1), Host: "a", Port: 443, Text: "a"}},
				TLS:       TLS{Pos: at(1, 1)},
				Routes: only(proxy(at(2, 2),
					Upstream{Pos: at(2, 16), Addr: "unix//run/app.sock", Text: "unix//run/app.sock"},
					Upstream{Pos: at(2, 35), Addr: "unix/app.sock", Text: "unix/app.sock"},
					Upstream{Pos: at(2, 49), Addr: "b:1", Text: "b:1"})),
			}),
		},
		{
			name: "tls",
			src:  "a {\n\treverse_proxy b\n\ttls internal\n}\nc {\n\ttls ./c.pem \"./my key.pem\"\n\treverse_proxy d\n}",
			want: defaults(
				Site{
					Pos:       at(1, 1),
					Addresses: []Address{{Pos: at(1, 1), Host: "a", Port: 443, Text: "a"}},
					TLS:       TLS{Pos: at(3, 2), Mode: TLSInternal},
					Routes:    only(proxy(at(2, 2), Upstream{Pos: at(2, 16), Addr: "b:80", Text: "b"})),
				},
				Site{
					Pos:       at(5, 1),
					Addresses: []Address{{Pos: at(5, 1), Host: "c", Port: 443, Text: "c"}},
					TLS:       TLS{Pos: at(6, 2), Mode: TLSFiles, CertFile: "./c.pem", KeyFile: "./my key.pem"},
					Routes:    only(proxy(at(7, 2), Upstream{Pos: at(7, 16), Addr: "d:80", Text: "d"})),
				},
			),
		},
		{
			name: "same host on other ports",
			src:  "a, a:8443, :443 {\n\treverse_proxy b\n}",
			want: defaults(Site{
				Pos: at(1, 1),
				TLS: TLS{Pos: at(1, 1)},
				Addresses: []Address{
					{Pos: at(1, 1), Host: "a", Port: 443, Text: "a"},
					{Pos: at(1, 4), Host: "a", Port: 8443, Text: "a:8443"},
					{Pos: at(1, 12), Host: "", Port: 443, Text: ":443"},
				},
				Routes: only(proxy(at(2, 2), Upstream{Pos: at(2, 16), Addr: "b:80", Text: "b"})),
			}),
		},
		{
			name: "env in address and empty env argument dropped",
			src:  "{$HOST}:{$PORT} {\n\treverse_proxy {$UNSET:} localhost:{$APP_PORT:3000}\n}",
			want: defaults(Site{
				Pos:       at(1, 1),
				Addresses: []Address{{Pos: at(1, 1), Host: "example.com", Port: 8080, Text: "example.com:8080"}},
				TLS:       TLS{Pos: at(1, 1)},
				Routes:    only(proxy(at(2, 2), Upstream{Pos: at(2, 26), Addr: "localhost:3000", Text: "localhost:3000"})),
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("Roamfile", []byte(tt.src), testEnv)
			if err != nil {
				t.Fatalf("Parse:\n%v", err)
			}
			if d := diffConfig(got, tt.want); d != "" {
				t.Error(d)
			}
		})
	}
}

// inSite wraps directives in a site block: its first directive is on line
// 2 at column 2.
func inSite(directives string) string { return "a.com {\n\t" + directives + "\n}" }

// inGlobal wraps options in a global block and adds a site: the first
// option is on line 2 at column 2.
func inGlobal(options string) string { return "{\n\t" + options + "\n}\nb.com {\n\treverse_proxy c\n}" }

// inRedis returns a Roamfile whose global block holds "storage redis" with
// lines (from line 3, column 3).
func inRedis(lines ...string) string {
	return inGlobal("storage redis {\n\t\t" + strings.Join(lines, "\n\t\t") + "\n\t}")
}

// errorTest is a Roamfile and the error Parse returns for it, all lines.
type errorTest struct {
	name string
	src  string
	want string
}

// testParseErrors runs error tests.
func testParseErrors(t *testing.T, tests []errorTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("Roamfile", []byte(tt.src), testEnv)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", tt.src, cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a Config with an error")
			}
			if err.Error() != tt.want {
				t.Errorf("Parse(%q) error\n got %s\nwant %s", tt.src, err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("error %T is not an *Error", err)
			}
			checkErrorPositions(t, []byte(tt.src), err)
		})
	}
}

func TestParseErrors(t *testing.T) {
	site, global, redis := inSite, inGlobal, inRedis
	tests := []errorTest{
		// Structure.
		{"empty file", "", "Roamfile:1:1: no site blocks"},
		{"global only", "{\n\tadmin off\n}", "Roamfile:1:1: no site blocks"},
		{"site without handler", "a.com {\n\ttls internal\n}", "Roamfile:1:1: site has no handler (want reverse_proxy, respond, redir or tunnel, at site level or in a handle block)"},
		{"lexer error", site("reverse_proxy \"b"), "Roamfile:2:16: unterminated quoted string"},
		{"block error", site("reverse_proxy b {"), `Roamfile:1:7: "{" has no matching "}"`},

		// Directives.
		{"unknown directive", site("revers_proxy b"), `Roamfile:2:2: unknown directive "revers_proxy" (did you mean reverse_proxy?)`},
		{"unknown directive by prefix", site("rev b"), `Roamfile:2:2: unknown directive "rev" (did you mean reverse_proxy?)`},
		{"unknown directive without suggestion", site("file_server\n\treverse_proxy b"), `Roamfile:2:2: unknown directive "file_server"`},
		{"unknown directive and no handler", site("file_server"), "Roamfile:1:1: site has no handler (want reverse_proxy, respond, redir or tunnel, at site level or in a handle block)\n" + `Roamfile:2:2: unknown directive "file_server"`},
		{"misspelt respond and no handler", site("repsond 200"), `Roamfile:2:2: unknown directive "repsond" (did you mean respond?)`},
		{"global option in site", site("https_port 1\n\treverse_proxy b"), `Roamfile:2:2: https_port is a global option; set it in the global options block at the top of the file`},
		{"site directive in global", global("tls internal"), `Roamfile:2:2: tls is a site directive, not a global option`},
		{"unknown global option", global("htps_port 1"), `Roamfile:2:2: unknown global option "htps_port" (did you mean https_port?)`},
		{"duplicate global option", global("https_port 1\n\thttps_port 2"), `Roamfile:3:2: https_port: already set at Roamfile:2:2`},
		{"duplicate reverse_proxy", site("reverse_proxy b\n\treverse_proxy c"), `Roamfile:3:2: reverse_proxy: already set at Roamfile:2:2 (use handle blocks for more than one handler)`},
		{"duplicate tls", site("reverse_proxy b\n\ttls internal\n\ttls internal"), `Roamfile:4:2: tls: already set at Roamfile:3:2`},

		// Global options.
		{"https_port missing", global("https_port"), `Roamfile:2:2: https_port: missing argument`},
		{"https_port extra", global("https_port 1 2"), `Roamfile:2:15: https_port: unexpected argument "2"`},
		{"https_port block", global("https_port 1 {\n\t\tx\n\t}"), `Roamfile:2:15: https_port: unexpected block`},
		{"https_port range", global("https_port 65536"), `Roamfile:2:13: https_port: invalid port "65536" (want 0-65535)`},
		{"http_port not a number", global("http_port eighty"), `Roamfile:2:12: http_port: invalid port "eighty" (want 0-65535)`},
		{"http_port sign", global("http_port +80"), `Roamfile:2:12: http_port: invalid port "+80" (want 0-65535)`},
		{"data_dir empty", global(`data_dir ""`), `Roamfile:2:11: data_dir: empty path`},
		{"data_dir two", global(`data_dir a b`), `Roamfile:2:13: data_dir: unexpected argument "b"`},
		{"default_bind missing", global("default_bind"), `Roamfile:2:2: default_bind: missing argument`},
		{"default_bind port", global("default_bind ::1 127.0.0.1:80"), `Roamfile:2:19: default_bind: invalid host "127.0.0.1:80" (want an IP address or a hostname, without port)`},
		{"admin no port", global("admin localhost"), `Roamfile:2:8: admin: invalid address "localhost" (want host:port, as in 127.0.0.1:2019)`},
		{"admin bad port", global("admin :x"), `Roamfile:2:8: admin: invalid port "x" (want 0-65535)`},
		{"admin bad host", global("admin a$b:1"), `Roamfile:2:8: admin: invalid host "a$b"`},
		{"log argument", global("log json"), `Roamfile:2:6: log: unknown log "json" (want log { ... } for the process log, log access { ... } or log access off)`},
		{"log unknown subdirective", global("log {\n\t\tlvl debug\n\t}"), `Roamfile:3:3: log: unknown subdirective "lvl"`},
		{"log suggestion", global("log {\n\t\tformt json\n\t}"), `Roamfile:3:3: log: unknown subdirective "formt" (did you mean format?)`},
		{"log level", global("log {\n\t\tlevel verbose\n\t}"), `Roamfile:3:9: log: unknown level "verbose" (want debug, info, warn, error)`},
		{"log format", global("log { format text }"), `Roamfile:2:15: log: unknown format "text" (want console, json)`},
		{"log level missing", global("log {\n\t\tlevel\n\t}"), `Roamfile:3:3: log: level: missing argument`},
		{"log level twice", global("log {\n\t\tlevel info\n\t\tlevel warn\n\t}"), `Roamfile:4:3: log: level: already set at Roamfile:3:3`},
		{"log level extra", global("log { level info warn }"), `Roamfile:2:19: log: level: unexpected argument "warn"`},

		{"upgrade_grace word", global("upgrade_grace long"), `Roamfile:2:16: upgrade_grace: invalid duration "long" (examples: 500ms, 5s, 2m, 1h30m)`},
		{"upgrade_timeout zero", global("upgrade_timeout 0s"), `Roamfile:2:18: upgrade_timeout: duration "0s" must be positive`},
		{"upgrade_steering unknown", global("upgrade_steering ebpf"), `Roamfile:2:19: upgrade_steering: unknown value "ebpf" (want auto, bpf, forward)`},
		{"zero_rtt missing", global("zero_rtt"), `Roamfile:2:2: zero_rtt: missing argument`},
		{"zero_rtt yes", global("zero_rtt yes"), `Roamfile:2:11: zero_rtt: unknown value "yes" (want on, off)`},
		{"zero_rtt twice", global("zero_rtt on\n\tzero_rtt off"), `Roamfile:3:2: zero_rtt: already set at Roamfile:2:2`},
		{"zero_rtt in site", site("zero_rtt off\n\trespond 1"), `Roamfile:2:2: zero_rtt is a global option; set it in the global options block at the top of the file`},
		{"handshake_rate word", global("handshake_rate lots"), `Roamfile:2:17: handshake_rate: invalid rate "lots" (want new connections a second, 0 to 1000000)`},
		{"handshake_rate negative", global("handshake_rate_per_ip -1"), `Roamfile:2:24: handshake_rate_per_ip: invalid rate "-1" (want new connections a second, 0 to 1000000)`},
		{"handshake_rate twice", global("handshake_rate 1\n\thandshake_rate 2"), `Roamfile:3:2: handshake_rate: already set at Roamfile:2:2`},
		{"handshake_rate in site", site("handshake_rate 5\n\trespond 1"), `Roamfile:2:2: handshake_rate is a global option; set it in the global options block at the top of the file`},
		{"max_header_bytes missing", global("max_header_bytes"), `Roamfile:2:2: max_header_bytes: missing argument`},
		{"field limit above the global total", global("max_header_bytes 4KiB\n\tmax_header_field_bytes 8KiB"),
			`Roamfile:3:25: max_header_field_bytes: max_header_field_bytes 8192 is above max_header_bytes 4096 (one field must fit in the head)`},
		{"site total below the default field limit", site("max_header_bytes 4KiB\n\trespond 1"),
			`Roamfile:2:19: max_header_bytes: max_header_field_bytes 8192 is above max_header_bytes 4096 (one field must fit in the head)`},
		{"site field limit twice", site("max_header_field_bytes 4KiB\n\tmax_header_field_bytes 2KiB\n\trespond 1"),
			`Roamfile:3:2: max_header_field_bytes: already set at Roamfile:2:2`},
		{"field limit in a handle block", site("handle /a {\n\t\tmax_header_field_bytes 4KiB\n\t\trespond 1\n\t}"),
			`Roamfile:3:3: handle: max_header_field_bytes is not allowed in a handle block (set it at site level)`},
		{"max_header_bytes extra", global("max_header_bytes 1 MiB"), `Roamfile:2:21: max_header_bytes: unexpected argument "MiB"`},
		{"max_header_bytes too small", global("max_header_bytes 1023"), `Roamfile:2:19: max_header_bytes: size "1023" out of range (want 1KiB-64MiB)`},
		{"max_header_bytes decimal KB too small", global("max_header_bytes 1KB"), `Roamfile:2:19: max_header_bytes: size "1KB" out of range (want 1KiB-64MiB)`},
		{"max_header_bytes too large", global("max_header_bytes 65MiB"), `Roamfile:2:19: max_header_bytes: size "65MiB" out of range (want 1KiB-64MiB)`},
		{"max_header_bytes overflow", global("max_header_bytes 99999999999999999999"), `Roamfile:2:19: max_header_bytes: size "99999999999999999999" out of range (want 1KiB-64MiB)`},
		{"max_header_bytes overflow with unit", global("max_header_bytes 9999999999999999MiB"), `Roamfile:2:19: max_header_bytes: size "9999999999999999MiB" out of range (want 1KiB-64MiB)`},
		{"max_header_bytes fraction", global("max_header_bytes 1.5MiB"), `Roamfile:2:19: max_header_bytes: invalid size "1.5MiB" (want a number of bytes or a size such as 8KiB or 64KiB)`},
		{"max_header_bytes unknown unit", global("max_header_bytes 1GiB"), `Roamfile:2:19: max_header_bytes: invalid size "1GiB" (want a number of bytes or a size such as 8KiB or 64KiB)`},
		{"max_header_bytes negative", global("max_header_bytes -4096"), `Roamfile:2:19: max_header_bytes: invalid size "-4096" (want a number of bytes or a size such as 8KiB or 64KiB)`},
		{"max_header_bytes unit only", global("max_header_bytes KiB"), `Roamfile:2:19: max_header_bytes: invalid size "KiB" (want a number of bytes or a size such as 8KiB or 64KiB)`},

		// ACME, storage and port options.
		{"email missing", global("email"), `Roamfile:2:2: email: missing argument`},
		{"email without at", global("email ops"), `Roamfile:2:8: email: invalid email address "ops" (want NAME@DOMAIN, as in ops@example.com)`},
		{"email two ats", global("email a@b@c"), `Roamfile:2:8: email: invalid email address "a@b@c" (want NAME@DOMAIN, as in ops@example.com)`},
		{"email empty name", global("email @example.com"), `Roamfile:2:8: email: invalid email address "@example.com" (want NAME@DOMAIN, as in ops@example.com)`},
		{"email empty domain", global("email ops@"), `Roamfile:2:8: email: invalid email address "ops@" (want NAME@DOMAIN, as in ops@example.com)`},
		{"email space", global(`email "o ps@example.com"`), `Roamfile:2:8: email: invalid email address "o ps@example.com" (want NAME@DOMAIN, as in ops@example.com)`},
		{"email twice", global("email a@b\n\temail c@d"), `Roamfile:3:2: email: already set at Roamfile:2:2`},
		{"acme_ca missing", global("acme_ca"), `Roamfile:2:2: acme_ca: missing argument`},
		{"acme_ca extra", global("acme_ca https://a/dir https://b/dir"), `Roamfile:2:24: acme_ca: unexpected argument "https://b/dir"`},
		{"acme_ca not a URL", global("acme_ca letsencrypt"), `Roamfile:2:10: acme_ca: invalid URL "letsencrypt" (want an https:// URL, as in https://acme-v02.api.letsencrypt.org/directory)`},
		{"acme_ca plain http", global("acme_ca http://ca.example.net/dir"), `Roamfile:2:10: acme_ca: URL "http://ca.example.net/dir": http:// is allowed only for localhost, 127.0.0.1 and ::1 (want https://)`},
		{"acme_ca_root missing", global("acme_ca_root"), `Roamfile:2:2: acme_ca_root: missing argument`},
		{"acme_ca_root empty", global(`acme_ca_root ""`), `Roamfile:2:15: acme_ca_root: empty path`},
		{"storage missing", global("storage"), `Roamfile:2:2: storage: missing argument`},
		{"storage unknown module", global("storage consul localhost:8500"), `Roamfile:2:10: storage: unknown storage module "consul" (want file_system, redis)`},
		{"storage misspelt module", global("storage file_sytem /a"), `Roamfile:2:10: storage: unknown storage module "file_sytem" (did you mean file_system?)`},
		{"storage without path", global("storage file_system"), `Roamfile:2:10: storage: file_system needs a path (want storage file_system PATH or storage file_system { root PATH })`},
		{"storage empty block", global("storage file_system {\n\t}"), `Roamfile:2:10: storage: file_system needs a path (want storage file_system PATH or storage file_system { root PATH })`},
		{"storage empty path", global(`storage file_system ""`), `Roamfile:2:22: storage: empty path`},
		{"storage extra", global("storage file_system /a /b"), `Roamfile:2:25: storage: unexpected argument "/b"`},
		{"storage path and block", global("storage file_system /a {\n\t\troot /b\n\t}"), `Roamfile:2:25: storage: unexpected block`},
		{"storage unknown subdirective", global("storage file_system {\n\t\tpath /a\n\t}"), "Roamfile:2:10: storage: file_system needs a path (want storage file_system PATH or storage file_system { root PATH })\n" +
			`Roamfile:3:3: storage: unknown subdirective "path"`},
		{"storage misspelt subdirective", global("storage file_system {\n\t\troto /a\n\t}"), "Roamfile:2:10: storage: file_system needs a path (want storage file_system PATH or storage file_system { root PATH })\n" +
			`Roamfile:3:3: storage: unknown subdirective "roto" (did you mean root?)`},
		{"storage root missing", global("storage file_system {\n\t\troot\n\t}"), `Roamfile:3:3: storage: root: missing argument`},
		{"storage root empty", global("storage file_system { root \"\" }"), `Roamfile:2:29: storage: root: empty path`},
		{"storage root twice", global("storage file_system {\n\t\troot /a\n\t\troot /b\n\t}"), `Roamfile:4:3: storage: root: already set at Roamfile:3:3`},
		{"storage after data_dir", global("data_dir /a\n\tstorage file_system /b"), `Roamfile:3:2: storage: data directory already set by data_dir at Roamfile:2:2`},
		{"data_dir after storage", global("storage file_system { root /b }\n\tdata_dir /a"), `Roamfile:3:2: data_dir: data directory already set by storage file_system at Roamfile:2:2`},
		{"storage redis twice", global("storage redis { address a:1 }\n\tstorage redis { address b:1 }"), `Roamfile:3:2: storage: already set at Roamfile:2:2`},
		{"storage redis and file_system", global("storage redis { address a:1 }\n\tstorage file_system /a"), `Roamfile:3:2: storage: already set at Roamfile:2:2`},
		{"storage redis argument", global("storage redis localhost:6379"), `Roamfile:2:16: storage: unexpected argument "localhost:6379" (want storage redis { address HOST:PORT ... })`},
		{"storage redis without block", global("storage redis"), `Roamfile:2:10: storage: redis needs a block (want storage redis { address HOST:PORT ... })`},
		{"storage redis without address", global("storage redis {\n\t\tdb 1\n\t}"), `Roamfile:2:10: storage: redis: address required (want address HOST:PORT)`},
		{"storage redis address without port", redis("address localhost"), `Roamfile:3:11: storage: address: invalid address "localhost" (want host:port, as in 10.0.0.7:6379)`},
		{"storage redis address port 0", redis("address localhost:0"), `Roamfile:3:11: storage: address: invalid port "0" (want 1-65535)`},
		{"storage redis address bad host", redis("address bad_host!:6379"), `Roamfile:3:11: storage: address: invalid host "bad_host!"`},
		{"storage redis db", redis("address a:1", "db -1"), `Roamfile:4:6: storage: db: invalid database "-1" (want a number, 0 or more)`},
		{"storage redis db word", redis("address a:1", "db one"), `Roamfile:4:6: storage: db: invalid database "one" (want a number, 0 or more)`},
		{"storage redis unknown", redis("address a:1", "pasword x"), `Roamfile:4:3: storage: unknown subdirective "pasword" (did you mean password?)`},
		{"storage redis twice set", redis("address a:1", "address b:1"), `Roamfile:4:3: storage: address: already set at Roamfile:3:3`},
		{"storage redis two passwords", redis("address a:1", "password {$REDIS_PASSWORD}", "password_file /p"), `Roamfile:5:3: storage: password_file: the password is set already at Roamfile:4:3 (one source)`},
		{"storage redis empty password", redis("address a:1", `password ""`), `Roamfile:4:12: storage: password: empty value`},
		{"storage redis empty password_file", redis("address a:1", `password_file ""`), `Roamfile:4:17: storage: password_file: empty path`},
		{"storage redis empty key_prefix", redis("address a:1", `key_prefix ""`), `Roamfile:4:14: storage: key_prefix: empty value`},
		{"storage redis tls value", redis("address a:1", "tls yes"), `Roamfile:4:7: storage: tls: unknown value "yes" (want on, off)`},
		{"storage redis tls_ca without tls", redis("address a:1", "tls_ca /ca.pem"), `Roamfile:4:3: storage: tls_ca: TLS is off (want tls on)`},
		{"storage redis tls_server_name without tls", redis("address a:1", "tls off", "tls_server_name r"), `Roamfile:5:3: storage: tls_server_name: TLS is off (want tls on)`},
		{"storage redis bad tls_server_name", redis("address a:1", "tls on", "tls_server_name a/b"), `Roamfile:5:19: storage: tls_server_name: invalid name "a/b"`},
		{"storage redis dial_timeout", redis("address a:1", "dial_timeout 0s"), `Roamfile:4:16: storage: dial_timeout: duration "0s" must be positive`},
		{"storage redis dial_timeout word", redis("address a:1", "dial_timeout soon"), `Roamfile:4:16: storage: dial_timeout: invalid duration "soon" (examples: 500ms, 5s, 2m, 1h30m)`},
		{"storage redis lock_ttl short", redis("address a:1", "lock_ttl 500ms"), `Roamfile:4:12: storage: lock_ttl: "500ms" is below 1s (the holder extends its lock every third of it)`},
		{"storage redis lock_ttl word", redis("address a:1", "lock_ttl long"), `Roamfile:4:12: storage: lock_ttl: invalid duration "long" (examples: 500ms, 5s, 2m, 1h30m)`},
		{"storage redis two args", redis("address a:1 b:2"), `Roamfile:3:15: storage: address: unexpected argument "b:2"`},
		{"on_demand_tls without block", global("on_demand_tls"), `Roamfile:2:2: on_demand_tls: ask is required (roamgate never issues certificates without asking)`},
		{"on_demand_tls empty block", global("on_demand_tls {\n\t}"), `Roamfile:2:2: on_demand_tls: ask is required (roamgate never issues certificates without asking)`},
		{"on_demand_tls argument", global("on_demand_tls http://localhost:9123/check"), `Roamfile:2:16: on_demand_tls: unexpected argument "http://localhost:9123/check"`},
		{"on_demand_tls unknown subdirective", global("on_demand_tls {\n\t\tinterval 2m\n\t}"), "Roamfile:2:2: on_demand_tls: ask is required (roamgate never issues certificates without asking)\n" +
			`Roamfile:3:3: on_demand_tls: unknown subdirective "interval"`},
		{"on_demand_tls misspelt subdirective", global("on_demand_tls {\n\t\tak http://localhost:9123/check\n\t}"), "Roamfile:2:2: on_demand_tls: ask is required (roamgate never issues certificates without asking)\n" +
			`Roamfile:3:3: on_demand_tls: unknown subdirective "ak" (did you mean ask?)`},
		{"on_demand_tls ask missing", global("on_demand_tls {\n\t\task\n\t}"), `Roamfile:3:3: on_demand_tls: ask: missing argument`},
		{"on_demand_tls ask twice", global("on_demand_tls {\n\t\task http://a/1\n\t\task http://a/2\n\t}"), `Roamfile:4:3: on_demand_tls: ask: already set at Roamfile:3:3`},
		{"on_demand_tls ask not a URL", global("on_demand_tls { ask localhost:9123 }"), `Roamfile:2:22: on_demand_tls: ask: invalid URL "localhost:9123" (want an http:// or https:// URL, as in http://localhost:9123/check)`},
		{"on_demand_tls twice", global("on_demand_tls { ask http://a/1 }\n\ton_demand_tls { ask http://a/2 }"), `Roamfile:3:2: on_demand_tls: already set at Roamfile:2:2`},
		{"on_demand_tls in site", site("reverse_proxy b\n\ton_demand_tls { ask http://a/1 }"), `Roamfile:3:2: on_demand_tls is a global option; set it in the global options block at the top of the file`},
		{"http_port on default https_port", global("http_port 443"), `Roamfile:2:12: http_port: http_port and https_port must differ (both are 443)`},
		{"https_port on default http_port", global("https_port 80"), `Roamfile:2:13: https_port: http_port and https_port must differ (both are 80)`},
		{"same ports, http_port later", global("https_port 8443\n\thttp_port 8443"), `Roamfile:3:12: http_port: http_port and https_port must differ (both are 8443)`},
		{"same ports, https_port later", global("http_port 8443; https_port 8443"), `Roamfile:2:29: https_port: http_port and https_port must differ (both are 8443)`},
		{"same port after an invalid one", global("https_port 80x\n\thttp_port 443"), `Roamfile:2:13: https_port: invalid port "80x" (want 0-65535)`},

		// Site addresses.
		{"http site", "http://a.com {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "http://a.com": plain HTTP sites are not supported (HTTP/3 needs TLS); leave out the scheme or use https://`},
		{"other scheme", "ftp://a.com {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "ftp://a.com": unsupported scheme "ftp"`},
		{"path", "a.com/foo {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "a.com/foo": paths are not supported`},
		{"https path", "b, https://a.com/ {\n\treverse_proxy b\n}", `Roamfile:1:4: site address "https://a.com/": paths are not supported`},
		{"port range", "a:65536 {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "a:65536": invalid port "65536" (want 0-65535)`},
		{"empty port", "a: {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "a:": missing port after ":"`},
		{"bare IPv6", "::1 {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "::1": IPv6 address needs brackets, as in [::1]:8443`},
		{"brackets around name", "[a.com]:1 {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "[a.com]:1": brackets around a host that is not an IPv6 address`},
		{"bad host", "a_b!.com {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "a_b!.com": invalid host "a_b!.com"`},
		{"numeric host", "8443 {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "8443": invalid host "8443"`},
		{"inner wildcard", "a.*.com {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "a.*.com": invalid host "a.*.com"`},
		{"scheme only", "https:// {\n\treverse_proxy b\n}", `Roamfile:1:1: site address "https://": missing host and port`},
		{"duplicate address", "a.com {\n\treverse_proxy b\n}\nA.com:443 {\n\treverse_proxy c\n}", `Roamfile:4:1: site address "a.com:443" already used at Roamfile:1:1`},
		{"duplicate address in block", "[::1]:1, x, [0::1]:1 {\n\treverse_proxy c\n}", `Roamfile:1:13: site address "[::1]:1" already used at Roamfile:1:1`},

		// reverse_proxy.
		{"no upstream", site("reverse_proxy"), `Roamfile:2:2: reverse_proxy: missing upstream address`},
		{"no upstream with block", site("reverse_proxy {\n\t\tdial_timeout 1s\n\t}"), `Roamfile:2:2: reverse_proxy: missing upstream address`},
		{"upstream scheme", site("reverse_proxy h2c://b"), `Roamfile:2:16: reverse_proxy: upstream "h2c://b": unsupported scheme "h2c" (want http:// or https://)`},
		{"upstream path", site("reverse_proxy b:80/x"), `Roamfile:2:16: reverse_proxy: upstream "b:80/x": paths are not supported`},
		{"unix upstream without path", site("reverse_proxy unix/"), `Roamfile:2:16: reverse_proxy: upstream "unix/": missing socket path after unix/`},
		{"unix upstream path too long", site("reverse_proxy unix//" + strings.Repeat("s", 107)), `Roamfile:2:16: reverse_proxy: upstream "unix//` + strings.Repeat("s", 107) + `": socket path is 108 bytes, longer than the 107 a Unix socket address holds`},
		{"nginx-style unix upstream", site("reverse_proxy unix:/run/app.sock"), `Roamfile:2:16: reverse_proxy: upstream "unix:/run/app.sock": write a Unix socket as unix//run/app.sock`},
		{"upstream port 0", site("reverse_proxy b:0"), `Roamfile:2:16: reverse_proxy: upstream "b:0": invalid port "0" (want 1-65535)`},
		{"upstream wildcard", site("reverse_proxy *.b"), `Roamfile:2:16: reverse_proxy: upstream "*.b": invalid host "*.b"`},
		{"upstream bare IPv6", site("reverse_proxy ::1:80"), `Roamfile:2:16: reverse_proxy: upstream "::1:80": IPv6 address needs brackets, as in [::1]:8443`},
		{"unknown subdirective", site("reverse_proxy b {\n\t\tmax_con 3\n\t}"), `Roamfile:3:3: reverse_proxy: unknown subdirective "max_con" (did you mean max_conns_per_session?)`},
		{"misspelt subdirective", site("reverse_proxy b {\n\t\tdial_timout 3s\n\t}"), `Roamfile:3:3: reverse_proxy: unknown subdirective "dial_timout" (did you mean dial_timeout?)`},
		{"to without upstream", site("reverse_proxy b {\n\t\tto\n\t}"), `Roamfile:3:3: reverse_proxy: to: missing argument`},
		{"to with block", site("reverse_proxy b {\n\t\tto c {\n\t\t}\n\t}"), `Roamfile:3:8: reverse_proxy: to: unexpected block`},
		{"max_conns not a number", site("reverse_proxy b {\n\t\tmax_conns_per_session many\n\t}"), `Roamfile:3:25: reverse_proxy: max_conns_per_session: invalid number "many"`},
		{"max_conns zero", site("reverse_proxy b {\n\t\tmax_conns_per_session 0\n\t}"), `Roamfile:3:25: reverse_proxy: max_conns_per_session: 0 out of range (want 1-1024)`},
		{"max_conns too many", site("reverse_proxy b {\n\t\tmax_conns_per_session 1025\n\t}"), `Roamfile:3:25: reverse_proxy: max_conns_per_session: 1025 out of range (want 1-1024)`},
		{"max_conns twice", site("reverse_proxy b {\n\t\tmax_conns_per_session 1\n\t\tmax_conns_per_session 2\n\t}"), `Roamfile:4:3: reverse_proxy: max_conns_per_session: already set at Roamfile:3:3`},
		// issue 13: was "reverse_proxy: missing upstream address"
		{"unset variable", site("reverse_proxy {$BACKEND_ADDR}"),
			`Roamfile:2:16: {$BACKEND_ADDR} is not set: set BACKEND_ADDR, or give a default: {$BACKEND_ADDR:VALUE} ({$BACKEND_ADDR:} for empty)`},
		{"dial_timeout invalid", site("reverse_proxy b {\n\t\tdial_timeout 5x\n\t}"), `Roamfile:3:16: reverse_proxy: dial_timeout: invalid duration "5x" (examples: 500ms, 5s, 2m, 1h30m)`},
		{"dial_timeout zero", site("reverse_proxy b {\n\t\tdial_timeout 0s\n\t}"), `Roamfile:3:16: reverse_proxy: dial_timeout: duration "0s" must be positive`},
		{"dial_timeout missing", site("reverse_proxy b {\n\t\tdial_timeout\n\t}"), `Roamfile:3:3: reverse_proxy: dial_timeout: missing argument`},
		{"dial_timeout extra", site("reverse_proxy b {\n\t\tdial_timeout 1s 2s\n\t}"), `Roamfile:3:19: reverse_proxy: dial_timeout: unexpected argument "2s"`},
		{"response_header_timeout negative", site("reverse_proxy b {\n\t\tresponse_header_timeout -1s\n\t}"), `Roamfile:3:27: reverse_proxy: response_header_timeout: duration "-1s" must not be negative`},

		// tls.
		{"tls missing", site("reverse_proxy b\n\ttls"), `Roamfile:3:2: tls: missing argument`},
		{"tls misspelt", site("reverse_proxy b\n\ttls interal"), `Roamfile:3:6: tls: unknown mode "interal" (did you mean internal?)`},
		{"tls one file", site("reverse_proxy b\n\ttls cert.pem"), `Roamfile:3:6: tls: missing key file after "cert.pem" (want tls internal, tls EMAIL or tls CERT_FILE KEY_FILE)`},
		{"tls internal extra", site("reverse_proxy b\n\ttls internal x"), `Roamfile:3:15: tls: unexpected argument "x"`},
		{"tls three", site("reverse_proxy b\n\ttls a b c"), `Roamfile:3:10: tls: unexpected argument "c"`},
		{"tls empty cert", site("reverse_proxy b\n\ttls \"\" k"), `Roamfile:3:6: tls: empty certificate file name`},
		{"tls empty key", site("reverse_proxy b\n\ttls c \"\""), `Roamfile:3:8: tls: empty key file name`},
		{"tls internal with block", site("reverse_proxy b\n\ttls internal x {\n\t}"), `Roamfile:3:15: tls: unexpected argument "x"`},
		{"tls not an email", site("reverse_proxy b\n\ttls a@b@c"), `Roamfile:3:6: tls: invalid email address "a@b@c" (want NAME@DOMAIN, as in ops@example.com)`},
		{"tls email empty domain", site("reverse_proxy b\n\ttls ops@ {\n\t\tissuer acme\n\t}"), `Roamfile:3:6: tls: invalid email address "ops@" (want NAME@DOMAIN, as in ops@example.com)`},
		{"tls file with block", site("reverse_proxy b\n\ttls cert.pem {\n\t\tissuer acme\n\t}"), `Roamfile:3:6: tls: missing key file after "cert.pem" (want tls internal, tls EMAIL or tls CERT_FILE KEY_FILE)`},
		{"tls unknown subdirective", site("reverse_proxy b\n\ttls {\n\t\tprotocols tls1.3\n\t}"), `Roamfile:4:3: tls: unknown subdirective "protocols"`},
		{"tls misspelt subdirective", site("reverse_proxy b\n\ttls {\n\t\ton_demnad\n\t}"), `Roamfile:4:3: tls: unknown subdirective "on_demnad" (did you mean on_demand?)`},
		{"tls issuer missing", site("reverse_proxy b\n\ttls {\n\t\tissuer\n\t}"), `Roamfile:4:3: tls: issuer: missing argument`},
		{"tls issuer misspelt", site("reverse_proxy b\n\ttls { issuer acm }"), `Roamfile:3:15: tls: issuer: unknown issuer "acm" (did you mean acme?)`},
		{"tls issuer unknown", site("reverse_proxy b\n\ttls { issuer zerossl }"), `Roamfile:3:15: tls: issuer: unknown issuer "zerossl" (want acme, internal)`},
		{"tls issuer extra", site("reverse_proxy b\n\ttls { issuer acme internal }"), `Roamfile:3:20: tls: issuer: unexpected argument "internal"`},
		{"tls issuer twice", site("reverse_proxy b\n\ttls {\n\t\tissuer acme\n\t\tissuer internal\n\t}"), `Roamfile:5:3: tls: issuer: already set at Roamfile:4:3`},
		{"tls internal and issuer", site("reverse_proxy b\n\ttls internal {\n\t\tissuer acme\n\t}"), `Roamfile:4:3: tls: issuer: already set at Roamfile:3:6`},
		{"tls ca not a URL", site("reverse_proxy b\n\ttls { ca ca.example.net }"), `Roamfile:3:11: tls: ca: invalid URL "ca.example.net" (want an https:// URL, as in https://acme-v02.api.letsencrypt.org/directory)`},
		{"tls ca plain http", site("reverse_proxy b\n\ttls { ca http://ca.example.net/dir }"), `Roamfile:3:11: tls: ca: URL "http://ca.example.net/dir": http:// is allowed only for localhost, 127.0.0.1 and ::1 (want https://)`},
		{"tls ca twice", site("reverse_proxy b\n\ttls {\n\t\tca https://a/dir\n\t\tca https://b/dir\n\t}"), `Roamfile:5:3: tls: ca: already set at Roamfile:4:3`},
		{"tls ca_root missing", site("reverse_proxy b\n\ttls {\n\t\tca_root\n\t}"), `Roamfile:4:3: tls: ca_root: missing argument`},
		{"tls ca_root empty", site("reverse_proxy b\n\ttls { ca_root \"\" }"), `Roamfile:3:16: tls: ca_root: empty path`},
		{"tls email invalid", site("reverse_proxy b\n\ttls { email ops }"), `Roamfile:3:14: tls: email: invalid email address "ops" (want NAME@DOMAIN, as in ops@example.com)`},
		{"tls email twice", site("reverse_proxy b\n\ttls ops@example.com {\n\t\temail dev@example.com\n\t}"), `Roamfile:4:3: tls: email: already set at Roamfile:3:6`},
		{"tls internal with ca", site("reverse_proxy b\n\ttls internal {\n\t\tca https://ca.example.net/dir\n\t}"), `Roamfile:4:3: tls: ca: only applies to ACME, not to the internal issuer`},
		{"tls internal with ca_root", site("reverse_proxy b\n\ttls internal {\n\t\tca_root ca.pem\n\t}"), `Roamfile:4:3: tls: ca_root: only applies to ACME, not to the internal issuer`},
		{"tls internal with email", site("reverse_proxy b\n\ttls internal {\n\t\temail ops@example.com\n\t}"), `Roamfile:4:3: tls: email: only applies to ACME, not to the internal issuer`},
		{"tls email argument with issuer internal", site("reverse_proxy b\n\ttls ops@example.com {\n\t\tissuer internal\n\t}"), `Roamfile:3:6: tls: email: only applies to ACME, not to the internal issuer`},
		{"tls issuer internal after ACME settings", site("reverse_proxy b\n\ttls {\n\t\tca_root ca.pem\n\t\temail ops@example.com\n\t\tissuer internal\n\t}"),
			"Roamfile:4:3: tls: ca_root: only applies to ACME, not to the internal issuer\n" +
				`Roamfile:5:3: tls: email: only applies to ACME, not to the internal issuer`},
		{"tls on_demand without on_demand_tls", site("reverse_proxy b\n\ttls {\n\t\ton_demand\n\t}"), `Roamfile:4:3: tls: on_demand needs the global on_demand_tls { ask URL } (roamgate never issues certificates without asking)`},
		{"tls internal on_demand without on_demand_tls", site("reverse_proxy b\n\ttls internal { on_demand }"), `Roamfile:3:17: tls: on_demand needs the global on_demand_tls { ask URL } (roamgate never issues certificates without asking)`},
		{"tls on_demand with a broken on_demand_tls", "{\n\ton_demand_tls\n}\na.com {\n\treverse_proxy b\n\ttls { on_demand }\n}", `Roamfile:2:2: on_demand_tls: ask is required (roamgate never issues certificates without asking)`},
		{"tls on_demand argument", site("reverse_proxy b\n\ttls {\n\t\ton_demand yes\n\t}"), `Roamfile:4:13: tls: on_demand: unexpected argument "yes"`},
		{"tls on_demand block", site("reverse_proxy b\n\ttls {\n\t\ton_demand {\n\t\t}\n\t}"), `Roamfile:4:13: tls: on_demand: unexpected block`},
		{"tls on_demand twice", onDemandGlobal + site("reverse_proxy b\n\ttls {\n\t\ton_demand\n\t\ton_demand\n\t}"), `Roamfile:10:3: tls: on_demand: already set at Roamfile:9:3`},
		{"email in site", site("reverse_proxy b\n\temail ops@example.com"), `Roamfile:3:2: email is a global option; set it in the global options block at the top of the file`},
		{"tls files block", site("reverse_proxy b\n\ttls c k {\n\t\ton_demand\n\t}"), `Roamfile:4:3: tls: on_demand: does not apply to certificate files (only client_auth does)`},
	}
	testParseErrors(t, tests)
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		s    string
		want int64
		ok   bool
	}{
		{"1024", 1024, true},
		{"1024b", 1024, true},
		{"1KiB", 1024, true},
		{"64kib", 64 << 10, true},
		{"2KB", 2000, true},
		{"1MiB", 1 << 20, true},
		{"64MIB", 64 << 20, true},
		{"3mb", 3000000, true},
		{"007", 7, true},
		{"99999999999999999999", math.MaxInt64, true},
		{"9223372036854775807KiB", math.MaxInt64, true},
		{"", 0, false},
		{"KiB", 0, false},
		{"1 KiB", 0, false},
		{"1.5MiB", 0, false},
		{"+1", 0, false},
		{"1k", 0, false},
		{"1GiB", 0, false},
	}
	for _, tt := range tests {
		if got, ok := parseSize(tt.s); got != tt.want || ok != tt.ok {
			t.Errorf("parseSize(%q) = %d, %v; want %d, %v", tt.s, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	src := `{
	https_port 70000
}
a.com {
	reverse_proxy b {
		dial_timeout 5x
		max_con 2
	}
}
c.com {
	tls internal
}
`
	want := []string{
		`Roamfile:2:13: https_port: invalid port "70000" (want 0-65535)`,
		`Roamfile:6:16: reverse_proxy: dial_timeout: invalid duration "5x" (examples: 500ms, 5s, 2m, 1h30m)`,
		`Roamfile:7:3: reverse_proxy: unknown subdirective "max_con" (did you mean max_conns_per_session?)`,
		`Roamfile:10:1: site has no handler (want reverse_proxy, respond, redir or tunnel, at site level or in a handle block)`,
	}
	_, err := Parse("Roamfile", []byte(src), testEnv)
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("errors\n got %q\nwant %q", got, want)
	}
	errs := configErrors(err)
	if len(errs) != len(want) {
		t.Fatalf("%d *Errors, want %d", len(errs), len(want))
	}
	var first *Error
	if !errors.As(err, &first) || first != errs[0] {
		t.Errorf("errors.As found %v, want the first error", first)
	}
	if errs[1].Directive != "reverse_proxy" || errs[1].Pos != at(6, 16) || errs[1].Err == nil {
		t.Errorf("second error = %+v, want reverse_proxy at 6:16 with a cause", *errs[1])
	}
}

// TestParseReportsErrorsInFileOrder checks that an error found late about
// an early place (a site without a handler is noticed after its
// directives) is reported in file order.
func TestParseReportsErrorsInFileOrder(t *testing.T) {
	src := "a.com {\n\ttls x\n}\nb.com:1 {\n\treverse_proxy c\n}"
	want := "Roamfile:1:1: site has no handler (want reverse_proxy, respond, redir or tunnel, at site level or in a handle block)\n" +
		`Roamfile:2:6: tls: missing key file after "x" (want tls internal, tls EMAIL or tls CERT_FILE KEY_FILE)`
	if _, err := Parse("Roamfile", []byte(src), testEnv); err == nil || err.Error() != want {
		t.Errorf("Parse error\n got %v\nwant %s", err, want)
	}
}

func TestParseCapsErrors(t *testing.T) {
	var src strings.Builder
	for i := range maxErrors + 5 {
		fmt.Fprintf(&src, "a%d.com {\n\treverse_proxy x:%d\n}\n", i, 70000+i)
	}
	_, err := Parse("Roamfile", []byte(src.String()), testEnv)
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxErrors+1 {
		t.Fatalf("%d error lines, want %d:\n%v", len(lines), maxErrors+1, err)
	}
	if want := `Roamfile:2:16: reverse_proxy: upstream "x:70000": invalid port "70000" (want 1-65535)`; lines[0] != want {
		t.Errorf("first line %q, want %q", lines[0], want)
	}
	if want := `Roamfile:59:16: reverse_proxy: upstream "x:70019": invalid port "70019" (want 1-65535)`; lines[maxErrors-1] != want {
		t.Errorf("last error line %q, want %q", lines[maxErrors-1], want)
	}
	if want := "too many errors: 5 more not shown"; lines[maxErrors] != want {
		t.Errorf("final line %q, want %q", lines[maxErrors], want)
	}
	if n := len(configErrors(err)); n != maxErrors {
		t.Errorf("%d *Errors, want %d", n, maxErrors)
	}
}

func TestParseWrapsCauses(t *testing.T) {
	src := "a {\n\treverse_proxy b {\n\t\tmax_conns_per_session 99999999999999999999\n\t}\n}"
	_, err := Parse("Roamfile", []byte(src), testEnv)
	var numErr *strconv.NumError
	if !errors.As(err, &numErr) || !errors.Is(err, strconv.ErrRange) {
		t.Errorf("Parse error %v does not wrap a strconv range error", err)
	}
}

func TestLoad(t *testing.T) {
	t.Setenv("APP_PORT", "4000")
	path := filepath.Join("testdata", "full.Roamfile")
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.File != path || cfg.Sites[0].Pos.File != path {
		t.Errorf("File = %q, site file %q; want %q", cfg.File, cfg.Sites[0].Pos.File, path)
	}
	if got := cfg.Sites[1].Routes[0].ReverseProxy.Upstreams[0].Addr; got != "localhost:4000" {
		t.Errorf("upstream from $APP_PORT = %q, want localhost:4000", got)
	}
}

func TestLoadErrorNamesPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "Roamfile")
	if err := os.WriteFile(path, []byte("a {\n\trevers_proxy b\n}"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := path + `:2:2: unknown directive "revers_proxy" (did you mean reverse_proxy?)`; !strings.HasPrefix(fmt.Sprint(err), want) {
		t.Errorf("Load error %v, want prefix %s", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope", "Roamfile")
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(%q) error = %v, want one naming the path and wrapping fs.ErrNotExist", path, err)
	}
}

func TestParseTestdata(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.Roamfile"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse("Roamfile", src, testEnv)
			wantErr := strings.HasPrefix(filepath.Base(file), "errors")
			if (err != nil) != wantErr {
				t.Fatalf("Parse error = %v, want error: %v", err, wantErr)
			}
			if err != nil {
				checkErrorPositions(t, src, err)
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	src, err := os.ReadFile(filepath.Join("testdata", "full.Roamfile"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		if _, err := Parse("Roamfile", src, testEnv); err != nil {
			b.Fatal(err)
		}
	}
}

func TestUpgradeTimeout(t *testing.T) {
	cfg, err := Parse("Roamfile", []byte("{\n\tupgrade_timeout 3m\n\tupgrade_grace 10m\n}\nlocalhost {\n\trespond hi\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.UpgradeTimeout != 3*time.Minute || cfg.UpgradeGrace != 10*time.Minute {
		t.Fatalf("upgrade_timeout %v, upgrade_grace %v", cfg.UpgradeTimeout, cfg.UpgradeGrace)
	}
}
