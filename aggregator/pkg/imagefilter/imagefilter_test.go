package imagefilter

import (
	"testing"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

type namespaces map[string]map[string]string

func (n namespaces) NamespaceLabels(name string) (map[string]string, bool) {
	l, ok := n[name]
	return l, ok
}

func TestImage(t *testing.T) {
	f, err := New(Split(`^quay\.io/~:latest$`), Split("example~docker.io/library/"), "")
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]bool{
		"docker.io/library/nginx:1.27":   true,
		"docker.io/library/nginx:latest": false, // ignored wins
		"quay.io/example/app:v1":         false,
		"reg.example:5000/app:v1":        true,
		"ghcr.io/other/app:v1":           false, // not allowed
	} {
		if got := f.Image(ref); got != want {
			t.Errorf("Image(%q) = %v, want %v", ref, got, want)
		}
	}
	var none *Filter
	if !none.Image("anything") || !none.Namespace("any") || none.Active() {
		t.Error("a nil filter must watch everything")
	}
}

func TestReportsNamespaces(t *testing.T) {
	f, err := New(nil, nil, "team=a")
	if err != nil {
		t.Fatal(err)
	}
	im := &pb.ImageReport{Image: "reg/app:v1", Containers: []*pb.ContainerRef{{Namespace: "a"}, {Namespace: "b"}}}
	unused := &pb.ImageReport{Image: "reg/cached:v1"}
	if got := f.Reports(nodeimage.All(im, unused)); len(got) != 0 {
		t.Errorf("before namespaces are known: %v, want nothing", got)
	}
	f.SetNamespaces(namespaces{"a": {"team": "a"}, "b": {"team": "b"}})
	got := f.Reports(nodeimage.All(im, unused))
	if len(got) != 1 || len(got[0].GetContainers()) != 1 || got[0].GetContainers()[0].Namespace != "a" {
		t.Fatalf("Reports = %v, want app with namespace a's container only", got)
	}
	if len(im.GetContainers()) != 2 {
		t.Error("the store's report was modified")
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := New([]string{"("}, nil, ""); err == nil {
		t.Error("bad regexp accepted")
	}
	if _, err := New(nil, nil, "a b c"); err == nil {
		t.Error("bad selector accepted")
	}
}
