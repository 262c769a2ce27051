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
