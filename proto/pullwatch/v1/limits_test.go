package pullwatchv1

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in    string
		limit int
		want  string
	}{
		{"ok", 10, "ok"},
		{"bad\xffbyte", 100, "bad\uFFFDbyte"},
		{strings.Repeat("a", 20), 10, strings.Repeat("a", 7) + "…"},
		{"ééééé", 6, "é…"}, // never cut inside a character
		{"abcdef", 2, "ab"},
	} {
		got := Clip(tc.in, tc.limit)
		if got != tc.want {
			t.Errorf("Clip(%q, %d) = %q, want %q", tc.in, tc.limit, got, tc.want)
		}
		if !Fits(got, tc.limit) {
			t.Errorf("Clip(%q, %d) = %q does not fit", tc.in, tc.limit, got)
		}
	}
}

func FuzzClip(f *testing.F) {
	f.Add("status \xff line", 16)
	f.Add(strings.Repeat("é", 100), 7)
	f.Fuzz(func(t *testing.T, s string, limit int) {
		if limit < 0 || limit > 1<<16 {
			return
		}
		got := Clip(s, limit)
		if len(got) > limit || !utf8.ValidString(got) {
			t.Fatalf("Clip(%q, %d) = %q: %d bytes, valid %v", s, limit, got, len(got), utf8.ValidString(got))
		}
		if Fits(s, limit) && got != s {
			t.Fatalf("Clip changed a string that fits: %q → %q", s, got)
		}
	})
}
