package pullwatchv1

import "testing"

func TestStatusWordsRoundTrip(t *testing.T) {
	want := []string{"available", "absent", "unauthorized", "forbidden", "rate_limited", "unreachable", "platform_missing", "bad_image_format", "unknown"}
	got := Statuses()
	if len(got) != len(want) || len(ImageStatus_name) != len(want)+1 {
		t.Fatalf("status list out of date with the enum: %v", got)
	}
	for i, s := range got {
		if s.Word() != want[i] {
			t.Errorf("Word(%v) = %q, want %q", s, s.Word(), want[i])
		}
		back, err := ParseStatus(want[i])
		if err != nil || back != s {
			t.Errorf("ParseStatus(%q) = %v, %v", want[i], back, err)
		}
	}
}

func TestInvalidStatuses(t *testing.T) {
	for _, w := range []string{"", "unspecified", "AVAILABLE", "ok"} {
		if _, err := ParseStatus(w); err == nil {
			t.Errorf("ParseStatus(%q) succeeded", w)
		}
	}
	if ImageStatus(42).Valid() || ImageStatus(42).Word() != "" || ImageStatus_IMAGE_STATUS_UNSPECIFIED.Valid() {
		t.Error("unknown or unspecified status reported valid")
	}
}

func TestRoles(t *testing.T) {
	for _, w := range []string{"upstream", "mirror"} {
		r, err := ParseRole(w)
		if err != nil || r.Word() != w {
			t.Errorf("role %q: %v %v", w, r, err)
		}
	}
	if _, err := ParseRole("primary"); err == nil {
		t.Error("ParseRole(primary) succeeded")
	}
}
