package fidelity_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/runtimes"
)

// The markers around the matrix in docs/node-path.md.
const (
	docsBegin = "<!-- fidelity matrix: written by e2e/fidelity (TestFidelity); do not edit by hand -->"
	docsEnd   = "<!-- end of fidelity matrix -->"
)

// writeDocs puts the matrix between the markers of docs/node-path.md
// (appending them when missing): one line per case and image, one column
// per runtime with the runtime's verdict and whether the agent's agreed.
func writeDocs(rows []row, rts []runtimes.Containerd, cases []fcase) error {
	if os.Getenv("PULLWATCH_FIDELITY_CASES") != "" || os.Getenv("PULLWATCH_FIDELITY_RUNTIMES") != "" {
		return nil // a partial run is no evidence
	}
	root, err := checkout.Root()
	if err != nil {
		return err
	}
	path := filepath.Join(root, "docs", "node-path.md")
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	type key struct{ cse, image string }
	cells := map[key]map[string]row{}
	agree := 0
	for _, r := range rows {
		k := key{r.cse, r.image}
		if cells[k] == nil {
			cells[k] = map[string]row{}
		}
		cells[k][r.runtime] = r
		if r.agree() {
			agree++
		}
	}
	// The cases' order, each case's images in its pulls' order.
	var order []key
	for _, c := range cases {
		for _, p := range c.pulls {
			if k := (key{c.name, p.front + "/" + p.image}); cells[k] != nil {
				order = append(order, k)
			}
		}
	}
	var b strings.Builder
	b.WriteString(docsBegin + "\n\n")
	fmt.Fprintf(&b, "Run %s: %d of %d verdicts agree", time.Now().UTC().Format("2006-01-02"), agree, len(rows))
	if agree == len(rows) {
		b.WriteString(" (100 %)")
	}
	b.WriteString(". Each cell is what `crictl pull` got through that runtime; ✓ when `pullwatch-agent check` said the same " +
		"(status and, for `unreachable`, its kind: `tls`, `refused`, `timeout`, `server`), else ✗ and the agent's word. " +
		"Registries are on a non-loopback address unless the image's front is `lo`, `lo-plain` or `token` (the node's 127.0.0.1). `mtls` wants a client certificate, `gate` a header, `token` a bearer token.\n\n")
	b.WriteString("| case | image |")
	for _, rt := range rts {
		b.WriteString(" " + rt.Name + " |")
	}
	b.WriteString("\n|---|---|")
	for range rts {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, k := range order {
		fmt.Fprintf(&b, "| %s | `%s` |", k.cse, k.image)
		for _, rt := range rts {
			r, ok := cells[k][rt.Name]
			switch {
			case !ok:
				b.WriteString(" — |")
			case r.agree():
				fmt.Fprintf(&b, " %s ✓ |", r.runtimeV.class)
			default:
				fmt.Fprintf(&b, " %s ✗ agent: %s |", r.runtimeV.class, r.agentV.class)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n" + docsEnd)
	text := string(old)
	if i, j := strings.Index(text, docsBegin), strings.Index(text, docsEnd); i >= 0 && j > i {
		text = text[:i] + b.String() + text[j+len(docsEnd):]
	} else {
		text = strings.TrimRight(text, "\n") + "\n\n## The differential matrix\n\n" + b.String() + "\n"
	}
	return os.WriteFile(path, []byte(text), 0o644)
}
