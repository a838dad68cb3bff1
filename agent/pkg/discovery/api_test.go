package discovery

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// TestAPIDecodesTheServersJSON runs the resolver's watch through NewAPI on
// an HTTP server that answers as kube-apiserver does, in JSON: a list, and
// a watch that streams the initial list (watch-list) ending in a bookmark,
// then a change.
func TestAPIDecodesTheServersJSON(t *testing.T) {
	slice := func(rv, addr string) map[string]any {
		return map[string]any{
			"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
			"metadata": map[string]any{
				"name": "svc-abc", "namespace": "ns", "resourceVersion": rv,
				"labels": map[string]string{"kubernetes.io/service-name": "svc", "endpointslice.kubernetes.io/managed-by": ControllerName},
			},
			"addressType": "IPv4",
			"endpoints": []any{map[string]any{
				"addresses":  []string{addr},
				"conditions": map[string]any{"ready": true, "serving": true, "terminating": false},
				"targetRef":  map[string]any{"kind": "Pod", "namespace": "ns", "name": "p", "uid": "u"},
			}},
			"ports": []any{map[string]any{"name": "grpc", "protocol": "TCP", "port": 9400}},
		}
	}
	change := make(chan struct{}) // closed: the watch sends a change
	var (
		mu    sync.Mutex
		paths []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		if r.URL.Path != "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices" ||
			r.URL.Query().Get("labelSelector") != "kubernetes.io/service-name=svc" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		if r.URL.Query().Get("watch") != "true" {
			_ = enc.Encode(map[string]any{
				"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
				"metadata": map[string]any{"resourceVersion": "10"},
				"items":    []any{slice("10", "10.0.0.1")},
			})
			return
		}
		if r.URL.Query().Get("sendInitialEvents") == "true" {
			_ = enc.Encode(map[string]any{"type": "ADDED", "object": slice("10", "10.0.0.1")})
			_ = enc.Encode(map[string]any{"type": "BOOKMARK", "object": map[string]any{
				"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
				"metadata": map[string]any{"resourceVersion": "10",
					"annotations": map[string]string{"k8s.io/initial-events-end": "true"}},
			}})
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-change:
		}
		_ = enc.Encode(map[string]any{"type": "MODIFIED", "object": slice("11", "10.0.0.2")})
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	defer srv.CloseClientConnections()

	api, err := NewAPI(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan []string, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, api, Target{Service: "svc", Namespace: "ns", Port: "grpc"}, slog.New(slog.NewTextHandler(io.Discard, nil)),
			func(addrs []string) { got <- addrs })
	}()
	for i, want := range [][]string{{"10.0.0.1:9400"}, {"10.0.0.2:9400"}} {
		if i == 1 {
			close(change)
		}
		select {
		case addrs := <-got:
			if !slices.Equal(addrs, want) {
				t.Fatalf("addresses %q, want %q", addrs, want)
			}
		case <-ctx.Done():
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("no addresses %q within 10s; requests: %q", want, paths)
		}
	}
	cancel()
	<-done
}
