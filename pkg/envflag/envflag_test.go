package envflag

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

func newSet() (*Set, *time.Duration, *string, *int) {
	s := New("t", "t [flags]", "Does things.")
	d := time.Minute
	s.Var((*PositiveDuration)(&d), "interval", "how often (`duration`)")
	name := "host"
	s.StringVar(&name, "node-name", name, "node `name`")
	s.Env("node-name", "NODE_NAME")
	n := 4
	s.Var(&IntRange{Value: &n, Min: 1, Max: 64}, "workers", "`count`")
	return s, &d, &name, &n
}

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		interval time.Duration
		node     string
		workers  int
		err      string
	}{
		{"defaults", nil, nil, time.Minute, "host", 4, ""},
		{"env", nil, map[string]string{"PULLWATCH_INTERVAL": "30s", "NODE_NAME": "n1", "PULLWATCH_WORKERS": "8"}, 30 * time.Second, "n1", 8, ""},
		{"flag wins", []string{"--interval=5s"}, map[string]string{"PULLWATCH_INTERVAL": "30s"}, 5 * time.Second, "host", 4, ""},
		{"bad env", nil, map[string]string{"PULLWATCH_INTERVAL": "soon"}, 0, "", 0, `invalid value "soon" for PULLWATCH_INTERVAL (--interval): want a positive duration`},
		{"bad flag", []string{"--interval=-1s"}, nil, 0, "", 0, "want a positive duration"},
		{"out of range", []string{"--workers=0"}, nil, 0, "", 0, "from 1 to 64"},
		{"stray arg", []string{"extra"}, nil, 0, "", 0, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, d, name, n := newSet()
			err := s.Parse(tt.args, func(k string) string { return tt.env[k] }, &bytes.Buffer{})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || *d != tt.interval || *name != tt.node || *n != tt.workers {
				t.Fatalf("got %v %q %d, err %v", *d, *name, *n, err)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	s, _, _, _ := newSet()
	var out bytes.Buffer
	if err := s.Parse([]string{"--help"}, func(string) string { return "" }, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"Usage: t [flags]", "Does things.", "--interval duration", "(env PULLWATCH_INTERVAL, default 1m0s)", "(env NODE_NAME, default host)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestKeyValues(t *testing.T) {
	var m map[string]string
	kv := &KeyValues{Value: &m}
	if err := kv.Set("topology.kubernetes.io/zone=eu-1a, team = infra"); err != nil || m["topology.kubernetes.io/zone"] != "eu-1a" || m["team"] != "infra" {
		t.Fatalf("Set: %v %v", m, err)
	}
	if kv.String() != "team=infra,topology.kubernetes.io/zone=eu-1a" {
		t.Errorf("String = %q", kv.String())
	}
	if err := kv.Set("novalue"); err == nil || !strings.Contains(err.Error(), "key=value") {
		t.Errorf("Set(novalue) = %v", err)
	}
}

func TestList(t *testing.T) {
	var l List
	if err := l.Set(" pullwatch-metrics, ,other "); err != nil || len(l) != 2 || l[0] != "pullwatch-metrics" || l[1] != "other" {
		t.Fatalf("Set: %q %v", l, err)
	}
	if l.String() != "pullwatch-metrics,other" {
		t.Errorf("String = %q", l.String())
	}
	if err := l.Set(""); err != nil || len(l) != 0 {
		t.Errorf("Set(\"\") = %q %v", l, err)
	}
}

func TestFloatRange(t *testing.T) {
	var v float64
	r := &FloatRange{Value: &v, Min: 0.5, Max: 100}
	for _, good := range []string{"0.5", "20", " 7.25 ", "100"} {
		if err := r.Set(good); err != nil {
			t.Errorf("Set(%q): %v", good, err)
		}
	}
	if r.String() != "100" {
		t.Errorf("String() = %q", r.String())
	}
	for _, bad := range []string{"", "x", "0.1", "101", "NaN", "-1"} {
		if err := r.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}
