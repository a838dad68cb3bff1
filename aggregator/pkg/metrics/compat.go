package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
)

// The k8s-image-availability-exporter families, in its order. Each
// container gets one series in every family: 1 in the family of its
// current status (pullwatchv1.ImageStatus.CompatFamily), 0 in the others,
// as that exporter does.
var compatNames = pullwatchv1.CompatFamilies()

var compatLabels = []string{"namespace", "container", "image", "kind", "name"}

var compatDescs = func() []*prometheus.Desc {
	out := make([]*prometheus.Desc, len(compatNames))
	for i, name := range compatNames {
		out[i] = prometheus.NewDesc("k8s_image_availability_exporter_"+name, compatHelp(name), compatLabels, nil)
	}
	return out
}()

func compatHelp(name string) string {
	return "Compatibility with k8s-image-availability-exporter: 1 if the container's image is " + name + " on the worst of the live nodes running it, else 0. " +
		"Every container has a series in each of the 7 families. See docs/metrics.md for how pullwatch statuses map to these."
}

// legacyKinds are the workload kinds of k8s-image-availability-exporter
// before v0.7, whose families were k8s_image_availability_exporter_<kind>_<mode>
// with a label named after the kind (deployment="web") instead of kind and
// name. Containers of other kinds have no legacy series, as they had none.
var legacyKinds = []string{"deployment", "statefulset", "daemonset", "cronjob"}

// legacyDescs[kind][i] is the legacy family of kind for compatNames[i].
var legacyDescs = func() map[string][]*prometheus.Desc {
	out := map[string][]*prometheus.Desc{}
	for _, kind := range legacyKinds {
		for _, name := range compatNames {
			out[kind] = append(out[kind], prometheus.NewDesc("k8s_image_availability_exporter_"+kind+"_"+name, legacyHelp(kind, name),
				[]string{"namespace", kind, "container", "image"}, nil))
		}
	}
	return out
}()

func legacyHelp(kind, name string) string {
	return "Compatibility with k8s-image-availability-exporter before v0.7 (per-kind families): 1 if the " + kind + "'s container image is " + name +
		" on the worst of the live nodes running it, else 0. See docs/metrics.md."
}

// The values of Config.CompatSchema (and of --compat-metrics).
const (
	CompatCurrent = "current"
	CompatLegacy  = "legacy"
	CompatBoth    = "both"
	CompatOff     = "off"
)

// CompatSchemas lists the values of --compat-metrics.
func CompatSchemas() []string { return []string{CompatCurrent, CompatLegacy, CompatBoth, CompatOff} }

// compatKey is one container of one workload, as the labels say.
type compatKey struct {
	namespace, container, image, kind, name string
}

// collectCompat emits the compatibility families: per workload container
// and image, the worst status (ImageStatus.Rank) across the live nodes that
// run it. Containers the agent could not tie to a pod are left out, and
// with the API (Placement) those of pods not bound to the reporting node.
func collectCompat(ch chan<- prometheus.Metric, r *diagnose.Report, owners Owners, current, legacy bool) {
	worst := map[compatKey]pullwatchv1.ImageStatus{}
	place, _ := owners.(Placement)
	for i := range r.Nodes {
		n := &r.Nodes[i]
		if !n.Live() {
			continue
		}
		for _, im := range n.Images {
			for i := range im.Containers {
				ct := &im.Containers[i]
				if ct.Namespace == "" || ct.Pod == "" || ct.Container == "" {
					continue
				}
				if place != nil && !place.PodOn(ct.Namespace, ct.Pod, ct.PodUID, n.Name) {
					continue // not a pod of this node's, as far as the API knows
				}
				k := compatKey{namespace: ct.Namespace, container: ct.Container, image: im.GetImage(), kind: "pod", name: ct.Pod}
				if owners != nil {
					k.kind, k.name = owners.Workload(k.namespace, ct.Pod)
					if spec := owners.ContainerImage(k.namespace, ct.Pod, k.container); spec != "" {
						k.image = spec
					}
				}
				if prev, seen := worst[k]; !seen || im.GetStatus().Worse(prev) {
					worst[k] = im.GetStatus()
				}
			}
		}
	}
	for k, st := range worst {
		family := st.CompatFamily()
		if current {
			for i, d := range compatDescs {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, boolValue(i == family), k.namespace, k.container, k.image, k.kind, k.name)
			}
		}
		if descs := legacyDescs[k.kind]; legacy && descs != nil {
			for i, d := range descs {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, boolValue(i == family), k.namespace, k.name, k.container, k.image)
			}
		}
	}
}
