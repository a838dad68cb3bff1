package metrics

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) // unix 1767323045

const (
	upstream = pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM
	mirror   = pullwatchv1.EndpointRole_ENDPOINT_ROLE_MIRROR

	available   = pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
	absent      = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	unreachable = pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE
	rateLimited = pullwatchv1.ImageStatus_IMAGE_STATUS_RATE_LIMITED
)

func endpoint(url string, role pullwatchv1.EndpointRole, st pullwatchv1.ImageStatus, httpStatus int32, latency time.Duration) *pullwatchv1.EndpointResult {
	ep := &pullwatchv1.EndpointResult{Url: url, Role: role, Status: st, HttpStatus: httpStatus}
	if latency > 0 {
		ep.Latency = durationpb.New(latency)
	}
	return ep
}

// testStore has node-a, fresh, and node-b, which last reported 4 minutes
// ago with stale-after 3m.
func testStore() *state.Store {
	now := t0
	s := state.New(3*time.Minute, state.WithClock(func() time.Time { return now }))
	s.ApplySnapshot(&pullwatchv1.NodeSnapshot{
		Node: &pullwatchv1.Node{Name: "node-b"},
		Images: []*pullwatchv1.ImageReport{{
			Image: "quay.io/org/c:1", Registry: "quay.io", Status: rateLimited,
			Endpoints: []*pullwatchv1.EndpointResult{endpoint("https://quay.io/v2", upstream, rateLimited, 429, 0)},
		}},
	})
	now = now.Add(4 * time.Minute)
	s.ApplySnapshot(&pullwatchv1.NodeSnapshot{
		Node: &pullwatchv1.Node{Name: "node-a"},
		Images: []*pullwatchv1.ImageReport{
			{
				Image: "docker.io/library/a:1", Registry: "docker.io", Status: available, InUse: true,
				Endpoints: []*pullwatchv1.EndpointResult{
					endpoint("https://mirror.example/v2", mirror, unreachable, 0, 2*time.Second),
					endpoint("https://registry-1.docker.io/v2", upstream, available, 200, 250*time.Millisecond),
				},
			},
			{
				Image: "docker.io/library/b:1", Registry: "docker.io", Status: absent,
				Endpoints: []*pullwatchv1.EndpointResult{
					endpoint("https://mirror.example/v2", mirror, unreachable, 0, 3*time.Second),
					endpoint("https://registry-1.docker.io/v2", upstream, absent, 404, 100*time.Millisecond),
					{Url: "https://pull-only.example/v2", Role: mirror, Status: pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN, Skipped: true},
				},
			},
		},
	})
	s.StreamOpened()
	s.Attach("node-a", nil)
	s.StreamOpened() // a second stream that has not sent a snapshot: not an agent
	return s
}

// newCollector returns a Collector over s with the default
// configuration but compat off, unless cfgs give one.
func newCollector(s *state.Store, cfgs ...Config) *Collector {
	cfg := Config{NodeImageSeries: NodeImageSeriesAll}
	if len(cfgs) > 0 {
		cfg = cfgs[0]
	}
	return NewCollector(s, analyzer.NewAnalyzer(s, nil, slog.New(slog.NewTextHandler(io.Discard, nil))), cfg)
}

func TestCollectorExposition(t *testing.T) {
	const want = `
# HELP pullwatch_agent_last_report_timestamp_seconds Unix time the aggregator last accepted a report from the node's agent.
# TYPE pullwatch_agent_last_report_timestamp_seconds gauge
pullwatch_agent_last_report_timestamp_seconds{node="node-a"} 1767323285
pullwatch_agent_last_report_timestamp_seconds{node="node-b"} 1767323045
# HELP pullwatch_agent_streams_open Agent report streams open now, including those that have not sent a snapshot yet.
# TYPE pullwatch_agent_streams_open gauge
pullwatch_agent_streams_open 2
# HELP pullwatch_agents_connected Number of nodes with a live agent report stream: nodes, not streams (a node's newer stream replaces its older one; a stream counts once it has sent its first snapshot).
# TYPE pullwatch_agents_connected gauge
pullwatch_agents_connected 1
# HELP pullwatch_endpoint_latency_seconds Latency of the registry endpoint across the live nodes that tried it, as a summary over nodes: each node is one observation, its pullwatch_node_endpoint_latency_seconds; quantile 0.5, 0.9, 0.99 and 1 (the slowest node), _count the nodes, _sum their latencies. One per endpoint, whatever --node-endpoint-series says.
# TYPE pullwatch_endpoint_latency_seconds summary
pullwatch_endpoint_latency_seconds{endpoint="https://mirror.example/v2",registry="docker.io",role="mirror",quantile="0.5"} 3
pullwatch_endpoint_latency_seconds{endpoint="https://mirror.example/v2",registry="docker.io",role="mirror",quantile="0.9"} 3
pullwatch_endpoint_latency_seconds{endpoint="https://mirror.example/v2",registry="docker.io",role="mirror",quantile="0.99"} 3
pullwatch_endpoint_latency_seconds{endpoint="https://mirror.example/v2",registry="docker.io",role="mirror",quantile="1"} 3
pullwatch_endpoint_latency_seconds_sum{endpoint="https://mirror.example/v2",registry="docker.io",role="mirror"} 3
pullwatch_endpoint_latency_seconds_count{endpoint="https://mirror.example/v2",registry="docker.io",role="mirror"} 1
pullwatch_endpoint_latency_seconds{endpoint="https://registry-1.docker.io/v2",registry="docker.io",role="upstream",quantile="0.5"} 0.25
pullwatch_endpoint_latency_seconds{endpoint="https://registry-1.docker.io/v2",registry="docker.io",role="upstream",quantile="0.9"} 0.25
pullwatch_endpoint_latency_seconds{endpoint="https://registry-1.docker.io/v2",registry="docker.io",role="upstream",quantile="0.99"} 0.25
pullwatch_endpoint_latency_seconds{endpoint="https://registry-1.docker.io/v2",registry="docker.io",role="upstream",quantile="1"} 0.25
pullwatch_endpoint_latency_seconds_sum{endpoint="https://registry-1.docker.io/v2",registry="docker.io",role="upstream"} 0.25
pullwatch_endpoint_latency_seconds_count{endpoint="https://registry-1.docker.io/v2",registry="docker.io",role="upstream"} 1
# HELP pullwatch_image_failure Where an image that is not available on some live node fails: scope node, zone, cluster or image (the registry answered: absent, unauthorized, forbidden, platform_missing, bad_image_format). Value: the number of live nodes where it is not available. One series per failing image; none for images available everywhere.
# TYPE pullwatch_image_failure gauge
pullwatch_image_failure{image="docker.io/library/b:1",registry="docker.io",scope="image"} 1
# HELP pullwatch_image_nodes Number of live nodes (fresh, and known to the Kubernetes API when it is used) that have the image, by the image's status on them. Only statuses some node has get a series.
# TYPE pullwatch_image_nodes gauge
pullwatch_image_nodes{image="docker.io/library/a:1",status="available"} 1
pullwatch_image_nodes{image="docker.io/library/b:1",status="absent"} 1
# HELP pullwatch_node_endpoint_latency_seconds Highest latency of the registry endpoint seen by the node's agent across the images in its latest results. No series when no result carries a latency. Same series selection as pullwatch_node_endpoint_up.
# TYPE pullwatch_node_endpoint_latency_seconds gauge
pullwatch_node_endpoint_latency_seconds{endpoint="https://mirror.example/v2",node="node-a",registry="docker.io",role="mirror"} 3
pullwatch_node_endpoint_latency_seconds{endpoint="https://registry-1.docker.io/v2",node="node-a",registry="docker.io",role="upstream"} 0.25
# HELP pullwatch_node_endpoint_up 1 if the registry endpoint answered the node's agent (any HTTP response, whatever the status) for at least one image in its latest results, 0 if it was tried and never answered (unreachable or unknown). Endpoints the runtime skips for every image have no series. With --node-endpoint-series=failing (the default), only the endpoints of registries with an endpoint that does not answer the node.
# TYPE pullwatch_node_endpoint_up gauge
pullwatch_node_endpoint_up{endpoint="https://mirror.example/v2",node="node-a",registry="docker.io",role="mirror"} 0
pullwatch_node_endpoint_up{endpoint="https://quay.io/v2",node="node-b",registry="quay.io",role="upstream"} 1
pullwatch_node_endpoint_up{endpoint="https://registry-1.docker.io/v2",node="node-a",registry="docker.io",role="upstream"} 1
# HELP pullwatch_node_image_in_use 1 if at least one container on the node (in any state) uses the image, else 0. Same series selection as pullwatch_node_image_status.
# TYPE pullwatch_node_image_in_use gauge
pullwatch_node_image_in_use{image="docker.io/library/a:1",node="node-a"} 1
pullwatch_node_image_in_use{image="docker.io/library/b:1",node="node-a"} 0
pullwatch_node_image_in_use{image="quay.io/org/c:1",node="node-b"} 0
# HELP pullwatch_node_image_status Pull status of an image on a node, as the node's agent last reported it: 1 for the current status, one series per node and image (with --node-image-series=failing only for images not available on the node). status is one of available, absent, unauthorized, forbidden, rate_limited, unreachable, platform_missing, bad_image_format, unknown. Stale nodes keep their last status; see pullwatch_node_stale.
# TYPE pullwatch_node_image_status gauge
pullwatch_node_image_status{image="docker.io/library/a:1",node="node-a",status="available"} 1
pullwatch_node_image_status{image="docker.io/library/b:1",node="node-a",status="absent"} 1
pullwatch_node_image_status{image="quay.io/org/c:1",node="node-b",status="rate_limited"} 1
# HELP pullwatch_node_not_reporting 1 for a node whose agent should report and does not: reason stale (it reported, then went silent for longer than --stale-after) or never (with the Kubernetes API: a Ready, non-Windows Node whose agent never reported). Only such nodes have a series.
# TYPE pullwatch_node_not_reporting gauge
pullwatch_node_not_reporting{node="node-b",reason="stale"} 1
# HELP pullwatch_node_stale 1 if the node's agent has not reported for longer than --stale-after, else 0.
# TYPE pullwatch_node_stale gauge
pullwatch_node_stale{node="node-a"} 0
pullwatch_node_stale{node="node-b"} 1
# HELP pullwatch_nodes Number of nodes the aggregator has state for, by state: fresh (reported within --stale-after), stale, or unregistered (the Kubernetes API has no Node of that name; only with the API).
# TYPE pullwatch_nodes gauge
pullwatch_nodes{state="fresh"} 1
pullwatch_nodes{state="stale"} 1
pullwatch_nodes{state="unregistered"} 0
# HELP pullwatch_registry_failure Where a registry endpoint that does not answer some live node fails: scope node, zone, mirror (a mirror down from every node while the upstream answers) or cluster. Value: the number of live nodes it does not answer. One series per failing endpoint; none for endpoints that answer everywhere.
# TYPE pullwatch_registry_failure gauge
pullwatch_registry_failure{endpoint="https://mirror.example/v2",registry="docker.io",scope="mirror"} 1
`
	if err := testutil.CollectAndCompare(newCollector(testStore()), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestFailingEndpointSeries: with --node-endpoint-series=failing, node-a
// (its docker.io mirror down) keeps both docker.io endpoints, so max by
// (node, registry) is still 1, and node-b (quay.io answers) has none.
func TestFailingEndpointSeries(t *testing.T) {
	c := newCollector(testStore(), Config{NodeImageSeries: NodeImageSeriesAll, NodeEndpointSeries: NodeEndpointSeriesFailing})
	want := `
# HELP pullwatch_node_endpoint_up ` + helpOf(t, "pullwatch_node_endpoint_up") + `
# TYPE pullwatch_node_endpoint_up gauge
pullwatch_node_endpoint_up{endpoint="https://mirror.example/v2",node="node-a",registry="docker.io",role="mirror"} 0
pullwatch_node_endpoint_up{endpoint="https://registry-1.docker.io/v2",node="node-a",registry="docker.io",role="upstream"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pullwatch_node_endpoint_up"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "pullwatch_node_endpoint_latency_seconds"); n != 2 {
		t.Errorf("%d latency series, want node-a's 2", n)
	}
	// The summary over nodes stays: one per endpoint with a latency
	// on a live node (node-b is stale).
	if n := testutil.CollectAndCount(c, "pullwatch_endpoint_latency_seconds"); n != 2 {
		t.Errorf("%d endpoint latency summaries, want 2", n)
	}
}

func TestOneStatusSeriesPerImage(t *testing.T) {
	s := testStore()
	c := newCollector(s)
	tests := []struct {
		name   string
		change func()
		want   string // status of docker.io/library/a:1 on node-a
	}{
		{"initial", func() {}, "available"},
		{"after an update changes the status", func() {
			s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "node-a", Upserts: []*pullwatchv1.ImageReport{
				{Image: "docker.io/library/a:1", Status: pullwatchv1.ImageStatus_IMAGE_STATUS_UNAUTHORIZED},
			}})
		}, "unauthorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.change()
			if n := testutil.CollectAndCount(c, "pullwatch_node_image_status"); n != 3 {
				t.Errorf("%d pullwatch_node_image_status series for 3 node images, want 3", n)
			}
			want := fmt.Sprintf(`
# HELP pullwatch_node_image_status %s
# TYPE pullwatch_node_image_status gauge
pullwatch_node_image_status{image="docker.io/library/a:1",node="node-a",status=%q} 1
pullwatch_node_image_status{image="docker.io/library/b:1",node="node-a",status="absent"} 1
pullwatch_node_image_status{image="quay.io/org/c:1",node="node-b",status="rate_limited"} 1
`, helpOf(t, "pullwatch_node_image_status"), tt.want)
			if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pullwatch_node_image_status"); err != nil {
				t.Error(err)
			}
		})
	}
}

// helpOf returns a metric family's HELP text, so that tests about values
// need not repeat it.
func helpOf(t *testing.T, name string) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newCollector(testStore(), Config{CompatSchema: CompatCurrent}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetHelp()
		}
	}
	t.Fatalf("no metric family %s", name)
	return ""
}

func TestEmptyStore(t *testing.T) {
	s := state.New(time.Minute)
	c := newCollector(s)
	// Only the totals: pullwatch_nodes{state} three times, pullwatch_agents_connected
	// and pullwatch_agent_streams_open.
	if n := testutil.CollectAndCount(c); n != 5 {
		t.Errorf("%d series from an empty store, want 5", n)
	}
}

func TestLint(t *testing.T) {
	reports := NewReports([]string{"snapshot", "update"}, []string{"invalid_node", "too_large"})
	for name, c := range map[string]prometheus.Collector{
		"collector": newCollector(testStore(), Config{CompatSchema: CompatCurrent}),
		"reports":   reports,
	} {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s: %s", name, p.Metric, p.Text)
		}
	}
}

func TestReports(t *testing.T) {
	r := NewReports([]string{"snapshot", "update"}, []string{"invalid_node", "too_large"})
	r.ReportReceived("snapshot")
	r.ReportReceived("update")
	r.ReportReceived("update")
	r.ReportRejected("too_large")
	r.StreamClosed("replaced")
	r.NodesForgotten([]string{"a", "b"})
	r.ImageRefused("invalid_node")
	const want = `
# HELP pullwatch_agent_streams_closed_total Agent streams the aggregator closed for its bounds, by reason: replaced (a newer stream for the same node took over) or first_report_timeout (no snapshot within --first-report-timeout).
# TYPE pullwatch_agent_streams_closed_total counter
pullwatch_agent_streams_closed_total{reason="first_report_timeout"} 0
pullwatch_agent_streams_closed_total{reason="replaced"} 1
# HELP pullwatch_nodes_forgotten_total Nodes dropped from the aggregator's state because they did not report for --forget-after.
# TYPE pullwatch_nodes_forgotten_total counter
pullwatch_nodes_forgotten_total 2
# HELP pullwatch_image_reports_refused_total Image reports refused inside agent messages that were otherwise kept, by reason: the image is shown unknown (or left out when its reference is unusable), the rest of the node's report applies. Reasons: invalid_node, too_large.
# TYPE pullwatch_image_reports_refused_total counter
pullwatch_image_reports_refused_total{reason="invalid_node"} 1
pullwatch_image_reports_refused_total{reason="too_large"} 0
# HELP pullwatch_reports_received_total Valid agent messages received, by kind (snapshot or update). Includes updates answered with resync because the stream had no snapshot yet.
# TYPE pullwatch_reports_received_total counter
pullwatch_reports_received_total{kind="snapshot"} 1
pullwatch_reports_received_total{kind="update"} 2
# HELP pullwatch_reports_rejected_total Agent messages refused, by reason; each refusal ends that agent's stream. Reasons: invalid_node, too_large.
# TYPE pullwatch_reports_rejected_total counter
pullwatch_reports_rejected_total{reason="invalid_node"} 0
pullwatch_reports_rejected_total{reason="too_large"} 1
`
	if err := testutil.CollectAndCompare(r, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestRegistryGathers(t *testing.T) {
	reg := NewRegistry(newCollector(testStore()), NewReports([]string{"snapshot"}, nil))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, name := range []string{"pullwatch_node_image_status", "pullwatch_reports_received_total", "go_goroutines", "process_start_time_seconds"} {
		if !have[name] {
			t.Errorf("registry has no %s", name)
		}
	}
}

// benchStore is 1000 nodes with 50 images each, two endpoints per image
// (a mirror that is down and an upstream that answers), every image
// available. Every other image is in use by one container of a pod
// named app-<i>-<node>, which benchOwners puts in Deployment app-<i>.
func benchStore() *state.Store {
	s := state.New(time.Minute)
	for n := range 1000 {
		node := fmt.Sprintf("node-%04d", n)
		snap := &pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: node}}
		for i := range 50 {
			im := &pullwatchv1.ImageReport{
				Image: fmt.Sprintf("registry.example/team-%d/app:%d", i%10, i), Registry: "registry.example",
				Status: available, InUse: i%2 == 0,
				Endpoints: []*pullwatchv1.EndpointResult{
					endpoint("https://mirror.example/v2", mirror, unreachable, 0, time.Second),
					endpoint("https://registry.example/v2", upstream, available, 200, 30*time.Millisecond),
				},
			}
			if im.InUse {
				im.Containers = []*pullwatchv1.ContainerRef{{Namespace: "apps", Pod: fmt.Sprintf("app-%d-%s", i, node), Container: "main"}}
			}
			snap.Images = append(snap.Images, im)
		}
		s.ApplySnapshot(snap)
	}
	return s
}

// benchOwners puts pod app-<i>-<node> in Deployment app-<i>.
type benchOwners struct{}

func (benchOwners) OwnersSynced() bool { return true }
func (benchOwners) Workload(_, pod string) (string, string) {
	return "deployment", pod[:strings.LastIndexByte(pod, '-')-len("node")-1]
}
func (benchOwners) ContainerImage(_, _, _ string) string { return "" }

// BenchmarkCollect measures one scrape's Collect (diagnosis included,
// encoding not) over benchStore for each cardinality setting, and reports
// the number of series as series/op. Reproduce with:
//
//	cd aggregator && go test -run '^$' -bench BenchmarkCollect -benchmem ./pkg/metrics
func BenchmarkCollect(b *testing.B) {
	s := benchStore()
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"node-image-series=all", Config{NodeImageSeries: NodeImageSeriesAll}},
		{"node-image-series=failing", Config{NodeImageSeries: NodeImageSeriesFailing}},
		{"node-image-series=all,compat", Config{NodeImageSeries: NodeImageSeriesAll, CompatSchema: CompatCurrent, Owners: benchOwners{}}},
		{"node-image-series=failing,compat", Config{NodeImageSeries: NodeImageSeriesFailing, CompatSchema: CompatCurrent, Owners: benchOwners{}}},
		{"node-image-series=failing,compat-without-api", Config{NodeImageSeries: NodeImageSeriesFailing, CompatSchema: CompatCurrent}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newCollector(s, bc.cfg)
			ch := make(chan prometheus.Metric, 1024)
			drained := make(chan int)
			go func() {
				n := 0
				for range ch {
					n++
				}
				drained <- n
			}()
			b.ReportAllocs()
			loops := 0
			for b.Loop() {
				c.Collect(ch)
				loops++
			}
			close(ch)
			n := <-drained
			if n == 0 {
				b.Fatal("no metrics collected")
			}
			b.ReportMetric(float64(n/loops), "series/op")
		})
	}
}

// BenchmarkScrape measures a whole /metrics answer (gather and encode in
// the text format) over benchStore, and reports its size.
func BenchmarkScrape(b *testing.B) {
	s := benchStore()
	for _, mode := range []string{NodeImageSeriesAll, NodeImageSeriesFailing} {
		b.Run("node-image-series="+mode, func(b *testing.B) {
			h := promhttp.HandlerFor(NewRegistry(newCollector(s, Config{NodeImageSeries: mode, CompatSchema: CompatCurrent, Owners: benchOwners{}})), promhttp.HandlerOpts{})
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			b.ReportAllocs()
			size := 0
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
				size = rec.Body.Len()
			}
			b.ReportMetric(float64(size), "bytes/scrape")
		})
	}
}

// TestScopeFamilies: a zone that lost a registry is one series per
// registry and zone in pullwatch_registry_unreachable_nodes; the per-node
// scope families carry each live node's count under its failure's scope,
// so that rules select scope="node" without reading the zone's nodes.
func TestScopeFamilies(t *testing.T) {
	s := state.New(3*time.Minute, state.WithClock(func() time.Time { return t0 }))
	report := func(name, zone string, st pullwatchv1.ImageStatus, httpStatus int32) {
		s.ApplySnapshot(&pullwatchv1.NodeSnapshot{
			Node: &pullwatchv1.Node{Name: name, Labels: map[string]string{"topology.kubernetes.io/zone": zone}},
			Images: []*pullwatchv1.ImageReport{{
				Image: "reg.example/app:1", Registry: "reg.example", Status: st, InUse: true,
				Endpoints: []*pullwatchv1.EndpointResult{endpoint("https://reg.example/v2", upstream, st, httpStatus, 0)},
			}},
		})
	}
	report("n1", "z1", unreachable, 0)
	report("n2", "z1", unreachable, 0)
	report("n3", "z2", available, 200)
	report("n4", "z2", available, 200)
	const want = `
# HELP pullwatch_image_failure_in_use_nodes Live nodes where the image is not available and a container uses it, with the image's registry and failure scope as in pullwatch_image_failure. Only failing images some container uses.
# TYPE pullwatch_image_failure_in_use_nodes gauge
pullwatch_image_failure_in_use_nodes{image="reg.example/app:1",registry="reg.example",scope="zone"} 2
# HELP pullwatch_node_failing_images In-use images not available on the live node, by the scope of each image's failure (node, zone, cluster or image). Only nodes with such images; select scope="node" for failures of the node's own.
# TYPE pullwatch_node_failing_images gauge
pullwatch_node_failing_images{node="n1",scope="zone",zone="z1"} 1
pullwatch_node_failing_images{node="n2",scope="zone",zone="z1"} 1
# HELP pullwatch_node_unreachable_registries Registries the live node lost (no endpoint answers it), by the scope of each registry's loss (node, zone or cluster). Only nodes that lost one; select scope="node" for the nodes whose own path fails.
# TYPE pullwatch_node_unreachable_registries gauge
pullwatch_node_unreachable_registries{node="n1",scope="zone",zone="z1"} 1
pullwatch_node_unreachable_registries{node="n2",scope="zone",zone="z1"} 1
# HELP pullwatch_registry_unreachable_nodes Live nodes from which no endpoint of the registry answers (they lost the registry), per zone of those nodes (empty: no zone), and where the loss lies: scope node, zone or cluster. One series per registry and zone with such nodes; none while every node reaches it.
# TYPE pullwatch_registry_unreachable_nodes gauge
pullwatch_registry_unreachable_nodes{registry="reg.example",scope="zone",zone="z1"} 2
`
	names := []string{"pullwatch_node_failing_images", "pullwatch_image_failure_in_use_nodes", "pullwatch_node_unreachable_registries", "pullwatch_registry_unreachable_nodes"}
	if err := testutil.CollectAndCompare(newCollector(s), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// n2 gets its path back: n1 alone is a node-scoped loss.
	report("n2", "z1", available, 200)
	const want2 = `
# HELP pullwatch_image_failure_in_use_nodes Live nodes where the image is not available and a container uses it, with the image's registry and failure scope as in pullwatch_image_failure. Only failing images some container uses.
# TYPE pullwatch_image_failure_in_use_nodes gauge
pullwatch_image_failure_in_use_nodes{image="reg.example/app:1",registry="reg.example",scope="node"} 1
# HELP pullwatch_node_failing_images In-use images not available on the live node, by the scope of each image's failure (node, zone, cluster or image). Only nodes with such images; select scope="node" for failures of the node's own.
# TYPE pullwatch_node_failing_images gauge
pullwatch_node_failing_images{node="n1",scope="node",zone="z1"} 1
# HELP pullwatch_node_unreachable_registries Registries the live node lost (no endpoint answers it), by the scope of each registry's loss (node, zone or cluster). Only nodes that lost one; select scope="node" for the nodes whose own path fails.
# TYPE pullwatch_node_unreachable_registries gauge
pullwatch_node_unreachable_registries{node="n1",scope="node",zone="z1"} 1
# HELP pullwatch_registry_unreachable_nodes Live nodes from which no endpoint of the registry answers (they lost the registry), per zone of those nodes (empty: no zone), and where the loss lies: scope node, zone or cluster. One series per registry and zone with such nodes; none while every node reaches it.
# TYPE pullwatch_registry_unreachable_nodes gauge
pullwatch_registry_unreachable_nodes{registry="reg.example",scope="node",zone="z1"} 1
`
	if err := testutil.CollectAndCompare(newCollector(s), strings.NewReader(want2), names...); err != nil {
		t.Error(err)
	}
}

// TestNeverReportingNodes: with the API's Nodes, a Ready Linux node
// without a report is not_reporting (and has a series of its own); a
// NotReady one and a Windows one are only counted.
func TestNeverReportingNodes(t *testing.T) {
	now := t0
	cfg := Config{NodeImageSeries: NodeImageSeriesFailing, NeverReportedAfter: time.Minute, Now: func() time.Time { return now }, APINodes: func() ([]APINode, bool) {
		return []APINode{
			{Name: "node-a", Ready: true}, {Name: "node-b", Ready: true}, // both reported (node-b is stale)
			{Name: "node-c", Ready: true}, {Name: "node-d"}, {Name: "win-1", Zone: "z1", Ready: true, Windows: true},
			{Name: "node-new", Ready: true, Created: t0.Add(30 * time.Second)}, // too young to tell
		}, true
	}}
	c := newCollector(testStore(), cfg)
	// Right after the aggregator starts, no node counts as never reporting:
	// agents reconnect and send their snapshot within --first-report-timeout.
	if n := testutil.CollectAndCount(c, "pullwatch_node_not_reporting"); n != 1 { // node-b, stale
		t.Errorf("%d pullwatch_node_not_reporting series at the aggregator's start, want only the stale node's", n)
	}
	now = t0.Add(70 * time.Second)
	const want = `
# HELP pullwatch_api_nodes The Kubernetes API's Nodes by whether their agent reports: reporting (a report, fresh or stale; or too early to tell: the aggregator or the Node younger than --first-report-timeout), not_reporting (Ready Linux nodes whose agent never reported), not_ready (NotReady nodes without a report), windows (not monitored: no agent runs there). Per zone (topology.kubernetes.io/zone; empty: none). Only with the API, once its node list is loaded.
# TYPE pullwatch_api_nodes gauge
pullwatch_api_nodes{state="not_ready",zone=""} 1
pullwatch_api_nodes{state="not_reporting",zone=""} 1
pullwatch_api_nodes{state="reporting",zone=""} 3
pullwatch_api_nodes{state="windows",zone=""} 0
pullwatch_api_nodes{state="not_ready",zone="z1"} 0
pullwatch_api_nodes{state="not_reporting",zone="z1"} 0
pullwatch_api_nodes{state="reporting",zone="z1"} 0
pullwatch_api_nodes{state="windows",zone="z1"} 1
# HELP pullwatch_node_not_reporting 1 for a node whose agent should report and does not: reason stale (it reported, then went silent for longer than --stale-after) or never (with the Kubernetes API: a Ready, non-Windows Node whose agent never reported). Only such nodes have a series.
# TYPE pullwatch_node_not_reporting gauge
pullwatch_node_not_reporting{node="node-b",reason="stale"} 1
pullwatch_node_not_reporting{node="node-c",reason="never"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pullwatch_api_nodes", "pullwatch_node_not_reporting"); err != nil {
		t.Error(err)
	}
	cfg.APINodes = func() ([]APINode, bool) { return nil, false }
	if n := testutil.CollectAndCount(newCollector(testStore(), cfg), "pullwatch_api_nodes"); n != 0 {
		t.Errorf("%d pullwatch_api_nodes series before the node list is loaded, want none", n)
	}
}
