package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2 sends one request on a new HTTP/2 connection with fields written as
// given (pseudo-headers included) and body as one DATA frame, and reads the
// response's status; a reset stream or connection gives h3Result.reset.
func rawH2(t *testing.T, h *harness, fields []h3Field, body []byte) h3Result {
	t.Helper()
	tlsConf := h.clientTLS()
	tlsConf.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", h.srv.Listeners()[0].TCP[0].String(), tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f.name, Value: f.value})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: body == nil}); err != nil {
		t.Fatal(err)
	}
	if body != nil {
		if err := fr.WriteData(1, true, body); err != nil {
			return h3Result{reset: true}
		}
	}
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return h3Result{reset: true}
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return h3Result{reset: true}
		case *http2.HeadersFrame:
			hfs, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			for _, hf := range hfs {
				if hf.Name == ":status" {
					if s, _ := strconv.Atoi(hf.Value); s >= 200 {
						return h3Result{status: s}
					}
				}
			}
		}
	}
}
