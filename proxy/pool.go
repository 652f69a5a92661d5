package proxy

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/upstream"
)

// newPool builds the upstream pool of one reverse_proxy directive.
func newPool(rp *configs.ReverseProxy, secret []byte, logger *zap.Logger, m *upstream.Metrics) (*upstream.Pool, error) {
	cfg, err := poolConfig(rp, secret)
	if err != nil {
		return nil, err
	}
	pool, err := upstream.New(cfg, logger, m)
	if err != nil {
		return nil, fmt.Errorf("%s: reverse_proxy: %w", rp.Pos, err)
	}
	return pool, nil
}

// preparePool checks rp's settings for pool, the one of the reverse_proxy
// at its place in the configuration served, and returns the change that
// applies them in place (see upstream.Pool.Update), not applied yet.
func preparePool(pool *upstream.Pool, rp *configs.ReverseProxy, secret []byte) (*upstream.Change, error) {
	cfg, err := poolConfig(rp, secret)
	if err != nil {
		return nil, err
	}
	ch, err := pool.Prepare(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: reverse_proxy: %w", rp.Pos, err)
	}
	return ch, nil
}

// poolConfig is the upstream configuration of one reverse_proxy directive;
// its TLS files are read now.
func poolConfig(rp *configs.ReverseProxy, secret []byte) (upstream.Config, error) {
	backends := make([]string, len(rp.Upstreams))
	for i, u := range rp.Upstreams {
		backends[i] = u.Addr
	}
	upTLS, err := rp.TLS.Load() // errors at the files' places in the Roamfile
	if err != nil {
		return upstream.Config{}, err
	}
	unhealthy := make([]upstream.StatusMatch, len(rp.UnhealthyStatus))
	for i, sm := range rp.UnhealthyStatus {
		unhealthy[i] = upstream.StatusMatch{Code: sm.Code, Class: sm.Class}
	}
	return upstream.Config{
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
	}, nil
}

var lbPolicies = map[configs.LBPolicy]upstream.Policy{
	configs.LBRoundRobin: upstream.RoundRobin,
	configs.LBLeastConn:  upstream.LeastConn,
	configs.LBRandom:     upstream.Random,
	configs.LBFirst:      upstream.First,
	configs.LBCookie:     upstream.Cookie,
	configs.LBHeader:     upstream.Header,
}
