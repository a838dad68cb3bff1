package main

import (
	"bytes"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })
	version = "v0.3.1"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out bytes.Buffer
		if !versionCommand(args, &out) {
			t.Fatalf("%v: not taken for the version command", args)
		}
		if got, want := out.String(), "pullwatch-aggregator v0.3.1\n"; got != want {
			t.Errorf("%v printed %q, want %q (the agent's format)", args, got, want)
		}
	}
	for _, args := range [][]string{nil, {"--grpc-listen=:1"}, {"version", "extra"}} {
		var out bytes.Buffer
		if versionCommand(args, &out) || out.Len() > 0 {
			t.Errorf("%v: taken for the version command", args)
		}
	}
}
