//go:build !unix

package upstream

import "net"

// peekAlive cannot look at the socket on this platform; a dead connection is
// found by the request that uses it, and a replayable request is retried.
func peekAlive(net.Conn) bool { return true }
