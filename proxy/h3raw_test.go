package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// HTTP/3 frame types (RFC 9114 §7.2).
const (
	frameData    = 0x0
	frameHeaders = 0x1
)

// rawH3Conn is an HTTP/3 connection on which a test writes request streams
// byte by byte, as an attacker would, bypassing every check of quic-go's
// client.
type rawH3Conn struct {
	conn *quic.Conn
}

func dialRawH3(t *testing.T, h *harness) *rawH3Conn {
	t.Helper()
	c, err := dialRawH3With(t, h, h.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dialRawH3With dials with a TLS configuration of the test's, and reports a
// failed handshake as an error.
func dialRawH3With(t *testing.T, h *harness, tlsConf *tls.Config) (*rawH3Conn, error) {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	raddr, _ := net.ResolveUDPAddr("udp", h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tlsConf = tlsConf.Clone()
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	conn, err := tr.Dial(ctx, raddr, tlsConf, &quic.Config{})
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	(&http3.Transport{}).NewClientConn(conn) // the control stream and SETTINGS
	t.Cleanup(func() {
		conn.CloseWithError(0, "")
		tr.Close()
		udp.Close()
	})
	return &rawH3Conn{conn: conn}, nil
}

// h3Field is one field as it goes on the wire (pseudo-headers included).
type h3Field struct{ name, value string }

// h3Result is what came back on a raw request stream: a status, or the
// stream was reset without one.
type h3Result struct {
	status int
	reset  bool
}

func (r h3Result) String() string {
	if r.reset {
		return "stream reset"
	}
	return strconv.Itoa(r.status)
}

// request writes a HEADERS frame of fields, a DATA frame per body part, and
// the end of the stream, then reads the response's status.
func (c *rawH3Conn) request(t *testing.T, fields []h3Field, body ...[]byte) h3Result {
	t.Helper()
	str := c.send(t, fields, body...)
	if str == nil {
		return h3Result{reset: true}
	}
	return readH3Status(t, str)
}

// send writes a request on a new stream and returns the stream for the
// response, or nil when the stream was reset while writing.
func (c *rawH3Conn) send(t *testing.T, fields []h3Field, body ...[]byte) *quic.Stream {
	t.Helper()
	str := c.openStream(t)
	b := headersFrame(t, fields)
	for _, part := range body {
		b = quicvarint.Append(b, frameData)
		b = quicvarint.Append(b, uint64(len(part)))
		b = append(b, part...)
	}
	if _, err := str.Write(b); err != nil {
		return nil
	}
	str.Close()
	return str
}

// sendHeaders writes only a HEADERS frame and leaves the stream open.
func (c *rawH3Conn) sendHeaders(t *testing.T, fields []h3Field) *quic.Stream {
	t.Helper()
	str := c.openStream(t)
	if _, err := str.Write(headersFrame(t, fields)); err != nil {
		t.Fatal(err)
	}
	return str
}

// openStream opens a request stream with a 5 s deadline.
func (c *rawH3Conn) openStream(t *testing.T) *quic.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := c.conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	str.SetDeadline(time.Now().Add(5 * time.Second))
	return str
}

// readInterim reads the first HEADERS frame and returns its status, 1xx
// included.
func readInterim(t *testing.T, str *quic.Stream) int {
	t.Helper()
	br := bufio.NewReader(io.LimitReader(str, 4096))
	typ, err := quicvarint.Read(br)
	if err != nil || typ != frameHeaders {
		t.Fatalf("first frame: type %d, %v", typ, err)
	}
	n, _ := quicvarint.Read(br)
	payload := make([]byte, n)
	if _, err := io.ReadFull(br, payload); err != nil {
		t.Fatal(err)
	}
	if br.Buffered() > 0 {
		t.Fatal("read past the interim response")
	}
	return statusOf(t, payload)
}

// statusOf decodes a response header block's :status.
func statusOf(t *testing.T, block []byte) int {
	t.Helper()
	dec := qpack.NewDecoder().Decode(block)
	for {
		f, err := dec()
		if err != nil {
			t.Fatalf("response header block: %v", err)
		}
		if f.Name == ":status" {
			s, _ := strconv.Atoi(f.Value)
			return s
		}
	}
}

// headersFrame encodes fields as a HEADERS frame.
func headersFrame(t *testing.T, fields []h3Field) []byte {
	t.Helper()
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	for _, f := range fields {
		if err := enc.WriteField(qpack.HeaderField{Name: f.name, Value: f.value}); err != nil {
			t.Fatal(err)
		}
	}
	b := quicvarint.Append(nil, frameHeaders)
	b = quicvarint.Append(b, uint64(block.Len()))
	return append(b, block.Bytes()...)
}

// readH3Status reads frames until a HEADERS frame with a final status.
func readH3Status(t *testing.T, str *quic.Stream) h3Result {
	t.Helper()
	br := bufio.NewReader(str)
	for {
		typ, err := quicvarint.Read(br)
		if err != nil {
			return resultOf(t, err)
		}
		n, err := quicvarint.Read(br)
		if err != nil {
			return resultOf(t, err)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			return resultOf(t, err)
		}
		if typ != frameHeaders {
			continue
		}
		if status := statusOf(t, payload); status >= 200 {
			return h3Result{status: status}
		} // 1xx: read on
	}
}

func resultOf(t *testing.T, err error) h3Result {
	t.Helper()
	var se *quic.StreamError
	if errors.As(err, &se) {
		return h3Result{reset: true}
	}
	t.Fatalf("reading the response: %v", err)
	return h3Result{}
}

// getFields is a well-formed GET for the harness's site, plus extra fields.
func getFields(h *harness, extra ...h3Field) []h3Field {
	return append([]h3Field{
		{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost:" + strconv.Itoa(h.port)}, {":path", "/"},
	}, extra...)
}

func postFields(h *harness, extra ...h3Field) []h3Field {
	f := getFields(h, extra...)
	f[0].value = "POST"
	return f
}
