package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roamgate/roamgate/configs"
)

// parseLog parses a Roamfile with the given global options.
func parseLog(t *testing.T, options string) *configs.Config {
	t.Helper()
	cfg, err := configs.Parse("Roamfile", []byte("{\n"+options+"\n}\nlocalhost:0 {\n\trespond 200\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestLogOutputs: the process log and the access log go to the outputs and
// in the formats the Roamfile names; two outputs of one file share it.
func TestLogOutputs(t *testing.T) {
	dir := t.TempDir()
	main, access := filepath.Join(dir, "roamgate.log"), filepath.Join(dir, "access.log")
	var stdout, stderr bytes.Buffer
	l, err := openLogs(parseLog(t, `	log {
		output file `+main+`
		level warn
	}
	log access {
		output file `+access+`
		format json
	}`).Log, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	l.logger.Info("below the level")
	l.logger.Warn("process line")
	l.access.Info("request")
	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	if stdout.Len()+stderr.Len() != 0 {
		t.Fatalf("the terminal got %q %q", stdout.String(), stderr.String())
	}
	got, _ := os.ReadFile(main)
	if !strings.Contains(string(got), "WARN\tprocess line") || strings.Contains(string(got), "below the level") || strings.Contains(string(got), "request") {
		t.Fatalf("process log file:\n%s", got)
	}
	got, _ = os.ReadFile(access)
	var line map[string]any
	if err := json.Unmarshal(got, &line); err != nil || line["msg"] != "request" || line["logger"] != "access" {
		t.Fatalf("access log file (JSON, at info whatever the process level): %q %v", got, err)
	}
	if fi, err := os.Stat(access); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("access log mode %v %v, want 0600", fi.Mode(), err)
	}

	// Both logs to stdout, in one file: one sink each.
	shared := filepath.Join(dir, "shared.log")
	l, err = openLogs(parseLog(t, "\tlog {\n\t\toutput file "+shared+"\n\t}\n\tlog access {\n\t\toutput file "+shared+"\n\t}").Log, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.files) != 1 {
		t.Fatalf("%d files open for one path", len(l.files))
	}
	l.close()
	l, err = openLogs(parseLog(t, "\tlog {\n\t\toutput stdout\n\t}\n\tlog access off").Log, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	l.logger.Info("to stdout")
	l.access.Info("request")
	l.close()
	if !strings.Contains(stdout.String(), "to stdout") || strings.Contains(stdout.String(), "request") || stderr.Len() != 0 {
		t.Fatalf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}

// TestLogFileErrors: an output file that cannot be opened stops roamgate at
// start with its Roamfile position, the path and the system's reason.
func TestLogFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no", "such", "dir", "roamgate.log")
	for _, tc := range []struct{ options, want string }{
		{"\tlog {\n\t\toutput file " + missing + "\n\t}", `Roamfile:3:3: log: output file "` + missing + `": no such file or directory`},
		{"\tlog access {\n\t\toutput file " + dir + "\n\t}", `Roamfile:3:3: log: output file "` + dir + `": is a directory`},
	} {
		_, err := openLogs(parseLog(t, tc.options).Log, os.Stdout, os.Stderr)
		if err == nil || err.Error() != tc.want {
			t.Errorf("error %v\nwant  %s", err, tc.want)
		}
	}
}

// TestRunAccessLog: roamgate run writes the access log where the Roamfile
// says (its own file, apart from the process log), or nowhere with "log
// access off".
func TestRunAccessLog(t *testing.T) {
	app := startLegacyApp(t, "app")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	accessFile := filepath.Join(dir, "access.log")
	for _, tc := range []struct{ name, access string }{
		{"own file", "log access {\n\t\toutput file " + accessFile + "\n\t\tformat json\n\t}"},
		{"off", "log access off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roamfile := writeFile(t, dir, "Roamfile", `{
	default_bind 127.0.0.1
	data_dir `+dataDir+`
	log {
		format json
	}
	`+tc.access+`
}
localhost:0 {
	reverse_proxy `+app.Addr()+`
}
`)
			addr, logs, stop := servingLogs(t, []string{"run", "--config", roamfile, "--grace", "1s"})
			getThrough(t, addr, dataDir)
			if err := stop(); err != nil {
				t.Fatalf("run: %v", err)
			}
			if strings.Contains(logs.String(), `"msg":"request"`) {
				t.Fatalf("an access line in the process log:\n%s", logs.String())
			}
			got, _ := os.ReadFile(accessFile)
			if want := tc.name == "own file"; strings.Contains(string(got), `"msg":"request"`) != want {
				t.Fatalf("access log file (want a request line: %v):\n%s", want, got)
			}
			os.Remove(accessFile)
		})
	}
}
