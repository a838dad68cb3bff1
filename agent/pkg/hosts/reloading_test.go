package hosts

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

// TestReloading: a configuration that does not load fails every image
// with its error until a later attempt (at most every Retry) loads it.
func TestReloading(t *testing.T) {
	now := time.Unix(0, 0)
	loads := 0
	broken := true
	r := &Reloading{Retry: time.Minute, Now: func() time.Time { return now }, Load: func(context.Context) (Resolver, error) {
		loads++
		if broken {
			return nil, errors.New("containerd config /etc/containerd/config.toml is not valid TOML (line 2, column 9)")
		}
		return Defaults{}, nil
	}}
	ref, err := imageref.Parse("registry.example/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if _, err := r.Endpoints(ctx, ref); err == nil || !strings.Contains(err.Error(), "config.toml is not valid TOML (line 2") {
			t.Fatalf("Endpoints: %v, want the load error", err)
		}
	}
	if loads != 1 {
		t.Errorf("%d loads within a minute, want 1", loads)
	}
	broken = false
	now = now.Add(time.Minute)
	eps, err := r.Endpoints(ctx, ref)
	if err != nil || len(eps) != 1 {
		t.Fatalf("after the file was fixed: %v %v", eps, err)
	}
	now = now.Add(time.Hour)
	if _, _ = r.Endpoints(ctx, ref); loads != 2 {
		t.Errorf("%d loads, want 2: a loaded configuration is kept", loads)
	}
}
