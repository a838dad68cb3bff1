// Package agentcheck runs `pullwatch-agent check` and reads what it says:
// Run is the one way the e2e tests and the cluster in a box run it, Report
// (report.go) the one declaration of its `-o json` output, and Expect
// checks an image of it against what a test wants.
package agentcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// Result is one run of `pullwatch-agent check`.
type Result struct {
	Report         Report // after Decode (or JSON)
	Stdout, Stderr string
	Code           int
}

// Run runs cmd (pullwatch-agent check ..., built by the caller: on the
// host, in a network namespace, with an environment of its own) and
// returns both streams and the exit code. The error says only that it
// could not run: a non-zero exit is the check's answer.
func Run(cmd *exec.Cmd) (Result, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		return r, fmt.Errorf("run %s: %w", strings.Join(cmd.Args, " "), err)
	}
	return r, nil
}

// Decode reads stdout as `check -o json` into r.Report.
func (r *Result) Decode() error {
	if err := json.Unmarshal([]byte(r.Stdout), &r.Report); err != nil {
		return fmt.Errorf("check -o json printed no JSON: %w", err)
	}
	return nil
}

// JSON decodes stdout as `check -o json`, failing t with both streams
// when it is not.
func (r *Result) JSON(t testing.TB) Report {
	t.Helper()
	if err := r.Decode(); err != nil {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, r.Stdout, r.Stderr)
	}
	return r.Report
}

// Dump is the agent's JSON and stderr, for failure messages.
func (r Result) Dump() string {
	return fmt.Sprintf("\n--- agent exit %d, JSON:\n%s\n--- agent stderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// Statuses maps each image of the report to its status.
func (rep Report) Statuses() map[string]string {
	m := map[string]string{}
	for _, im := range rep.Images {
		m[im.Image] = im.Status
	}
	return m
}

// AllAvailable reports whether every image of the report is available.
func (rep Report) AllAvailable() bool {
	for _, im := range rep.Images {
		if im.Status != "available" {
			return false
		}
	}
	return true
}

// Image finds ref in the report (failing the test with the report if absent).
func (r Result) Image(t testing.TB, ref string) Image {
	t.Helper()
	for _, im := range r.Report.Images {
		if im.Image == ref {
			return im
		}
	}
	t.Fatalf("%s is not in the report%s", ref, r.Dump())
	return Image{}
}

// Want is what a test expects of one image; zero fields of an endpoint
// are not checked, except Skipped.
type Want struct {
	Status    string
	Degraded  bool
	Drifted   bool
	ReasonHas []string
	// Endpoints in the runtime's order; nil: not checked.
	Endpoints []WantEndpoint
}

// WantEndpoint is what a test expects of one endpoint of an image.
type WantEndpoint struct {
	URL       string // full URL, or a suffix starting with "://"
	Role      string
	Status    string
	Skipped   bool
	HTTP      int
	ReasonHas string
}

// Expect logs what the agent said about ref and checks it against w.
func (r Result) Expect(t testing.TB, ref string, w Want) Image {
	t.Helper()
	im := r.Image(t, ref)
	t.Logf("%s: status=%s degraded=%v drifted=%v digest=%s registry_digest=%s reason=%q",
		ref, im.Status, im.Degraded, im.Drifted, im.Digest, im.RegistryDigest, im.Reason)
	for i, ep := range im.Endpoints {
		t.Logf("  endpoint %d: %s role=%s status=%s http=%d skipped=%v latency=%.3fs reason=%q",
			i, ep.URL, ep.Role, ep.Status, ep.HTTPStatus, ep.Skipped, ep.LatencySeconds, ep.Reason)
	}
	if w.Status == "" {
		return im
	}
	var bad []string
	if im.Status != w.Status {
		bad = append(bad, fmt.Sprintf("status %q, want %q", im.Status, w.Status))
	}
	if im.Degraded != w.Degraded {
		bad = append(bad, fmt.Sprintf("degraded %v, want %v", im.Degraded, w.Degraded))
	}
	if im.Drifted != w.Drifted {
		bad = append(bad, fmt.Sprintf("drifted %v, want %v", im.Drifted, w.Drifted))
	}
	for _, s := range w.ReasonHas {
		if !strings.Contains(im.Reason, s) {
			bad = append(bad, fmt.Sprintf("reason %q lacks %q", im.Reason, s))
		}
	}
	if w.Endpoints != nil {
		if len(im.Endpoints) != len(w.Endpoints) {
			bad = append(bad, fmt.Sprintf("%d endpoints, want %d", len(im.Endpoints), len(w.Endpoints)))
		} else {
			for i, we := range w.Endpoints {
				bad = append(bad, checkEndpoint(i, im.Endpoints[i], we)...)
			}
		}
	}
	if len(bad) > 0 {
		t.Errorf("%s:\n  %s%s", ref, strings.Join(bad, "\n  "), r.Dump())
	}
	return im
}

func checkEndpoint(i int, ep Endpoint, w WantEndpoint) []string {
	var bad []string
	f := func(format string, a ...any) {
		bad = append(bad, fmt.Sprintf("endpoint %d (%s): ", i, ep.URL)+fmt.Sprintf(format, a...))
	}
	switch {
	case w.URL == "":
	case strings.HasPrefix(w.URL, "://"):
		if !strings.HasSuffix(ep.URL, w.URL) {
			f("URL does not end in %s", w.URL)
		}
	case ep.URL != w.URL:
		f("URL, want %s", w.URL)
	}
	if w.Role != "" && ep.Role != w.Role {
		f("role %q, want %q", ep.Role, w.Role)
	}
	if w.Status != "" && ep.Status != w.Status {
		f("status %q, want %q", ep.Status, w.Status)
	}
	if ep.Skipped != w.Skipped {
		f("skipped %v, want %v", ep.Skipped, w.Skipped)
	}
	if w.HTTP != 0 && ep.HTTPStatus != w.HTTP {
		f("http_status %d, want %d", ep.HTTPStatus, w.HTTP)
	}
	if w.ReasonHas != "" && !strings.Contains(ep.Reason, w.ReasonHas) {
		f("reason %q lacks %q", ep.Reason, w.ReasonHas)
	}
	if !ep.Skipped && ep.Status != "" && ep.LatencySeconds <= 0 {
		f("latency %v for an endpoint that was asked", ep.LatencySeconds)
	}
	return bad
}
