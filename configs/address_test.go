package configs

import "testing"

func TestParseSiteAddress(t *testing.T) {
	tests := []struct {
		text string
		host string
		port int
	}{
		{"example.com", "example.com", 443},
		{"Example.COM", "example.com", 443},
		{"*.example.com", "*.example.com", 443},
		{"localhost:8443", "localhost", 8443},
		{":443", "", 443},
		{":0", "", 0},
		{"127.0.0.1:8443", "127.0.0.1", 8443},
		{"127.0.0.1", "127.0.0.1", 443},
		{"[::1]:8443", "::1", 8443},
		{"[::1]", "::1", 443},
		{"[FE80::1%Eth0]:1", "fe80::1%Eth0", 1},
		{"[0:0::1]", "::1", 443},
		{"https://example.com", "example.com", 443},
		{"HTTPS://example.com:8443", "example.com", 8443},
		{"https://:8443", "", 8443},
		{"under_score.example", "under_score.example", 443},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", 443},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			a, err := parseSiteAddress(Token{File: "Roamfile", Line: 2, Col: 3, Text: tt.text}, 443)
			if err != nil {
				t.Fatal(err)
			}
			want := Address{Pos: at(2, 3), Host: tt.host, Port: tt.port, Text: tt.text}
			if a != want {
				t.Errorf("got %+v, want %+v", a, want)
			}
		})
	}
}

func TestParseUpstream(t *testing.T) {
	tests := []struct{ text, addr string }{
		{"10.0.0.5:8080", "10.0.0.5:8080"},
		{"localhost:3000", "localhost:3000"},
		{"Backend", "Backend:80"},
		{":8080", "localhost:8080"},
		{"[::1]:8080", "[::1]:8080"},
		{"[::1]", "[::1]:80"},
		{"http://a", "a:80"},
		{"HTTP://a:81", "a:81"},
		{"http://[fd00::1]:9", "[fd00::1]:9"},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			c := NewCursor(Segment{{File: "Roamfile", Line: 1, Col: 1, Text: "reverse_proxy"}, {File: "Roamfile", Line: 1, Col: 15, Text: tt.text}})
			c.Next()
			c.NextArg()
			u, err := parseUpstream(c)
			if err != nil {
				t.Fatal(err)
			}
			if want := (Upstream{Pos: at(1, 15), Addr: tt.addr, Text: tt.text}); u != want {
				t.Errorf("got %+v, want %+v", u, want)
			}
		})
	}
}

func TestValidHost(t *testing.T) {
	tests := []struct {
		host     string
		wildcard bool
		want     bool
	}{
		{"example.com", false, true},
		{"localhost", false, true},
		{"a-b_c.d1", false, true},
		{"1.2.3.4", false, true},
		{"::1", false, true},
		{"*.example.com", true, true},
		{"*.example.com", false, false},
		{"*", true, false},
		{"a.*", true, false},
		{"", false, false},
		{"example.com.", false, false},
		{"a..b", false, false},
		{"1.2.3", false, false},
		{"01.2.3.4", false, false},
		{"8443", false, false},
		{"a.123", false, false},
		{"bücher.example", false, false},
		{"a b", false, false},
	}
	for _, tt := range tests {
		if got := validHost(tt.host, tt.wildcard); got != tt.want {
			t.Errorf("validHost(%q, %v) = %v, want %v", tt.host, tt.wildcard, got, tt.want)
		}
	}
}
