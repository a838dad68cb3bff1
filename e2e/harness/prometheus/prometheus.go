// Package prometheus runs a real Prometheus server (Debian's prometheus
// 2.x) on 127.0.0.1 that scrapes the given targets at a short interval, and
// queries it over its HTTP API.
package prometheus

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// Binary is the Prometheus executable.
const Binary = "prometheus"

// Options configure Start.
type Options struct {
	// Port at 127.0.0.1; 0 picks a free one.
	Port int
	// ScrapeInterval (default 1s) and EvaluationInterval (default 1s).
	ScrapeInterval, EvaluationInterval time.Duration
	// JobName of the one scrape job (default "pullwatch").
	JobName string
	// MetricsPath of the targets (default "/metrics").
	MetricsPath string
	// RuleFiles are rule files (paths) loaded by Prometheus.
	RuleFiles []string
	// ExtraArgs are appended to the command line (e.g. "--rules.alert.resend-delay=2s").
	ExtraArgs []string
	// Binary overrides the executable (default "prometheus").
	Binary string
	// ScrapeConfigs, when set, replaces the one static job: the YAML list
	// items under scrape_configs (e.g. a kubernetes_sd_configs job).
	ScrapeConfigs string
}

// Prometheus is a running Prometheus server.
type Prometheus struct {
	dir, addr  string
	configPath string
	logPath    string
	proc       *proc.Process
	client     *http.Client
}

// Start writes dir/prometheus.yml and runs Prometheus (TSDB in dir/data,
// logs to dir/prometheus.log) until /-/ready answers 200.
func Start(ctx context.Context, dir string, scrapeTargets []string, opts Options) (*Prometheus, error) {
	if opts.Binary == "" {
		opts.Binary = Binary
	}
	if opts.ScrapeInterval == 0 {
		opts.ScrapeInterval = time.Second
	}
	if opts.EvaluationInterval == 0 {
		opts.EvaluationInterval = time.Second
	}
	if opts.JobName == "" {
		opts.JobName = "pullwatch"
	}
	if opts.MetricsPath == "" {
		opts.MetricsPath = "/metrics"
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	p := &Prometheus{
		dir:        dir,
		configPath: filepath.Join(dir, "prometheus.yml"),
		logPath:    filepath.Join(dir, "prometheus.log"),
		client:     &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
	}
	if err := os.WriteFile(p.configPath, []byte(config(scrapeTargets, opts)), 0o644); err != nil {
		return nil, err
	}
	err = proc.StartOnFreePort(opts.Port, p.logPath, func(port int) error {
		p.addr = "127.0.0.1:" + strconv.Itoa(port)
		return p.start(ctx, opts)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Prometheus) start(ctx context.Context, opts Options) error {
	args := []string{
		"--config.file=" + p.configPath,
		"--storage.tsdb.path=" + filepath.Join(p.dir, "data"),
		"--web.listen-address=" + p.addr,
		"--web.enable-lifecycle",
		"--storage.tsdb.retention.time=1d",
		"--log.level=info",
	}
	args = append(args, opts.ExtraArgs...)
	pr, err := proc.Start(proc.Spec{Name: "prometheus", Path: opts.Binary, Args: args, Dir: p.dir, LogFile: p.logPath})
	if err != nil {
		return err
	}
	p.proc = pr
	return proc.WaitHTTPReady(ctx, pr, p.client, p.URL()+"/-/ready", 30*time.Second)
}

func config(targets []string, opts Options) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	timeout := opts.ScrapeInterval
	var b strings.Builder
	fmt.Fprintf(&b, "# written by the pullwatch e2e harness\nglobal:\n  scrape_interval: %s\n  scrape_timeout: %s\n  evaluation_interval: %s\n",
		Duration(opts.ScrapeInterval), Duration(timeout), Duration(opts.EvaluationInterval))
	if len(opts.RuleFiles) > 0 {
		b.WriteString("rule_files:\n")
		for _, f := range opts.RuleFiles {
			fmt.Fprintf(&b, "  - %s\n", q(f))
		}
	}
	if opts.ScrapeConfigs != "" {
		b.WriteString("scrape_configs:\n" + opts.ScrapeConfigs)
		return b.String()
	}
	fmt.Fprintf(&b, "scrape_configs:\n  - job_name: %s\n    metrics_path: %s\n    static_configs:\n      - targets: [", q(opts.JobName), q(opts.MetricsPath))
	for i, t := range targets {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(q(t))
	}
	b.WriteString("]\n")
	return b.String()
}

// Duration renders d in the duration syntax of Prometheus and Alertmanager
// configuration (e.g. "1500ms").
func Duration(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

// Addr is "127.0.0.1:PORT"; URL is "http://" + Addr.
func (p *Prometheus) Addr() string { return p.addr }
func (p *Prometheus) URL() string  { return "http://" + p.addr }

// Dir, ConfigPath and LogFile locate Prometheus's files.
func (p *Prometheus) Dir() string        { return p.dir }
func (p *Prometheus) ConfigPath() string { return p.configPath }
func (p *Prometheus) LogFile() string    { return p.logPath }

// Pid is Prometheus's process id.
func (p *Prometheus) Pid() int { return p.proc.Pid() }

// Stop stops Prometheus and waits until its port is closed.
func (p *Prometheus) Stop() error {
	if p.proc == nil {
		return nil
	}
	if err := p.proc.Stop(10 * time.Second); err != nil {
		return err
	}
	return proc.WaitPortClosed(p.addr, 10*time.Second)
}

// Reload makes Prometheus re-read its config and rule files (POST /-/reload).
func (p *Prometheus) Reload(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL()+"/-/reload", nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("reload: %s: %s", resp.Status, b)
	}
	return nil
}

// Sample is one element of a query result: a series' labels (including
// __name__ when present) and its value. A scalar result is one Sample with
// no labels.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Query evaluates an instant PromQL query now (GET /api/v1/query).
func (p *Prometheus) Query(ctx context.Context, promql string) ([]Sample, error) {
	resp, err := p.get(ctx, "/api/v1/query?query="+url.QueryEscape(promql))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, err
	}
	var r struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("query %q: %s: %w", promql, resp.Status, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %q: %s: %s", promql, r.ErrorType, r.Error)
	}
	switch r.Data.ResultType {
	case "vector":
		var vec []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(r.Data.Result, &vec); err != nil {
			return nil, err
		}
		out := make([]Sample, 0, len(vec))
		for _, v := range vec {
			f, err := parseValue(v.Value[1])
			if err != nil {
				return nil, err
			}
			out = append(out, Sample{Labels: v.Metric, Value: f})
		}
		return out, nil
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(r.Data.Result, &v); err != nil {
			return nil, err
		}
		f, err := parseValue(v[1])
		if err != nil {
			return nil, err
		}
		return []Sample{{Labels: map[string]string{}, Value: f}}, nil
	default:
		return nil, fmt.Errorf("query %q: unsupported result type %q", promql, r.Data.ResultType)
	}
}

func parseValue(v any) (float64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v is not a string", v)
	}
	switch s {
	case "NaN":
		return math.NaN(), nil
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	}
	return strconv.ParseFloat(s, 64)
}

// WaitForQuery re-runs expr (every 250ms, up to timeout) until pred accepts
// its result, and returns that result. pred nil means "at least one sample".
// On timeout the error shows the last result or query error.
func (p *Prometheus) WaitForQuery(ctx context.Context, expr string, pred func([]Sample) bool, timeout time.Duration) ([]Sample, error) {
	if pred == nil {
		pred = func(s []Sample) bool { return len(s) > 0 }
	}
	var last []Sample
	err := proc.Poll(ctx, timeout, 250*time.Millisecond, func() error {
		s, err := p.Query(ctx, expr)
		if err != nil {
			return err
		}
		last = s
		if !pred(s) {
			return fmt.Errorf("result %v not accepted", s)
		}
		return nil
	})
	if err != nil {
		return last, fmt.Errorf("wait for %q: %w", expr, err)
	}
	return last, nil
}

func (p *Prometheus) get(ctx context.Context, path string) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+path, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error { err := b.ReadCloser.Close(); b.cancel(); return err }
