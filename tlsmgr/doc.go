// Package tlsmgr owns roamgate's certificates: one certmagic cache and config
// per process (never certmagic.Default), a local certificate authority for
// development names, and certificate/key files named in the Roamfile.
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it sits between the parsed configuration and the listeners: the proxy asks a
// [Manager] for one tls.Config for TCP (h2, http/1.1, and acme-tls/1 so ACME's
// TLS-ALPN-01 challenge can be answered) and one for QUIC (h3 only).
package tlsmgr
