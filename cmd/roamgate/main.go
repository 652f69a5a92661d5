// Command roamgate is an HTTP/3 edge and sidecar proxy that keeps a client's
// backend and upstream TCP connections for the whole life of its QUIC
// connection, through network changes.
//
//	roamgate run [--config Roamfile]        serve a Roamfile
//	roamgate validate [--config Roamfile]   check a Roamfile and its certificate files
//	roamgate reverse-proxy --from HOST:PORT --to UPSTREAM[,UPSTREAM...]
//	roamgate demo                           the proxy, a legacy app and a migrating client
//	roamgate trust [--install]              print or install the local CA's root
//	roamgate connect https://EDGE --listen 127.0.0.1:2222   carry local TCP over a roaming tunnel
//	roamgate fmt [--overwrite] [Roamfile]     print (or rewrite) a Roamfile in canonical layout
//	roamgate probe https://HOST:PORT/ [--migrate]   an HTTP/3 request, before and after a move
//	roamgate health [--admin HOST:PORT] [--ready]   ask a running roamgate's health endpoint
//	roamgate cid decode [--config Roamfile] CID...  the server ID in QUIC-LB connection IDs
//	roamgate version
//
// main only parses the command line and wires the packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/roamgate/roamgate/configs"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "roamgate:", err)
		os.Exit(1)
	}
}

// errUsage marks a command-line mistake; the usage was printed already.
var errUsage = errors.New("usage")

const usage = `roamgate: an HTTP/3 edge and sidecar proxy that survives client network changes

Usage:
  roamgate run [--config Roamfile] [--data-dir DIR] [--grace 10s] [--watch]
  roamgate validate [--config Roamfile]
  roamgate reverse-proxy --from HOST:PORT --to UPSTREAM[,UPSTREAM...] [--bind HOST] [--data-dir DIR]
                         [--upstream-ca F] [--upstream-server-name N] [--upstream-cert F --upstream-key F] [--upstream-insecure]
  roamgate demo [--listen 127.0.0.1:8443] [--data-dir DIR] [--once]
  roamgate trust [--install] [--config Roamfile] [--data-dir DIR]
  roamgate connect https://EDGE[:PORT] [--listen 127.0.0.1:2222] [--token T | --token-file F] [--cert F --key F] [--ca F] [--server-name N]
  roamgate fmt [--overwrite] [FILE]
  roamgate reload [--config Roamfile] [--data-dir DIR]
  roamgate upgrade [--config Roamfile] [--data-dir DIR]
  roamgate probe [--ca F | --insecure] [--migrate] [-X METHOD] [-H "Name: value"]... URL
  roamgate health [--admin HOST:PORT | --config Roamfile] [--ready] [--timeout 5s]
  roamgate cid decode [--sid-len N] [--nonce-len M] [--key HEX] [--config-id C] [--config F] CID...
  roamgate version
`

// run executes one command. ctx ends on SIGINT/SIGTERM.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCmd(ctx, rest, stdout, stderr)
	case "validate":
		return validateCmd(rest, stdout, stderr)
	case "reverse-proxy":
		return reverseProxyCmd(ctx, rest, stdout, stderr)
	case "demo":
		return demoCmd(ctx, rest, stdout, stderr)
	case "trust":
		return trustCmd(rest, stdout, stderr)
	case "connect":
		return connectCmd(ctx, rest, stdout, stderr)
	case "probe":
		return probeCmd(ctx, rest, stdout, stderr)
	case "fmt":
		return fmtCmd(rest, stdout, stderr)
	case "reload":
		return reloadCmd(rest, stdout, stderr)
	case "upgrade":
		return upgradeCmd(rest, stdout, stderr)
	case "health":
		return healthCmd(ctx, rest, stdout, stderr)
	case "cid":
		return cidCmd(rest, stdout, stderr)
	case "version", "--version", "-version", "-v":
		fmt.Fprint(stdout, versionText())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "roamgate: unknown command %q\n\n%s", cmd, usage)
	return errUsage
}

// usageLines name each command's positional arguments, for its --help.
var usageLines = map[string]string{
	"run":           "roamgate run [flags]",
	"validate":      "roamgate validate [flags]",
	"reverse-proxy": "roamgate reverse-proxy --from HOST:PORT --to UPSTREAM[,UPSTREAM...] [flags]",
	"demo":          "roamgate demo [flags]",
	"trust":         "roamgate trust [flags]",
	"health":        "roamgate health [flags]",
	"connect":       "roamgate connect [flags] https://EDGE[:PORT]",
	"reload":        "roamgate reload [flags]",
	"upgrade":       "roamgate upgrade [flags]",
}

// helpOutput sends fs's messages to stderr, or its help to stdout when
// args ask for it (-h, -help, --help): help asked for is output, exit 0,
// not an error. A FlagSet without a Usage of its own gets one naming the
// command's arguments.
func helpOutput(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) {
	fs.SetOutput(stderr)
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(stdout)
		}
	}
	if line, ok := usageLines[fs.Name()]; ok {
		fs.Usage = func() {
			fmt.Fprintf(fs.Output(), "Usage: %s\n\nFlags:\n", line)
			fs.PrintDefaults()
		}
	}
}

// parseFlags parses a command's flags: errors to stderr, help asked for
// to stdout.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	helpOutput(fs, args, stdout, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "roamgate %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// durationValue is a time.Duration flag whose error shows the syntax.
type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (%s)", s, configs.DurationExamples)
	}
	*v.d = d
	return nil
}

// durationFlag is fs.Duration with durationValue's errors.
func durationFlag(fs *flag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	d := new(time.Duration)
	*d = value
	fs.Var(durationValue{d}, name, usage)
	return d
}
