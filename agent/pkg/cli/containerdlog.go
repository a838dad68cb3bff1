package cli

import (
	"context"
	"io"
	"log/slog"

	clog "github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// routeContainerdLogs sends what containerd's libraries log (hosts.toml
// warnings, HTTPS fallback notes: they log through logrus) into the
// agent's slog logger, so --log-format and --log-level hold for every line.
// logrus's error key ("error", WithError) becomes logging.ErrKey.
func routeContainerdLogs(log *slog.Logger) {
	l := clog.L.Logger
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.TraceLevel) // the slog handler filters
	l.ReplaceHooks(logrus.LevelHooks{})
	l.AddHook(slogHook{log.With("component", "containerd")})
}

type slogHook struct{ log *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	level := slog.LevelDebug
	switch {
	case e.Level <= logrus.ErrorLevel:
		level = slog.LevelError
	case e.Level == logrus.WarnLevel:
		level = slog.LevelWarn
	case e.Level == logrus.InfoLevel:
		level = slog.LevelInfo
	}
	attrs := make([]slog.Attr, 0, len(e.Data))
	for k, v := range e.Data {
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		if k == logrus.ErrorKey {
			k = logging.ErrKey
		}
		attrs = append(attrs, slog.Any(k, v))
	}
	h.log.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}
