package proxy

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// halfConn is one side of a spliced byte stream: it can stop sending (a
// FIN) while it keeps receiving, and be torn down at once.
type halfConn interface {
	io.ReadWriter
	CloseWrite() error
	Abort()
}

// splice copies both ways between client and upstream until both
// directions have ended, passing each end on as a half-close (RFC 9220 and
// RFC 9114 §4.4: a FIN on the stream is a FIN on the TCP connection, and
// back). When one direction fails, both sides are torn down so the other
// direction ends too. It returns the bytes carried each way and the first
// failure.
func splice(client, upstream halfConn) (up, down int64, err error) {
	var wg sync.WaitGroup
	var once sync.Once
	fail := func(e error) {
		once.Do(func() {
			err = e
			client.Abort()
			upstream.Abort()
		})
	}
	wg.Go(func() {
		n, e := io.Copy(upstream, client)
		up = n
		if e != nil {
			fail(e)
			return
		}
		if e := upstream.CloseWrite(); e != nil {
			fail(e)
		}
	})
	n, e := io.Copy(client, upstream)
	down = n
	if e != nil {
		fail(e)
	} else if e := client.CloseWrite(); e != nil {
		fail(e)
	}
	wg.Wait()
	return up, down, err
}

// h3Side is an HTTP/3 request stream taken over by the handler
// (http3.HTTPStreamer): its bytes travel in DATA frames.
type h3Side struct{ *http3.Stream }

// CloseWrite ends the send direction of the stream (a FIN).
func (s h3Side) CloseWrite() error { return s.Stream.Close() }

// Abort resets both directions of the stream with H3_CONNECT_ERROR, the
// code for a CONNECT whose TCP side failed (RFC 9114 §4.4).
func (s h3Side) Abort() {
	s.CancelRead(quic.StreamErrorCode(http3.ErrCodeConnectError))
	s.CancelWrite(quic.StreamErrorCode(http3.ErrCodeConnectError))
}

// tcpSide is a TCP (or TLS) connection, reading first what a buffered
// reader already holds.
type tcpSide struct {
	net.Conn
	r io.Reader
}

func (s tcpSide) Read(p []byte) (int, error) { return s.r.Read(p) }

// CloseWrite half-closes the connection: a FIN for TCP, close_notify for
// TLS.
func (s tcpSide) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connection cannot half-close")
}

// Abort closes the connection.
func (s tcpSide) Abort() { _ = s.Conn.Close() }
