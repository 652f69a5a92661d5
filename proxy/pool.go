package proxy

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/upstream"
)

// newPool builds the upstream pool of one reverse_proxy directive.
func newPool(rp *configs.ReverseProxy, secret []byte, logger *zap.Logger, m *upstream.Metrics) (*upstream.Pool, error) {
	backends := make([]string, len(rp.Upstreams))
	for i, u := range rp.Upstreams {
		backends[i] = u.Addr
	}
	upTLS, err := rp.TLS.Load() // errors at the files' places in the Roamfile
	if err != nil {
		return nil, err
	}
	unhealthy := make([]upstream.StatusMatch, len(rp.UnhealthyStatus))
	for i, sm := range rp.UnhealthyStatus {
		unhealthy[i] = upstream.StatusMatch{Code: sm.Code, Class: sm.Class}
	}
	pool, err := upstream.New(upstream.Config{
		Backends:              backends,
		MaxConnsPerSession:    rp.MaxConnsPerSession,
		DialTimeout:           rp.DialTimeout,
		ResponseHeaderTimeout: rp.ResponseHeaderTimeout,
		KeepaliveIdle:         rp.KeepaliveIdle,
		TLS:                   upTLS,
		Policy:                lbPolicies[rp.LBPolicy],
		PolicyKey:             rp.LBKey,
		CookieSecret:          secret,
		TryDuration:           rp.LBTryDuration,
		TryInterval:           rp.LBTryInterval,
		Health: upstream.ActiveHealth{
			URI:         rp.HealthURI,
			Interval:    rp.HealthInterval,
			Timeout:     rp.HealthTimeout,
			Status:      rp.HealthStatus,
			StatusClass: rp.HealthStatusClass,
		},
		Passive: upstream.PassiveHealth{
			FailDuration:    rp.FailDuration,
			MaxFails:        rp.MaxFails,
			UnhealthyStatus: unhealthy,
		},
	}, logger, m)
	if err != nil {
		return nil, fmt.Errorf("%s: reverse_proxy: %w", rp.Pos, err)
	}
	return pool, nil
}

var lbPolicies = map[configs.LBPolicy]upstream.Policy{
	configs.LBRoundRobin: upstream.RoundRobin,
	configs.LBLeastConn:  upstream.LeastConn,
	configs.LBRandom:     upstream.Random,
	configs.LBFirst:      upstream.First,
	configs.LBCookie:     upstream.Cookie,
	configs.LBHeader:     upstream.Header,
}
