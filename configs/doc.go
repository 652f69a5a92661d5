// Package configs reads the Roamfile, roamgate's Caddyfile-like configuration
// format, into a typed and validated [Config].
//
// It is the first stage of the data flow
//
//	Roamfile ─▶ configs ─▶ tlsmgr ─▶ proxy ─▶ upstream
//
// and is built in three small layers, like Caddy's caddyfile package:
//
//   - the lexer ([Lex]) turns text into [Token]s that carry file, line and column;
//   - the parser ([ParseBlocks]) groups tokens into an optional global options
//     block and site blocks, each a list of directive [Segment]s;
//   - a [Cursor] walks one segment for the directive code that builds [Config].
//
// Every error names the file, line and column it is about, and [Parse] reports
// all errors of a file in one run. Of roamgate's packages it imports only
// upstream, whose settings it checks and builds ([UpstreamTLS.Load]).
package configs
