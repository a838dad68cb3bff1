// Package logging builds the slog logger both binaries use.
package logging

import (
	"io"
	"log/slog"
)

// New returns a logger writing text (logfmt-like) or json at level to w,
// and makes it the default logger.
func New(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	l := slog.New(h)
	slog.SetDefault(l)
	return l
}
