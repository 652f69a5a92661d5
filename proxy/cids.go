package proxy

import (
	"encoding/hex"
	"fmt"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy/quiclb"
)

// CIDConfig returns the QUIC-LB configuration of a Roamfile's quic_lb.
func CIDConfig(lb *configs.QUICLB) quiclb.Config {
	return quiclb.Config{ID: uint8(lb.ConfigID), ServerIDLen: len(lb.ServerID), NonceLen: lb.NonceLen, Key: lb.Key}
}

// newCIDGenerator returns the generator of every server connection ID of
// every transport: routable to this instance by QUIC-LB with quic_lb,
// unroutable without, and carrying the process generation either way.
func newCIDGenerator(lb *configs.QUICLB, generation int, logger *zap.Logger) (*quiclb.Generator, error) {
	if lb == nil {
		g, err := quiclb.NewGenerator(nil, nil, generation)
		if err != nil {
			return nil, fmt.Errorf("proxy: connection IDs: %w", err)
		}
		logger.Debug("connection ids unroutable (no quic_lb)", zap.Int("generation", generation))
		return g, nil
	}
	codec, err := quiclb.NewCodec(CIDConfig(lb))
	if err != nil {
		return nil, fmt.Errorf("proxy: %s: quic_lb: %w", lb.Pos, err)
	}
	g, err := quiclb.NewGenerator(codec, lb.ServerID, generation)
	if err != nil {
		return nil, fmt.Errorf("proxy: %s: quic_lb: %w", lb.Pos, err)
	}
	logger.Info("connection ids routable (quic_lb)", zap.Int("config_id", lb.ConfigID), zap.String("server_id", hex.EncodeToString(lb.ServerID)),
		zap.String("algorithm", codec.Config().Algorithm()), zap.Int("length", g.ConnectionIDLen()), zap.Int("generation", generation))
	return g, nil
}
