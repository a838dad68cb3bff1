package alertmanager

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Notification is one webhook delivery from Alertmanager (its webhook
// payload, version 4), stamped with when it arrived.
type Notification struct {
	Received    time.Time         `json:"-"`
	Receiver    string            `json:"receiver"`
	Status      string            `json:"status"`
	GroupKey    string            `json:"groupKey"`
	GroupLabels map[string]string `json:"groupLabels"`
	Alerts      []Alert           `json:"alerts"`
}

// Webhook is a webhook receiver on 127.0.0.1 that records every
// notification.
type Webhook struct {
	srv *http.Server
	lis net.Listener

	mu   sync.Mutex
	got  []Notification
	errs []string
	wake chan struct{} // closed and replaced on every notification
}

// StartWebhook listens on addr ("127.0.0.1:0" when empty) and serves
// POST / until Close.
func StartWebhook(addr string) (*Webhook, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("webhook listen %s: %w", addr, err)
	}
	w := &Webhook{lis: lis, wake: make(chan struct{})}
	w.srv = &http.Server{Handler: http.HandlerFunc(w.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = w.srv.Serve(lis) }()
	return w, nil
}

// URL is where Alertmanager should post (Options.WebhookURL).
func (w *Webhook) URL() string { return "http://" + w.lis.Addr().String() + "/" }

// Close stops the receiver.
func (w *Webhook) Close() error { return w.srv.Close() }

func (w *Webhook) serve(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(rw, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	var n Notification
	if err == nil {
		err = json.Unmarshal(body, &n)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.errs = append(w.errs, fmt.Sprintf("bad notification: %v: %.200s", err, body))
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	n.Received = time.Now()
	w.got = append(w.got, n)
	close(w.wake)
	w.wake = make(chan struct{})
}

// Notifications returns every notification received so far, oldest first.
func (w *Webhook) Notifications() []Notification {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.got)
}

// Errors lists the requests that were not valid notifications.
func (w *Webhook) Errors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.errs)
}

// Alerts returns every alert of every notification received at or after
// since, in arrival order (one alert may appear several times: firing,
// then resolved).
func (w *Webhook) Alerts(since time.Time) []Alert {
	var out []Alert
	for _, n := range w.Notifications() {
		if n.Received.Before(since) {
			continue
		}
		out = append(out, n.Alerts...)
	}
	return out
}

// Firing returns the distinct alerts (by fingerprint, latest state) that
// were notified as firing at or after since and whose last notification
// says firing.
func (w *Webhook) Firing(since time.Time) []Alert {
	last := map[string]Alert{}
	var order []string
	for _, a := range w.Alerts(since) {
		key := a.Fingerprint
		if key == "" {
			key = a.String()
		}
		if _, ok := last[key]; !ok {
			order = append(order, key)
		}
		last[key] = a
	}
	var out []Alert
	for _, k := range order {
		if last[k].Status == "firing" {
			out = append(out, last[k])
		}
	}
	return out
}

// WaitFor waits until pred accepts the alerts received at or after since
// (see Alerts), or ctx or timeout ends; the error lists what arrived.
func (w *Webhook) WaitFor(ctx context.Context, since time.Time, timeout time.Duration, pred func([]Alert) bool) ([]Alert, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		w.mu.Lock()
		wake := w.wake
		w.mu.Unlock()
		got := w.Alerts(since)
		if pred(got) {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("webhook: no accepted notification within %s: %w; received since %s: %s",
				timeout, ctx.Err(), since.Format(time.TimeOnly), Describe(got))
		case <-wake:
		case <-time.After(time.Second):
		}
	}
}

// Describe renders alerts one per line (sorted), "none" for none.
func Describe(alerts []Alert) string {
	if len(alerts) == 0 {
		return "none"
	}
	lines := make([]string, len(alerts))
	for i, a := range alerts {
		lines[i] = a.String()
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// Match reports whether a has every label in want (value "" means the
// label is absent or empty).
func Match(a Alert, want map[string]string) bool {
	for k, v := range want {
		if a.Labels[k] != v {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
