package redisstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// go-redis logs through one process-wide logger (redis.SetLogger), to
// stderr unless told otherwise: each failed dial while Redis is down, for
// one. Storage logs and counts those errors itself, with the key and the
// operation, so go-redis's own lines go to the newest Storage's logger at
// debug level. This package is roamgate's only user of go-redis, so the
// global is its to set.
var (
	redisLogOnce sync.Once
	redisLogger  atomic.Pointer[zap.Logger]
)

// routeRedisLog sends go-redis's log lines to logger from now on.
func routeRedisLog(logger *zap.Logger) {
	redisLogger.Store(logger.Named("go-redis"))
	redisLogOnce.Do(func() { redis.SetLogger(debugLog{}) })
}

// debugLog is go-redis's logger: debug lines of redisLogger.
type debugLog struct{}

func (debugLog) Printf(_ context.Context, format string, v ...any) {
	l := redisLogger.Load()
	if l == nil {
		return
	}
	if ce := l.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("message", strings.TrimSpace(fmt.Sprintf(format, v...))))
	}
}
