// Package quiclb makes roamgate's QUIC connection IDs routable: it encodes
// and decodes connection IDs as IETF QUIC-LB specifies
// (draft-ietf-quic-load-balancers-21, "QUIC-LB: Generating Routable QUIC
// Connection IDs"), so that a load balancer in front of several roamgate
// instances sends every packet of a connection to the instance that holds
// it, also after the client migrated to a new address (RFC 9000 §9), when a
// 4-tuple hash would pick another instance.
//
// In the data flow
//
//	Roamfile ─▶ configs (quic_lb) ─▶ proxy ─▶ quic.Transport.ConnectionIDGenerator = quiclb.Generator
//
// it sits below proxy, which gives every quic.Transport a [Generator]; the
// `roamgate cid decode` command and test balancers decode with [Codec].
//
// # Connection ID layout
//
// With quic_lb configured (config rotation C, server ID of S bytes, nonce
// of N bytes, 1+S+N bytes in all):
//
//	octet 0      bits 7-5  config rotation C (0-6)
//	             bits 4-2  random, chosen anew for every ID
//	             bits 1-0  process generation G (0-3)
//	octets 1-S   server ID  ┐ plaintext, or encrypted together with AES-128:
//	octets S+1-  nonce      ┘ single pass when S+N = 16, else four passes
//
// The draft leaves the first octet's five low bits to the server unless it
// self-encodes the length there (§3.3, an aid to hardware crypto offload
// that load balancers ignore). roamgate does not self-encode: it keeps two of
// the bits for the process generation, which is outside the encryption so
// that an SO_REUSEPORT eBPF program can read it without keys and route a
// packet to the old or the new process while a binary upgrade hands over
// the socket (issue 14; only two processes coexist, and generations cycle
// 0, 1, 2, 3, 0). A load balancer that self-encodes lengths for other
// servers reads garbage lengths from roamgate's IDs, so configurations for
// roamgate say the length is not encoded. The generation is the same for
// every connection of a process; an observer learns from it only which
// process a connection started on, for the minutes an upgrade lasts, and
// the three other bits stay random as §3.3 asks.
//
// Without quic_lb, IDs are unroutable (config rotation 7) and, as the draft
// requires of a server without a configuration (§3.2), self-encode their
// length, so the generation moves to the second octet:
//
//	octet 0      0xe9: config rotation 7, length self-encoded (9 more octets)
//	octet 1      bits 7-2 random, bits 1-0 process generation G
//	octets 2-9   random
//
// quic-go gives all IDs of a transport one length, so the self-encoded length
// is constant and tells an observer nothing. The draft's further advice to
// such a server, to issue a single connection ID and send
// disable_active_migration, does not fit roamgate, whose clients migrate
// (a lone instance needs no balancer to route them), and quic-go cannot
// send that transport parameter anyway; a balancer routes these IDs by
// 4-tuple, as §4.3 says.
//
// [Generation] reads the generation of either layout as the future eBPF
// program will: octet 1's low bits when the config rotation is 7, else octet
// 0's.
//
// # Nonces
//
// Nonces are random (crypto/rand), never counters: the plaintext algorithm
// must not let observers link IDs (§5.4), and guessable plaintext weakens
// the four-pass Feistel network (§9.7). quic-go cannot tell that a new ID
// duplicates one in use, so a Generator wants nonces of MinRandomNonceLen
// bytes or more; its doc comment gives the bound.
package quiclb
