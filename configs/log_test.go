package configs

import (
	"testing"
)

// TestLogOutputs: the process log's and the access log's outputs, formats
// and "log access off" (issue 13: output was an unknown subdirective and the
// access log could not be turned off or sent elsewhere).
func TestLogOutputs(t *testing.T) {
	tests := []struct {
		name, options string
		want          Log
	}{
		{"defaults", "", Log{Level: "info", Format: "console"}},
		{"stdout", "log {\n\t\toutput stdout\n\t}", Log{Level: "info", Format: "console",
			Output: LogOutput{Pos: at(3, 3), Kind: "stdout"}}},
		{"file and json", "log {\n\t\toutput file /var/log/roamgate.log\n\t\tformat json\n\t\tlevel warn\n\t}", Log{Level: "warn", Format: "json",
			Output: LogOutput{Pos: at(3, 3), Kind: "file", Path: "/var/log/roamgate.log"}}},
		{"access off", "log access off", Log{Level: "info", Format: "console", Access: AccessLog{Off: true}}},
		{"access to its own file", "log {\n\t\toutput stderr\n\t}\n\tlog access {\n\t\toutput file \"access log.json\"\n\t\tformat json\n\t}", Log{Level: "info", Format: "console",
			Output: LogOutput{Pos: at(3, 3), Kind: "stderr"},
			Access: AccessLog{Output: LogOutput{Pos: at(6, 3), Kind: "file", Path: "access log.json"}, Format: "json"}}},
		{"access discarded", "log access { output discard }", Log{Level: "info", Format: "console",
			Access: AccessLog{Output: LogOutput{Pos: at(2, 15), Kind: "discard"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("Roamfile", []byte(inGlobal(tt.options)), testEnv)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Log != tt.want {
				t.Fatalf("Log = %+v\nwant  %+v", cfg.Log, tt.want)
			}
		})
	}
}

func TestLogErrors(t *testing.T) {
	global := inGlobal
	testParseErrors(t, []errorTest{
		{"output missing", global("log {\n\t\toutput\n\t}"), `Roamfile:3:3: log: output: missing argument`},
		{"output unknown", global("log {\n\t\toutput syslog\n\t}"), `Roamfile:3:10: log: unknown output "syslog" (want stderr, stdout, discard or file PATH)`},
		{"output misspelt", global("log {\n\t\toutput stdrr\n\t}"), `Roamfile:3:10: log: unknown output "stdrr" (did you mean stderr?)`},
		{"output file without path", global("log {\n\t\toutput file\n\t}"), `Roamfile:3:10: log: output: missing path (want output file PATH)`},
		{"output file empty path", global("log {\n\t\toutput file \"\"\n\t}"), `Roamfile:3:15: log: output: empty path`},
		{"output extra", global("log {\n\t\toutput stderr now\n\t}"), `Roamfile:3:17: log: output: unexpected argument "now"`},
		{"output twice", global("log {\n\t\toutput stderr\n\t\toutput stdout\n\t}"), `Roamfile:4:3: log: output: already set at Roamfile:3:3`},
		{"access level", global("log access {\n\t\tlevel debug\n\t}"), `Roamfile:3:3: log: level: the access log has no level (its lines are info; use log access off)`},
		{"access unknown subdirective", global("log access {\n\t\toutptu stdout\n\t}"), `Roamfile:3:3: log: unknown subdirective "outptu" (did you mean output?)`},
		{"access alone", global("log access"), `Roamfile:2:6: log: missing block or off (want log access { output ...; format ... } or log access off)`},
		{"access on", global("log access on"), `Roamfile:2:13: log: unknown value "on" (want log access off, or a block)`},
		{"access off extra", global("log access off now"), `Roamfile:2:17: log: unexpected argument "now"`},
		{"access twice", global("log access off\n\tlog access {\n\t\toutput stdout\n\t}"), `Roamfile:3:2: log: already set at Roamfile:2:2`},
		{"log name misspelt", global("log acess off"), `Roamfile:2:6: log: unknown log "acess" (did you mean access?)`},
		{"log twice", global("log {\n\t}\n\tlog {\n\t}"), `Roamfile:4:2: log: already set at Roamfile:2:2`},
	})
}
