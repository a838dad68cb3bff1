// Package imagefilter is what the aggregator watches: images ignored or
// allowed by regular expression, and namespaces selected by label, as
// k8s-image-availability-exporter's --ignored-images, --allowed-images
// and --namespace-label do. The analyzer applies it to the nodes' results
// before anything else reads them, so metrics, alerts (which read the
// metrics) and the status page all see the same images.
package imagefilter

import (
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
)

// Namespaces answers a namespace's labels (kubewatch.Watcher).
type Namespaces interface {
	NamespaceLabels(name string) (map[string]string, bool)
}

// Filter decides which images and namespaces are watched. The zero
// Filter, and a nil *Filter, watch everything.
type Filter struct {
	ignored, allowed []*regexp.Regexp
	selector         labels.Selector // nil: every namespace
	namespaces       Namespaces
}

// Split splits a flag value into its regular expressions: they are
// separated by "~" as in k8s-image-availability-exporter (a regular
// expression often contains commas); empty parts are dropped.
func Split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, "~") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// New compiles a Filter. An image (its normalized reference, e.g.
// docker.io/library/nginx:1.27) is watched when it matches none of ignored
// and, if allowed is not empty, at least one of allowed (unanchored, as Go's
// MatchString). namespaceSelector is a label selector ("team",
// "team=payments", "env in (prod,staging)"); empty selects every namespace.
func New(ignored, allowed []string, namespaceSelector string) (*Filter, error) {
	f := &Filter{}
	for _, list := range []struct {
		flag string
		in   []string
		out  *[]*regexp.Regexp
	}{{"ignored-images", ignored, &f.ignored}, {"allowed-images", allowed, &f.allowed}} {
		for _, s := range list.in {
			re, err := regexp.Compile(s)
			if err != nil {
				return nil, fmt.Errorf("--%s %q: %w", list.flag, s, err)
			}
			*list.out = append(*list.out, re)
		}
	}
	if namespaceSelector != "" {
		sel, err := labels.Parse(namespaceSelector)
		if err != nil {
			return nil, fmt.Errorf("--namespace-label %q: %w", namespaceSelector, err)
		}
		f.selector = sel
	}
	return f, nil
}

// SelectsNamespaces reports whether a namespace selector is set (and so a
// namespace informer is needed).
func (f *Filter) SelectsNamespaces() bool { return f != nil && f.selector != nil }

// SetNamespaces gives the filter its source of namespace labels. Until it
// is set, or while a namespace is unknown to it, no namespace is selected.
func (f *Filter) SetNamespaces(ns Namespaces) { f.namespaces = ns }

// Active reports whether the filter drops anything at all.
func (f *Filter) Active() bool {
	return f != nil && (len(f.ignored) > 0 || len(f.allowed) > 0 || f.selector != nil)
}

// Image reports whether the image (normalized reference) is watched.
func (f *Filter) Image(ref string) bool {
	if f == nil {
		return true
	}
	for _, re := range f.ignored {
		if re.MatchString(ref) {
			return false
		}
	}
	if len(f.allowed) == 0 {
		return true
	}
	for _, re := range f.allowed {
		if re.MatchString(ref) {
			return true
		}
	}
	return false
}

// Namespace reports whether the namespace is watched.
func (f *Filter) Namespace(name string) bool {
	if f == nil || f.selector == nil {
		return true
	}
	if f.namespaces == nil {
		return false
	}
	l, ok := f.namespaces.NamespaceLabels(name)
	return ok && f.selector.Matches(labels.Set(l))
}

// Report returns the image report as watched: false when the image is
// not watched; with a namespace selector, only the containers of selected
// namespaces (a new slice when some are dropped), and false when none is
// left, so an image is watched when a selected namespace uses it. The
// report itself is never modified (the state store shares it).
func (f *Filter) Report(im nodeimage.Image) (nodeimage.Image, bool) {
	if !f.Image(im.GetImage()) {
		return nodeimage.Image{}, false
	}
	if f.selector == nil {
		return im, true
	}
	kept := make([]nodeimage.Container, 0, len(im.GetContainers()))
	for _, c := range im.GetContainers() {
		if f.Namespace(c.Namespace) {
			kept = append(kept, c)
		}
	}
	switch len(kept) {
	case 0:
		return nodeimage.Image{}, false
	case len(im.GetContainers()):
		return im, true
	}
	im.Containers = kept
	return im, true
}

// Reports filters a node's reports (see Report). It returns images
// itself when nothing is dropped.
func (f *Filter) Reports(images []nodeimage.Image) []nodeimage.Image {
	if !f.Active() {
		return images
	}
	out := make([]nodeimage.Image, 0, len(images))
	for _, im := range images {
		if kept, ok := f.Report(im); ok {
			out = append(out, kept)
		}
	}
	return out
}
