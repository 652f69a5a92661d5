package acmetest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/letsencrypt/pebble/v2/core"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestCA checks the directory, its roots, and an outage.
func TestCA(t *testing.T) {
	c := Start(t, Options{})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.ClientRoots()}}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}

	get := func() (int, map[string]any) {
		t.Helper()
		resp, err := client.Get(c.DirectoryURL())
		if err != nil {
			t.Fatalf("GET directory: %v", err)
		}
		defer resp.Body.Close()
		var body map[string]any
		data, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(data, &body); err != nil {
			t.Fatalf("directory body %q: %v", data, err)
		}
		return resp.StatusCode, body
	}
	if !strings.HasPrefix(c.DirectoryURL(), "https://127.0.0.1:") {
		t.Errorf("directory URL %s, want https on 127.0.0.1", c.DirectoryURL())
	}
	if status, dir := get(); status != http.StatusOK || dir["newOrder"] == nil {
		t.Fatalf("directory: %d %v", status, dir)
	}

	c.SetDown(true)
	status, problem := get()
	if status != http.StatusServiceUnavailable || problem["detail"] != "acmetest: CA is down" {
		t.Errorf("while down: %d %v", status, problem)
	}
	c.SetDown(false)
	if status, _ := get(); status != http.StatusOK {
		t.Errorf("after the outage: %d", status)
	}

	data, err := os.ReadFile(c.ClientRootsFile(t))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("ClientRootsFile holds no PEM block")
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Verify(x509.VerifyOptions{Roots: c.ClientRoots()}); err != nil {
		t.Errorf("file root is not ClientRoots' root: %v", err)
	}
	if c.IssuingRoots().Equal(c.ClientRoots()) {
		t.Error("issuing roots are the directory's TLS roots")
	}
}

// TestDNSStub checks that every name resolves to 127.0.0.1 only.
func TestDNSStub(t *testing.T) {
	addr := startDNS(t)
	client := &dns.Client{Net: "tcp"}
	for qtype, want := range map[uint16]int{dns.TypeA: 1, dns.TypeAAAA: 0, dns.TypeTXT: 0} {
		q := new(dns.Msg)
		q.SetQuestion("shop.example.com.", qtype)
		resp, _, err := client.Exchange(q, addr)
		if err != nil {
			t.Fatalf("%s query: %v", dns.TypeToString[qtype], err)
		}
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != want {
			t.Errorf("%s: rcode %d, %d answers; want success and %d", dns.TypeToString[qtype], resp.Rcode, len(resp.Answer), want)
		}
		if want == 1 {
			if a, ok := resp.Answer[0].(*dns.A); !ok || !a.A.Equal(net.IPv4(127, 0, 0, 1)) {
				t.Errorf("A answer %v, want 127.0.0.1", resp.Answer[0])
			}
		}
	}
}

func TestNewOrderCounts(t *testing.T) {
	c := &CA{orders: make(map[string]int)}
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"identifiers":[{"type":"dns","value":"Shop.Example.com"},{"type":"ip","value":"192.0.2.1"}]}`))
	c.newOrder([]byte(`{"protected":"e30","payload":"` + payload + `","signature":"c2ln"}`))
	c.newOrder([]byte(`not json`))
	c.newOrder([]byte(`{"payload":"!!"}`))
	if c.Orders("shop.example.com") != 1 || c.Orders("192.0.2.1") != 1 || c.Orders("other.example.com") != 0 {
		t.Errorf("orders %v", c.orders)
	}
}

// TestAliasReplaced checks the work-around for Pebble's lookup of a
// replaced certificate whose serial's DER form has a leading zero.
func TestAliasReplaced(t *testing.T) {
	store := db.NewMemoryStore()
	c := &CA{orders: make(map[string]int)}
	c.pebble.Store(&pebble{store: store})
	serial := []byte{0x80, 1, 2, 3, 4, 5, 6} // top bit set: DER adds a zero byte
	order := &core.Order{CertificateObject: &core.Certificate{ID: hex.EncodeToString(serial)}}
	if err := store.AddOrderByIssuedSerial(order); err != nil {
		t.Fatal(err)
	}
	der := append([]byte{0}, serial...)
	certID := base64.RawURLEncoding.EncodeToString([]byte("akid")) + "." + base64.RawURLEncoding.EncodeToString(der)
	if _, err := store.GetOrderByIssuedSerial(hex.EncodeToString(der)); err == nil {
		t.Fatal("Pebble finds the padded serial by itself; the work-around can go")
	}
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"identifiers":[{"type":"dns","value":"a.example.com"}],"replaces":"` + certID + `"}`))
	c.newOrder([]byte(`{"protected":"e30","payload":"` + payload + `","signature":"c2ln"}`))
	got, err := store.GetOrderByIssuedSerial(hex.EncodeToString(der))
	if err != nil || got != order {
		t.Fatalf("padded serial: %v, %v; want the original order", got, err)
	}
	if c.Orders("a.example.com") != 1 {
		t.Errorf("orders %v", c.orders)
	}
}
