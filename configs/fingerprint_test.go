package configs

import "testing"

// TestFingerprint: the same reverse_proxy written elsewhere in a file has
// the same fingerprint; one changed setting changes it.
func TestFingerprint(t *testing.T) {
	rp := func(src string) *ReverseProxy {
		t.Helper()
		cfg, err := Parse("Roamfile", []byte(src), nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Sites[len(cfg.Sites)-1].Routes[0].ReverseProxy
	}
	a := rp("a {\n\treverse_proxy b:1 c:1 {\n\t\tdial_timeout 2s\n\t}\n}\n")
	moved := rp("z {\n\trespond 1\n}\n\n\na {\n    reverse_proxy b:1 c:1 { dial_timeout 2s }\n}\n")
	changed := rp("a {\n\treverse_proxy b:1 c:1 {\n\t\tdial_timeout 3s\n\t}\n}\n")
	if a.Pos == moved.Pos {
		t.Fatal("the test needs different positions")
	}
	if Fingerprint(a) != Fingerprint(moved) {
		t.Fatalf("moved: %s\n%s", Fingerprint(a), Fingerprint(moved))
	}
	if Fingerprint(a) == Fingerprint(changed) {
		t.Fatal("a changed dial_timeout has the same fingerprint")
	}
}
