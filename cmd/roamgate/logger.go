package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/roamgate/roamgate/configs"
)

// newLogger builds a logger with cfg's level and format, writing to w: for
// the commands that log to the terminal (demo, connect).
func newLogger(cfg configs.Log, w io.Writer) (*zap.Logger, error) {
	level, err := logLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	sink := zapcore.Lock(zapcore.AddSync(w))
	return zap.New(zapcore.NewCore(logEncoder(cfg.Format), sink, level), zap.ErrorOutput(sink)), nil
}

func logLevel(name string) (zapcore.Level, error) {
	if name == "" {
		return zapcore.InfoLevel, nil
	}
	level, err := zapcore.ParseLevel(name)
	if err != nil {
		return level, fmt.Errorf("log level: %w", err)
	}
	return level, nil
}

func logEncoder(format string) zapcore.Encoder {
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "ts"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	if format == "json" {
		return zapcore.NewJSONEncoder(ec)
	}
	ec.EncodeLevel = zapcore.CapitalLevelEncoder
	return zapcore.NewConsoleEncoder(ec)
}

// logs are the loggers of a Roamfile's log options (configs.Log) and the
// files they write to, which they own: close syncs the loggers and closes
// the files.
type logs struct {
	logger *zap.Logger
	level  zap.AtomicLevel // the process log's, which a reload changes in place
	access *zap.Logger     // one line per request, at info, whatever the process log's level
	files  []*os.File
}

// openLogs builds the process logger and the access logger of cfg. File
// outputs are opened now, appending (created with mode 0600), so a path
// that cannot be written stops roamgate at start with the Roamfile
// position, the path and the system's reason. Outputs that name the same
// file share it.
func openLogs(cfg configs.Log, stdout, stderr io.Writer) (*logs, error) {
	level, err := logLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	l := &logs{level: zap.NewAtomicLevelAt(level)}
	sinks := map[string]zapcore.WriteSyncer{
		"stderr":  zapcore.Lock(zapcore.AddSync(stderr)),
		"stdout":  zapcore.Lock(zapcore.AddSync(stdout)),
		"discard": zapcore.AddSync(io.Discard),
	}
	sinkFor := func(out configs.LogOutput, def string) (zapcore.WriteSyncer, error) {
		switch out.Kind {
		case "":
			return sinks[def], nil
		case "file":
		default:
			return sinks[out.Kind], nil
		}
		key := "file:" + filepath.Clean(out.Path)
		if abs, err := filepath.Abs(out.Path); err == nil {
			key = "file:" + abs
		}
		if s, ok := sinks[key]; ok {
			return s, nil
		}
		f, err := os.OpenFile(out.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			if pe, ok := errors.AsType[*fs.PathError](err); ok {
				err = pe.Err // the path is in the message already
			}
			return nil, fmt.Errorf("%s: log: output file %q: %w", out.Pos, out.Path, err)
		}
		l.files = append(l.files, f)
		sinks[key] = zapcore.Lock(f)
		return sinks[key], nil
	}

	sink, err := sinkFor(cfg.Output, "stderr")
	if err != nil {
		return nil, err
	}
	l.logger = zap.New(zapcore.NewCore(logEncoder(cfg.Format), sink, l.level), zap.ErrorOutput(sink))

	if cfg.Access.Off {
		l.access = zap.NewNop()
		return l, nil
	}
	accessSink := sink
	if cfg.Access.Output.Kind != "" {
		if accessSink, err = sinkFor(cfg.Access.Output, ""); err != nil {
			l.close()
			return nil, err
		}
	}
	format := cfg.Access.Format
	if format == "" {
		format = cfg.Format
	}
	l.access = zap.New(zapcore.NewCore(logEncoder(format), accessSink, zapcore.InfoLevel), zap.ErrorOutput(sink)).Named("access")
	return l, nil
}

// close flushes the loggers and closes the log files.
func (l *logs) close() error {
	for _, lg := range []*zap.Logger{l.logger, l.access} {
		if lg != nil {
			_ = lg.Sync() // a terminal's Sync fails with EINVAL; files sync below
		}
	}
	var errs []error
	for _, f := range l.files {
		errs = append(errs, f.Sync(), f.Close())
	}
	return errors.Join(errs...)
}
