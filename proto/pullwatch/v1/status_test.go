package pullwatchv1

import (
	"encoding/json"
	"testing"
)

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

func TestStatusText(t *testing.T) {
	type doc struct {
		Status ImageStatus  `json:"status"`
		Role   EndpointRole `json:"role"`
	}
	for _, s := range Statuses() {
		b, err := json.Marshal(doc{s, EndpointRole_ENDPOINT_ROLE_MIRROR})
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"status":"` + s.Word() + `","role":"mirror"}`; string(b) != want {
			t.Errorf("json = %s, want %s", b, want)
		}
		var back doc
		if err := json.Unmarshal(b, &back); err != nil || back.Status != s || back.Role != EndpointRole_ENDPOINT_ROLE_MIRROR {
			t.Errorf("round trip of %s: %+v, %v", b, back, err)
		}
	}
	if b, err := json.Marshal(doc{}); err != nil || string(b) != `{"status":"","role":""}` {
		t.Errorf("unspecified: %s, %v", b, err)
	}
	if _, err := json.Marshal(doc{Status: 42}); err == nil {
		t.Error("an unknown status marshalled")
	}
	var d doc
	if err := json.Unmarshal([]byte(`{"status":"ok"}`), &d); err == nil {
		t.Error("an unknown word unmarshalled")
	}
}

func TestStatusWords(t *testing.T) {
	want := "available, absent, unauthorized, forbidden, rate_limited, unreachable, platform_missing, bad_image_format, unknown"
	if StatusWords() != want {
		t.Errorf("StatusWords() = %q", StatusWords())
	}
}

func TestRank(t *testing.T) {
	// Best to worst; every known status once.
	order := []ImageStatus{
		ImageStatus_IMAGE_STATUS_AVAILABLE, ImageStatus_IMAGE_STATUS_UNKNOWN, ImageStatus_IMAGE_STATUS_RATE_LIMITED,
		ImageStatus_IMAGE_STATUS_UNREACHABLE, ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT, ImageStatus_IMAGE_STATUS_PLATFORM_MISSING,
		ImageStatus_IMAGE_STATUS_UNAUTHORIZED, ImageStatus_IMAGE_STATUS_FORBIDDEN, ImageStatus_IMAGE_STATUS_ABSENT,
	}
	if len(order) != len(Statuses()) {
		t.Fatalf("order lists %d statuses, the vocabulary has %d", len(order), len(Statuses()))
	}
	for i := 1; i < len(order); i++ {
		if !order[i].Worse(order[i-1]) || order[i-1].Worse(order[i]) {
			t.Errorf("%s should rank worse than %s", order[i].Word(), order[i-1].Word())
		}
	}
	if ImageStatus(99).Rank() != ImageStatus_IMAGE_STATUS_UNKNOWN.Rank() || ImageStatus(-1).Rank() != ImageStatus_IMAGE_STATUS_UNKNOWN.Rank() {
		t.Error("an unknown enum value should rank with unknown")
	}
}

func TestStatedAndAnswered(t *testing.T) {
	stated := map[ImageStatus]bool{
		ImageStatus_IMAGE_STATUS_ABSENT: true, ImageStatus_IMAGE_STATUS_UNAUTHORIZED: true, ImageStatus_IMAGE_STATUS_FORBIDDEN: true,
		ImageStatus_IMAGE_STATUS_PLATFORM_MISSING: true, ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT: true,
	}
	for _, s := range Statuses() {
		if s.Stated() != stated[s] {
			t.Errorf("%s.Stated() = %v", s.Word(), s.Stated())
		}
		silent := s == ImageStatus_IMAGE_STATUS_UNREACHABLE || s == ImageStatus_IMAGE_STATUS_UNKNOWN
		if got := (&EndpointResult{Status: s}).Answered(); got == silent {
			t.Errorf("%s without an HTTP status: answered = %v", s.Word(), got)
		}
		if !(&EndpointResult{Status: s, HttpStatus: 502}).Answered() {
			t.Errorf("%s with an HTTP status not answered", s.Word())
		}
	}
	if Answered(ImageStatus_IMAGE_STATUS_UNSPECIFIED, 0) || Answered(ImageStatus(42), 0) {
		t.Error("an invalid status without an HTTP status counted as an answer")
	}
}

func TestCompatFamily(t *testing.T) {
	want := map[ImageStatus]string{
		ImageStatus_IMAGE_STATUS_AVAILABLE:        "available",
		ImageStatus_IMAGE_STATUS_ABSENT:           "absent",
		ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT: "bad_image_format",
		ImageStatus_IMAGE_STATUS_PLATFORM_MISSING: "bad_image_format",
		ImageStatus_IMAGE_STATUS_UNREACHABLE:      "registry_unavailable",
		ImageStatus_IMAGE_STATUS_UNAUTHORIZED:     "authentication_failure",
		ImageStatus_IMAGE_STATUS_FORBIDDEN:        "authorization_failure",
		ImageStatus_IMAGE_STATUS_RATE_LIMITED:     "unknown_error",
		ImageStatus_IMAGE_STATUS_UNKNOWN:          "unknown_error",
		ImageStatus_IMAGE_STATUS_UNSPECIFIED:      "unknown_error",
		ImageStatus(42):                           "unknown_error",
	}
	families := CompatFamilies()
	for st, w := range want {
		if got := families[st.CompatFamily()]; got != w {
			t.Errorf("%v maps to %s, want %s", st, got, w)
		}
	}
}

func TestWordDoesNotAllocate(t *testing.T) {
	s, r := ImageStatus_IMAGE_STATUS_RATE_LIMITED, EndpointRole_ENDPOINT_ROLE_MIRROR
	if n := testing.AllocsPerRun(100, func() { _, _ = s.Word(), r.Word() }); n != 0 {
		t.Errorf("Word allocates %v times", n)
	}
}
