package main

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/roamgate/roamgate/configs"
)

// newLogger builds the process logger from the Roamfile's log block, writing
// to w.
func newLogger(cfg configs.Log, w io.Writer) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if cfg.Level != "" {
		var err error
		if level, err = zapcore.ParseLevel(cfg.Level); err != nil {
			return nil, fmt.Errorf("log level: %w", err)
		}
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "ts"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if cfg.Format == "json" {
		enc = zapcore.NewJSONEncoder(ec)
	} else {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	sink := zapcore.Lock(zapcore.AddSync(w))
	return zap.New(zapcore.NewCore(enc, sink, level), zap.ErrorOutput(sink)), nil
}
