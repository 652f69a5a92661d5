// Package redisstore keeps certmagic's storage in Redis, so that the
// instances of a fleet share certificates, ACME accounts, the local CA and
// the challenge data of distributed solving, and lock each other out of
// obtaining the same certificate twice (issue 15).
//
// In the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// it sits under tlsmgr: a [Storage] is the certmagic.Storage of a
// tlsmgr.Manager whose Roamfile says "storage redis { ... }".
//
// Each value is one hash, written whole by one HSET (its bytes and its
// modification time), so a reader sees the old value or the new one, never
// part of either. Listing walks the key prefix with SCAN, never KEYS. Locks
// are SET NX PX keys with a random token (github.com/bsm/redislock),
// extended while held and released only by their holder; a holder that
// dies stops extending its locks, which then expire.
package redisstore
