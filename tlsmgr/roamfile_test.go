package tlsmgr

import (
	"reflect"
	"testing"

	"github.com/roamgate/roamgate/configs"
)

func TestConfigFor(t *testing.T) {
	cfg, err := configs.Parse("Roamfile", []byte(`{
	data_dir /from/roamfile
}
example.com, *.example.com {
	reverse_proxy 127.0.0.1:1
}
:8443 {
	reverse_proxy 127.0.0.1:2
	tls internal
}
:9443, localhost:9444 {
	reverse_proxy 127.0.0.1:3
}
files.test {
	reverse_proxy 127.0.0.1:4
	tls site.pem site-key.pem
}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := ConfigFor(cfg, "")
	want := Config{
		DataDir:           "/from/roamfile",
		DefaultServerName: "localhost",
		Sites: []Site{
			{Names: []string{"example.com", "*.example.com"}},
			{Names: []string{"localhost", "127.0.0.1", "::1"}, Issuer: IssuerLocal},
			// The catch-all names are managed once, by the first site.
			{Names: []string{"files.test"}, CertFile: "site.pem", KeyFile: "site-key.pem"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ConfigFor:\n got %+v\nwant %+v", got, want)
	}
	if dd := ConfigFor(cfg, "/from/flag").DataDir; dd != "/from/flag" {
		t.Fatalf("--data-dir should win over data_dir: %q", dd)
	}
	cfg.DataDir = ""
	if dd := ConfigFor(cfg, "").DataDir; dd != DefaultDataDir() {
		t.Fatalf("default data dir %q, want %q", dd, DefaultDataDir())
	}
	m, err := New(ConfigFor(cfg, t.TempDir()), nil)
	if err != nil {
		t.Fatalf("the derived config does not validate: %v", err)
	}
	m.Stop()
}
