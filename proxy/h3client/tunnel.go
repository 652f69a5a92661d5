package h3client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// maxInformational bounds the 1xx responses before the final one, as
// quic-go's own client does.
const maxInformational = 5

// maxReason is how much of a refusal's body StatusError keeps.
const maxReason = 512

// ErrConnectionLost marks a Tunnel error caused by the end of the whole QUIC
// connection (closed by either side, idle timeout, stateless reset), as
// opposed to a reset of the tunnel's stream alone. The tunnel cannot be
// resumed; a Roamer replaces the connection. It is set at once, while the
// connection's Context may be canceled a moment later.
var ErrConnectionLost = errors.New("QUIC connection lost")

// connectionErr marks err with ErrConnectionLost when the whole connection
// ended.
func connectionErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var (
		app   *quic.ApplicationError
		trans *quic.TransportError
		idle  *quic.IdleTimeoutError
		reset *quic.StatelessResetError
	)
	if errors.As(err, &app) || errors.As(err, &trans) || errors.As(err, &idle) ||
		errors.As(err, &reset) || errors.Is(err, quic.ErrTransportClosed) {
		return fmt.Errorf("%w: %w", ErrConnectionLost, err)
	}
	return err
}

// StatusError is the edge's refusal of a tunnel: a final status other than
// 2xx in answer to CONNECT.
type StatusError struct {
	StatusCode int
	Header     http.Header
	// Reason is the first line of the response body (up to 512 bytes,
	// control characters removed), where an edge says why; often empty.
	Reason string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("tunnel refused: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Tunnel is an established CONNECT tunnel (RFC 9114 §4.4): one request
// stream whose DATA frames carry the bytes both ways. It survives Migrate.
// Read and Write may run concurrently with each other. CloseWrite waits for
// a Write in progress, Close resets the send side under it, and Abort
// interrupts everything; all three may be called from any goroutine.
type Tunnel struct {
	rs   *http3.RequestStream
	resp *http.Response

	reset atomic.Bool // the send side was reset: no FIN any more

	wmu       sync.Mutex // guards the following; held by Write
	writeDone bool       // FIN sent
}

var _ io.ReadWriteCloser = (*Tunnel)(nil)

// Tunnel opens a CONNECT tunnel to authority ("host:port") on a new request
// stream: :method CONNECT and :authority only, no :scheme or :path (RFC
// 9114 §4.4), plus the fields of hdr (for example Authorization). It
// returns once a 2xx arrives; any other final status is a *StatusError. ctx
// bounds the opening only: when it ends first, the stream is reset
// (H3_REQUEST_CANCELLED) and its error is returned.
func (c *Conn) Tunnel(ctx context.Context, authority string, hdr http.Header) (*Tunnel, error) {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Host: authority},
		Host:   authority,
		Header: hdr,
		// Proto stays empty: a Proto other than HTTP/1.1 would make quic-go
		// send :protocol (extended CONNECT, RFC 9220).
	}
	return c.openStream(ctx, req.WithContext(ctx), "tunnel to "+authority)
}

// WebSocket opens a WebSocket over HTTP/3 (RFC 9220): an extended CONNECT
// with :protocol websocket for rawURL ("https://host/path"), plus the
// fields of hdr (Sec-WebSocket-Protocol, Origin...). It returns once a 2xx
// arrives; the stream then carries WebSocket frames (RFC 6455 §5, the
// client masking its own) in DATA frames. Any other status is a
// *StatusError.
func (c *Conn) WebSocket(ctx context.Context, rawURL string, hdr http.Header) (*Tunnel, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("websocket %s: %w", rawURL, err)
	}
	h := hdr.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set("Sec-WebSocket-Version", "13")
	req := &http.Request{Method: http.MethodConnect, Proto: "websocket", URL: u, Host: u.Host, Header: h}
	return c.openStream(ctx, req.WithContext(ctx), "websocket "+rawURL)
}

// openStream sends a CONNECT request and waits for its final response: a
// 2xx gives the stream as a Tunnel. ctx bounds the opening only: when it
// ends first, the stream is reset (H3_REQUEST_CANCELLED) and its error is
// returned.
func (c *Conn) openStream(ctx context.Context, req *http.Request, what string) (*Tunnel, error) {
	rs, err := c.openConnect(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", what, connectionErr(err))
	}
	// Reading the response needs no path lock (see Migrate); ctx can still
	// end it.
	stop := context.AfterFunc(ctx, func() { cancelStream(rs, http3.ErrCodeRequestCanceled) })
	resp, err := readFinalResponse(rs)
	var se *StatusError
	if err == nil && resp.StatusCode/100 != 2 {
		se = &StatusError{StatusCode: resp.StatusCode, Header: resp.Header, Reason: readReason(resp.Body)}
		_ = rs.Close()
		rs.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
	}
	if !stop() {
		return nil, fmt.Errorf("open %s: %w", what, context.Cause(ctx))
	}
	if err != nil {
		cancelStream(rs, http3.ErrCodeRequestCanceled)
		return nil, fmt.Errorf("open %s: %w", what, connectionErr(err))
	}
	if se != nil {
		return nil, se
	}
	return &Tunnel{rs: rs, resp: resp}, nil
}

// openConnect opens a request stream and sends req's headers, holding off a
// path switch while it writes them. Opening the stream may wait for the
// edge's stream limit, and does so without the lock, so a migration never
// waits behind it. (Neither step reads the path state that the switch
// replaces; the hold keeps new requests off the wire during the switch.)
func (c *Conn) openConnect(ctx context.Context, req *http.Request) (*http3.RequestStream, error) {
	rs, err := c.cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.pathLock.rlock(ctx); err != nil {
		cancelStream(rs, http3.ErrCodeRequestCanceled)
		return nil, err
	}
	err = rs.SendRequestHeader(req)
	c.pathLock.runlock()
	if err != nil {
		cancelStream(rs, http3.ErrCodeRequestCanceled)
		return nil, err
	}
	return rs, nil
}

// readFinalResponse reads responses until a final one, skipping
// informational (1xx) ones as quic-go's ClientConn does.
func readFinalResponse(rs *http3.RequestStream) (*http.Response, error) {
	for range maxInformational + 1 {
		resp, err := rs.ReadResponse()
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode < 100 {
			return resp, nil
		}
	}
	return nil, errors.New("too many informational responses")
}

// readReason reads the first line of a refusal's body, bounded, and keeps
// only printable characters: it ends up on a terminal.
func readReason(body io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(body, maxReason))
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, line)
	return strings.TrimSpace(line)
}

func cancelStream(rs *http3.RequestStream, code http3.ErrCode) {
	rs.CancelRead(quic.StreamErrorCode(code))
	rs.CancelWrite(quic.StreamErrorCode(code))
}

// Response is the edge's 2xx answer that opened the tunnel.
func (t *Tunnel) Response() *http.Response { return t.resp }

// Read reads bytes the edge sent; io.EOF once the edge closed its side.
// Errors wrap ErrConnectionLost when the whole connection ended.
func (t *Tunnel) Read(p []byte) (int, error) {
	n, err := t.rs.Read(p)
	return n, connectionErr(err)
}

// Write sends p to the edge. Errors wrap ErrConnectionLost when the whole
// connection ended.
func (t *Tunnel) Write(p []byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.writeDone {
		return 0, fmt.Errorf("write tunnel: %w", net.ErrClosed)
	}
	n, err := t.rs.Write(p)
	return n, connectionErr(err)
}

// CloseWrite ends the send side (FIN), as TCP's shutdown(SHUT_WR) does: the
// edge reads EOF and may still send.
func (t *Tunnel) CloseWrite() error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.writeDone || t.reset.Load() {
		return nil
	}
	t.writeDone = true
	return t.finish()
}

// finish sends FIN. When the edge has stopped reading (STOP_SENDING),
// quic-go has reset the send side already and refuses FIN; like TCP's
// shutdown after the peer closed, that is no error: nothing is left to end.
func (t *Tunnel) finish() error {
	err := t.rs.Close()
	var serr *quic.StreamError
	if err != nil && errors.As(context.Cause(t.rs.Context()), &serr) && serr.Remote {
		return nil
	}
	return connectionErr(err)
}

// Close ends the tunnel as TCP's close does: it sends FIN after the bytes
// written (unless CloseWrite did) and stops reading (STOP_SENDING with
// H3_NO_ERROR) unless the edge's side had ended. A Write in progress cannot
// finish cleanly then, so Close resets the send side instead of waiting.
func (t *Tunnel) Close() error {
	t.rs.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
	if !t.wmu.TryLock() {
		t.reset.Store(true)
		t.rs.CancelWrite(quic.StreamErrorCode(http3.ErrCodeNoError))
		return nil
	}
	defer t.wmu.Unlock()
	if t.writeDone || t.reset.Load() {
		return nil
	}
	t.writeDone = true
	return t.finish()
}

// Abort resets both directions with H3_CONNECT_ERROR, the code RFC 9114
// §4.4 gives a failed TCP connection at either end of a tunnel: use it when
// the local TCP connection fails, so the edge resets its backend
// connection. Blocked Reads and Writes return at once.
func (t *Tunnel) Abort() {
	t.reset.Store(true)
	cancelStream(t.rs, http3.ErrCodeConnectError)
}
