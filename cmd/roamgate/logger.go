package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
// the files. A reload changes them in place (prepare, then commit): the
// loggers write through cores it swaps, so every logger made from them
// (named, with fields, wrapped) follows.
type logs struct {
	logger *zap.Logger
	access *zap.Logger // one line per request, at info, whatever the process log's level
	level  zap.AtomicLevel

	stdout, stderr io.Writer
	main, acc      atomic.Pointer[zapcore.Core]

	mu    sync.Mutex
	files []*os.File
}

// openLogs builds the process logger and the access logger of cfg. File
// outputs are opened now, appending (created with mode 0600), so a path
// that cannot be written stops roamgate at start with the Roamfile
// position, the path and the system's reason. Outputs that name the same
// file share one descriptor.
func openLogs(cfg configs.Log, stdout, stderr io.Writer) (*logs, error) {
	l := &logs{stdout: stdout, stderr: stderr, level: zap.NewAtomicLevel()}
	b, err := l.build(cfg)
	if err != nil {
		return nil, err
	}
	l.level.SetLevel(b.level)
	l.main.Store(&b.main)
	l.acc.Store(&b.access)
	l.files = b.files
	l.logger = zap.New(&swapCore{cur: &l.main}, zap.ErrorOutput(b.errSink))
	l.access = zap.New(&swapCore{cur: &l.acc}, zap.ErrorOutput(b.errSink)).Named("access")
	return l, nil
}

// builtLogs are the cores and files of one log configuration.
type builtLogs struct {
	main, access zapcore.Core
	level        zapcore.Level
	errSink      zapcore.WriteSyncer
	files        []*os.File
}

func (l *logs) build(cfg configs.Log) (*builtLogs, error) {
	level, err := logLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	b := &builtLogs{level: level}
	sinks := map[string]zapcore.WriteSyncer{
		"stderr":  zapcore.Lock(zapcore.AddSync(l.stderr)),
		"stdout":  zapcore.Lock(zapcore.AddSync(l.stdout)),
		"discard": zapcore.AddSync(io.Discard),
	}
	fail := func(err error) (*builtLogs, error) {
		for _, f := range b.files {
			f.Close()
		}
		return nil, err
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
		b.files = append(b.files, f)
		sinks[key] = zapcore.Lock(f)
		return sinks[key], nil
	}

	sink, err := sinkFor(cfg.Output, "stderr")
	if err != nil {
		return fail(err)
	}
	b.errSink = sink
	b.main = zapcore.NewCore(logEncoder(cfg.Format), sink, l.level)
	if cfg.Access.Off {
		b.access = zapcore.NewNopCore()
		return b, nil
	}
	accessSink := sink
	if cfg.Access.Output.Kind != "" {
		if accessSink, err = sinkFor(cfg.Access.Output, ""); err != nil {
			return fail(err)
		}
	}
	format := cfg.Access.Format
	if format == "" {
		format = cfg.Format
	}
	b.access = zapcore.NewCore(logEncoder(format), accessSink, zapcore.InfoLevel)
	return b, nil
}

// logChange is a prepared change of the log settings: its files are open.
type logChange struct {
	l *logs
	b *builtLogs
}

// prepare opens what cfg's logs write to; nothing changes until commit.
func (l *logs) prepare(cfg configs.Log) (*logChange, error) {
	b, err := l.build(cfg)
	if err != nil {
		return nil, err
	}
	return &logChange{l: l, b: b}, nil
}

// commit makes every logger write as the new settings say, and closes the
// files only the old ones wrote to (a moment later: a line being written
// finishes first).
func (c *logChange) commit() {
	l := c.l
	l.level.SetLevel(c.b.level)
	l.main.Store(&c.b.main)
	l.acc.Store(&c.b.access)
	l.mu.Lock()
	old := l.files
	l.files = c.b.files
	l.mu.Unlock()
	if len(old) > 0 {
		time.AfterFunc(time.Second, func() {
			for _, f := range old {
				_ = f.Sync()
				_ = f.Close()
			}
		})
	}
}

// abort closes the files prepare opened.
func (c *logChange) abort() {
	for _, f := range c.b.files {
		f.Close()
	}
}

// close flushes the loggers and closes the log files.
func (l *logs) close() error {
	for _, lg := range []*zap.Logger{l.logger, l.access} {
		if lg != nil {
			_ = lg.Sync() // a terminal's Sync fails with EINVAL; files sync below
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, f := range l.files {
		errs = append(errs, f.Sync(), f.Close())
	}
	l.files = nil
	return errors.Join(errs...)
}

// swapCore is a zapcore.Core that writes through the core cur points to,
// with the fields loggers added to it (With) on top: a reload swaps the
// core, and every logger made from a swapCore follows.
type swapCore struct {
	cur    *atomic.Pointer[zapcore.Core]
	fields []zapcore.Field
}

func (c *swapCore) core() zapcore.Core { return *c.cur.Load() }

func (c *swapCore) Enabled(l zapcore.Level) bool { return c.core().Enabled(l) }

func (c *swapCore) With(fields []zapcore.Field) zapcore.Core {
	return &swapCore{cur: c.cur, fields: append(slices.Clip(c.fields), fields...)}
}

func (c *swapCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *swapCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	core := c.core()
	if len(c.fields) > 0 {
		core = core.With(c.fields)
	}
	return core.Write(e, fields)
}

func (c *swapCore) Sync() error { return c.core().Sync() }
