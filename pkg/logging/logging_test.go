package logging

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

func TestNewLeavesDefault(t *testing.T) {
	before := slog.Default()
	var buf bytes.Buffer
	log := New(&buf, slog.LevelInfo, "json")
	if slog.Default() != before {
		t.Fatal("New changed slog's default logger")
	}
	log.Debug("hidden")
	log.Error("failed", ErrKey, errors.New("boom"))
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `"err":"boom"`) {
		t.Fatalf("log output %q", got)
	}
}

func TestContext(t *testing.T) {
	log := New(&bytes.Buffer{}, slog.LevelInfo, "text")
	if got := FromContext(NewContext(context.Background(), log)); got != log {
		t.Errorf("FromContext returned %p, want %p", got, log)
	}
	if got := FromContext(context.Background()); got != slog.Default() {
		t.Errorf("FromContext without a logger returned %p, want the default", got)
	}
}

func TestRouteKlogErrKey(t *testing.T) {
	var buf bytes.Buffer
	RouteKlog(New(&buf, slog.LevelInfo, "text"))
	defer klog.ClearLogger()
	klog.ErrorS(errors.New("boom"), "watch failed")
	if got := buf.String(); !strings.Contains(got, "component=client-go") || !strings.Contains(got, ErrKey+"=boom") {
		t.Fatalf("klog line %q: want component=client-go and %s=boom", got, ErrKey)
	}
}

func TestOnce(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var o Once
	for range 3 {
		o.Log(context.Background(), log, "a", slog.LevelInfo, "refused", "reason", "a")
	}
	o.Log(context.Background(), log, "b", slog.LevelInfo, "refused", "reason", "b")
	if n := strings.Count(buf.String(), "refused"); n != 2 {
		t.Errorf("%d lines for two keys, want 2:\n%s", n, buf.String())
	}
}
