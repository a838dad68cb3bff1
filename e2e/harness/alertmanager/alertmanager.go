// Package alertmanager runs a real Alertmanager (Debian's
// prometheus-alertmanager 0.25) on 127.0.0.1 without clustering, routing
// every alert to one webhook receiver, and provides that receiver: an HTTP
// server on 127.0.0.1 that records each notification for the test to read.
package alertmanager

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
)

// Binary is the Alertmanager executable as Debian installs it.
const Binary = "prometheus-alertmanager"

// Options configure Start.
type Options struct {
	// Port at 127.0.0.1; 0 picks a free one.
	Port int
	// WebhookURL receives every notification (webhook_configs with
	// send_resolved). Empty: alerts are kept but sent nowhere.
	WebhookURL string
	// GroupWait, GroupInterval (default 1s each) and RepeatInterval
	// (default 1h) of the one route, which groups by alertname and every
	// label that names what an alert is about.
	GroupWait, GroupInterval, RepeatInterval time.Duration
	// GroupBy overrides the route's group_by (default: "..." — every
	// alert its own group, so each reaches the receiver at once).
	GroupBy []string
	// Detach starts Alertmanager in its own session so it outlives this
	// process (pwlab); Stop still works after Attach.
	Detach bool
	// Binary overrides the executable (default Binary).
	Binary string
}

// Alertmanager is a running Alertmanager.
type Alertmanager struct {
	dir, addr  string
	configPath string
	logPath    string
	proc       *proc.Process
	client     *http.Client
}

// state is what Attach needs.
type state struct {
	Addr string `json:"addr"`
}

// Start writes dir/alertmanager.yml and runs Alertmanager (data in
// dir/data, log in dir/alertmanager.log, no cluster listener) until
// /-/ready answers 200.
func Start(ctx context.Context, dir string, opts Options) (*Alertmanager, error) {
	if opts.Binary == "" {
		opts.Binary = Binary
	}
	if opts.GroupWait == 0 {
		opts.GroupWait = time.Second
	}
	if opts.GroupInterval == 0 {
		opts.GroupInterval = time.Second
	}
	if opts.RepeatInterval == 0 {
		opts.RepeatInterval = time.Hour
	}
	if len(opts.GroupBy) == 0 {
		opts.GroupBy = []string{"..."}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	a := newAlertmanager(dir)
	if err := os.WriteFile(a.configPath, []byte(config(opts)), 0o644); err != nil {
		return nil, err
	}
	err = proc.StartOnFreePort(opts.Port, a.logPath, func(port int) error {
		a.addr = "127.0.0.1:" + strconv.Itoa(port)
		return a.start(ctx, opts)
	})
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(state{Addr: a.addr})
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "alertmanager.json"), b, 0o644)
	}
	if err != nil {
		_ = a.Stop()
		return nil, err
	}
	return a, nil
}

func newAlertmanager(dir string) *Alertmanager {
	return &Alertmanager{
		dir:        dir,
		configPath: filepath.Join(dir, "alertmanager.yml"),
		logPath:    filepath.Join(dir, "alertmanager.log"),
		client:     &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
	}
}

// Attach finds an Alertmanager started (detached) in dir by an earlier
// process.
func Attach(dir string) (*Alertmanager, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "alertmanager.json"))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("alertmanager state %s: %w", dir, err)
	}
	a := newAlertmanager(dir)
	a.addr = st.Addr
	if pid, err := proc.ReadPidFile(filepath.Join(dir, "alertmanager.pid")); err == nil {
		if p, err := proc.Attach("alertmanager", pid, a.configPath, a.logPath); err == nil {
			a.proc = p
		}
	}
	return a, nil
}

func (a *Alertmanager) start(ctx context.Context, opts Options) error {
	p, err := proc.Start(proc.Spec{
		Name: "alertmanager",
		Path: opts.Binary,
		Args: []string{
			"--config.file=" + a.configPath,
			"--storage.path=" + filepath.Join(a.dir, "data"),
			"--web.listen-address=" + a.addr,
			"--cluster.listen-address=", // no gossip listener: a single instance
			"--log.level=info",
		},
		Dir:     a.dir,
		LogFile: a.logPath,
		Detach:  opts.Detach,
	})
	if err != nil {
		return err
	}
	a.proc = p
	if err := proc.WritePidFile(filepath.Join(a.dir, "alertmanager.pid"), p.Pid()); err != nil {
		_ = p.Stop(5 * time.Second)
		return err
	}
	return proc.WaitHTTPReady(ctx, p, a.client, a.URL()+"/-/ready", 30*time.Second)
}

func config(opts Options) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var b strings.Builder
	b.WriteString("# written by the pullwatch e2e harness\n")
	fmt.Fprintf(&b, "route:\n  receiver: test\n  group_by: [")
	for i, l := range opts.GroupBy {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(q(l))
	}
	fmt.Fprintf(&b, "]\n  group_wait: %s\n  group_interval: %s\n  repeat_interval: %s\n", prometheus.Duration(opts.GroupWait), prometheus.Duration(opts.GroupInterval), prometheus.Duration(opts.RepeatInterval))
	b.WriteString("receivers:\n  - name: test\n")
	if opts.WebhookURL != "" {
		fmt.Fprintf(&b, "    webhook_configs:\n      - url: %s\n        send_resolved: true\n", q(opts.WebhookURL))
	}
	return b.String()
}

// Addr is "127.0.0.1:PORT"; URL is "http://" + Addr (what Prometheus's
// alerting.alertmanagers static target is: Addr).
func (a *Alertmanager) Addr() string { return a.addr }
func (a *Alertmanager) URL() string  { return "http://" + a.addr }

// Dir and LogFile locate Alertmanager's files.
func (a *Alertmanager) Dir() string     { return a.dir }
func (a *Alertmanager) LogFile() string { return a.logPath }

// Pid is the process id (0 if unknown).
func (a *Alertmanager) Pid() int {
	if a.proc == nil {
		return 0
	}
	return a.proc.Pid()
}

// Running reports whether the process is alive.
func (a *Alertmanager) Running() bool { return a.proc != nil && !a.proc.Exited() }

// Stop stops Alertmanager and waits until its port is closed.
func (a *Alertmanager) Stop() error {
	if a.proc == nil {
		return nil
	}
	if err := a.proc.Stop(10 * time.Second); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(a.dir, "alertmanager.pid"))
	return proc.WaitPortClosed(a.addr, 10*time.Second)
}

// Alert is an alert as Alertmanager's API v2 and its webhook show it.
type Alert struct {
	Status      string            `json:"status"` // webhook: firing or resolved
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	Fingerprint string            `json:"fingerprint"`
	// State is active, suppressed or unprocessed (API v2 only).
	State string `json:"-"`
}

// Name is the alertname label.
func (a Alert) Name() string { return a.Labels["alertname"] }

// String is "Name{label=value,...} status".
func (a Alert) String() string {
	var ls []string
	for _, k := range sortedKeys(a.Labels) {
		if k != "alertname" {
			ls = append(ls, k+"="+a.Labels[k])
		}
	}
	s := a.Name() + "{" + strings.Join(ls, ",") + "}"
	if a.Status != "" {
		s += " " + a.Status
	}
	return s
}

// Alerts returns the alerts Alertmanager holds now (GET /api/v2/alerts).
func (a *Alertmanager) Alerts(ctx context.Context) ([]Alert, error) {
	resp, err := a.get(ctx, "/api/v2/alerts")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v2/alerts: %s: %s", resp.Status, body)
	}
	var raw []struct {
		Alert
		Status struct {
			State string `json:"state"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("GET /api/v2/alerts: %w", err)
	}
	out := make([]Alert, len(raw))
	for i, r := range raw {
		out[i] = r.Alert
		out[i].State = r.Status.State
	}
	return out, nil
}

func (a *Alertmanager) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL()+path, nil)
	if err != nil {
		return nil, err
	}
	return a.client.Do(req)
}
