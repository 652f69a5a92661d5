package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/roamgate/roamgate/configs"
)

// fmtCmd prints a Roamfile in canonical layout (configs.Format), or with
// --overwrite rewrites it in place. A file that does not lex or whose
// blocks do not balance is an error at its place, and nothing is written.
func fmtCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fmt", flag.ContinueOnError)
	overwrite := fs.Bool("overwrite", false, "rewrite the file in place instead of printing it")
	helpOutput(fs, args, stdout, stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: roamgate fmt [--overwrite] [FILE]\n\n"+
			"Prints FILE (default ./Roamfile; - for standard input) in canonical layout: one directive\n"+
			"per line, tab indentation, comments kept. The layout changes no token and no directive.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 1 {
		fmt.Fprintf(stderr, "roamgate fmt: want one file, got %d\n", fs.NArg())
		return errUsage
	}
	name := "Roamfile"
	if fs.NArg() == 1 {
		name = fs.Arg(0)
	}
	var src []byte
	var err error
	if name == "-" {
		if *overwrite {
			fmt.Fprintln(stderr, "roamgate fmt: --overwrite needs a file, not standard input")
			return errUsage
		}
		src, err = io.ReadAll(os.Stdin)
	} else {
		src, err = os.ReadFile(name)
	}
	if err != nil {
		return err
	}
	out, err := configs.Format(name, src)
	if err != nil {
		return err
	}
	if !*overwrite {
		_, err := stdout.Write(out)
		return err
	}
	if bytes.Equal(out, src) {
		return nil
	}
	return replaceFile(name, out)
}

// replaceFile writes data to name atomically (a temporary file in its
// directory, renamed over it), keeping name's permissions.
func replaceFile(name string, data []byte) error {
	fi, err := os.Stat(name)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".fmt-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a failure; gone once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(fi.Mode().Perm()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}
