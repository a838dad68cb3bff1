package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// maxReason keeps the table readable; the JSON has the whole reason.
const maxReason = 80

// WriteTable prints the node's images as an aligned table: failing images
// first, then by reference.
func (n Node) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "node %s  runtime %s %s  checked %s\n\n", n.Node, n.Runtime.Name, n.Runtime.Version, n.ObservedAt.UTC().Format("2006-01-02 15:04:05Z"))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tSTATUS\tIN USE\tPODS\tENDPOINTS\tREASON")
	failing, ok := 0, 0
	for _, pass := range []bool{false, true} {
		for _, im := range n.Images {
			if im.Available() != pass {
				continue
			}
			if pass {
				ok++
			} else {
				failing++
			}
			status := im.Status.Word()
			if im.Degraded {
				status += " (degraded)"
			}
			if im.Drifted {
				status += " (drifted)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", im.Image, status, yesNo(im.InUse), pods(im), endpoints(im), shorten(im.Reason))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d images: %d available, %d not available\n", len(n.Images), ok, failing)
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func pods(im Image) string {
	if len(im.Pods) == 0 {
		return "-"
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range im.Pods {
		k := p.Namespace + "/" + p.Pod
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	if len(out) > 2 {
		return fmt.Sprintf("%s +%d", strings.Join(out[:2], ","), len(out)-2)
	}
	return strings.Join(out, ",")
}

func endpoints(im Image) string {
	if len(im.Endpoints) == 0 {
		return "-"
	}
	var out []string
	for _, e := range im.Endpoints {
		out = append(out, fmt.Sprintf("%s %s %.0fms", e.Role.Word(), e.Status.Word(), e.LatencySeconds*1000))
	}
	return strings.Join(out, "; ")
}

func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxReason {
		return s[:maxReason-1] + "…"
	}
	return s
}
