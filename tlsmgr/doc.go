// Package tlsmgr owns roamgate's certificates: one certmagic cache per
// process (never certmagic.Default) with one certmagic config per way of
// issuing; automatic HTTPS with ACME (HTTP-01 and TLS-ALPN-01, on-demand TLS
// vetted by an ask endpoint); a local certificate authority for development
// and internal names; and certificate/key files named in the Roamfile.
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it sits between the parsed configuration and the listeners: the proxy asks a
// [Manager] for one tls.Config for TCP (h2, http/1.1, and acme-tls/1 so ACME's
// TLS-ALPN-01 challenge can be answered) and one for QUIC (h3 only), and for
// the handler of its plain-HTTP port ([Manager.HTTPChallengeHandler]). Both
// configs require client certificates in the handshakes of sites with client
// CAs ([Site.ClientCAFiles], mutual TLS); [Manager.VerifyClientCert] checks a
// request's connection against the site the request was routed to.
// Certificates, ACME accounts and the local CA live in certmagic storage:
// the data directory's files, or Redis for a fleet (sub-package
// redisstore, tested against a real redis-server with redistest).
// Tests run a real ACME CA with the acmetest sub-package.
package tlsmgr
