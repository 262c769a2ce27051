package acmetls

import (
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// slogFromZap bridges acmez's slog logging into the Manager's zap logger.
func slogFromZap(l *zap.Logger) *slog.Logger {
	return slog.New(zapslog.NewHandler(l.Core()))
}

func zapName(name string) zap.Field   { return zap.String("server_name", name) }
func zapKeyType(kt KeyType) zap.Field { return zap.String("key_type", string(kt)) }
func zapErr(err error) zap.Field      { return zap.Error(err) }
func zapString(k, v string) zap.Field { return zap.String(k, v) }
