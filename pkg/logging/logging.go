// Package logging builds the slog logger both binaries use, and holds
// their logging conventions:
//
//   - The logger is passed in: as a parameter or field, or in the context
//     (NewContext, FromContext) for code that has a context and no logger
//     of its own. Nothing sets slog's default logger.
//   - An error is logged under the key ErrKey ("err"), in both binaries and
//     in the bridges from other libraries' loggers (client-go's klog, see
//     RouteKlog; containerd's logrus, in the agent).
package logging

import (
	"context"
	"io"
	"log/slog"

	"k8s.io/klog/v2"
)

// ErrKey is the attribute key of an error in every log line. It is also
// the key klog's slog bridge (go-logr) uses for the error of ErrorS.
const ErrKey = "err"

// New returns a logger writing text (logfmt-like) or json at level to w.
func New(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h)
}

// RouteKlog sends what client-go logs (through klog) to log, tagged
// component=client-go, so the log format and level hold for every line.
// klog's logger is process-wide: call it once, from main's wiring.
func RouteKlog(log *slog.Logger) {
	klog.SetSlogLogger(log.With("component", "client-go"))
}

type contextKey struct{}

// NewContext returns ctx carrying log, for FromContext.
func NewContext(ctx context.Context, log *slog.Logger) context.Context {
	return context.WithValue(ctx, contextKey{}, log)
}

// FromContext returns the logger NewContext put in ctx, or slog's default
// logger (stderr, text) when there is none, as in tests.
func FromContext(ctx context.Context) *slog.Logger {
	if log, ok := ctx.Value(contextKey{}).(*slog.Logger); ok {
		return log
	}
	return slog.Default()
}
