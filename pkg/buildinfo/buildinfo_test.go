package buildinfo

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	old := Revision
	t.Cleanup(func() { Revision = old })

	Revision = "0123456789abcdef0123456789abcdef01234567"
	got := Read("v0.3.1")
	want := Info{Version: "v0.3.1", Revision: Revision, GoVersion: runtime.Version()}
	if got != want {
		t.Errorf("Read = %+v, want %+v", got, want)
	}
	Revision = ""
	if got := Read(""); got.Version != "dev" || got.Revision == "" {
		t.Errorf("Read(\"\") = %+v, want version dev and a revision (%q at worst)", got, Unknown)
	}
}

func TestParseRelease(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Release
		ok   bool
	}{
		{"v0.3.1", Release{0, 3, 1}, true},
		{"1.2.3", Release{1, 2, 3}, true},
		{"v0.3.1-rc.1", Release{0, 3, 1}, true},
		{"v0.3.1-5-gdeadbee-dirty", Release{0, 3, 1}, true},
		{"v0.3.1+meta", Release{0, 3, 1}, true},
		{"dev", Release{}, false},
		{"", Release{}, false},
		{"deadbee", Release{}, false},
		{"v0.3", Release{}, false},
		{"v01.2.3", Release{}, false},
		{"v0.3.1x", Release{}, false},
		{"v99999999999.0.0", Release{}, false},
	} {
		got, ok := ParseRelease(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseRelease(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestSkew(t *testing.T) {
	for _, tt := range []struct {
		aggregator, agent string
		refused           bool
	}{
		{"v0.3.1", "v0.3.0", false},
		{"v0.3.1", "v0.2.9", false}, // one minor older
		{"v0.3.1", "v0.4.0", false}, // one minor newer: the DaemonSet rolled first
		{"v0.3.1", "v0.1.0", true},
		{"v0.3.1", "v0.5.2", true},
		{"v1.0.0", "v0.9.0", true}, // another major
		{"v0.0.4", "v0.1.0", false},
		{"v0.3.1-2-gabcdef0", "v0.5.0", true}, // a build after a release is that release
		{"dev", "v0.9.0", false},              // unchecked: no release on one side
		{"v0.3.1", "dev", false},
		{"v0.3.1", "", false},
	} {
		err := Skew(tt.aggregator, tt.agent)
		if (err != nil) != tt.refused {
			t.Errorf("Skew(%q, %q) = %v, refused want %v", tt.aggregator, tt.agent, err, tt.refused)
			continue
		}
		var se *SkewError
		if err != nil && (!errors.As(err, &se) || !strings.Contains(err.Error(), "docs/install.md#version-skew")) {
			t.Errorf("Skew(%q, %q) = %v: want a *SkewError naming the docs", tt.aggregator, tt.agent, err)
		}
	}
	err := Skew("v0.3.1", "v0.5.0")
	if want := "agent v0.5.0 is outside the version skew aggregator v0.3.1 accepts: v0.2.x to v0.4.x"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Skew message = %v, want it to start with %q", err, want)
	}
}
