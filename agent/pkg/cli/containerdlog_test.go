package cli

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestContainerdLogsUseErrKey(t *testing.T) {
	var buf bytes.Buffer
	h := slogHook{slog.New(slog.NewTextHandler(&buf, nil))}
	e := logrus.NewEntry(logrus.New()).WithError(errors.New("tls: bad certificate")).WithField("host", "mirror.test")
	e.Level, e.Message = logrus.WarnLevel, "falling back to HTTP"
	if err := h.Fire(e); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	for _, want := range []string{`level=WARN`, `msg="falling back to HTTP"`, `err="tls: bad certificate"`, `host=mirror.test`} {
		if !strings.Contains(got, want) {
			t.Errorf("log line %q lacks %s", got, want)
		}
	}
}
