package alertmanager

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// TestAlertmanagerWebhook: an alert posted to a real Alertmanager reaches
// the webhook receiver as firing, and as resolved once it ends.
func TestAlertmanagerWebhook(t *testing.T) {
	if _, err := exec.LookPath(Binary); err != nil {
		proc.SkipOrFail(t, "needs "+Binary+" (apt-get install prometheus-alertmanager): "+err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hook, err := StartWebhook("")
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	am, err := Start(ctx, t.TempDir(), Options{WebhookURL: hook.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := am.Stop(); err != nil {
			t.Error(err)
		}
	}()
	since := time.Now()
	post := func(ends time.Time) {
		t.Helper()
		body, _ := json.Marshal([]map[string]any{{
			"labels":      map[string]string{"alertname": "TestAlert", "node": "n1"},
			"annotations": map[string]string{"summary": "test"},
			"startsAt":    since.Add(-time.Second).Format(time.RFC3339Nano),
			"endsAt":      ends.Format(time.RFC3339Nano),
		}})
		resp, err := http.Post(am.URL()+"/api/v2/alerts", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /api/v2/alerts: %s", resp.Status)
		}
	}
	post(time.Now().Add(time.Hour))
	if _, err := hook.WaitFor(ctx, since, 20*time.Second, func(a []Alert) bool { return len(hook.Firing(since)) == 1 }); err != nil {
		t.Fatal(err)
	}
	active, err := am.Alerts(ctx)
	if err != nil || len(active) != 1 || active[0].Name() != "TestAlert" || active[0].State != "active" {
		t.Errorf("API alerts %+v %v", active, err)
	}
	post(time.Now())
	if _, err := hook.WaitFor(ctx, since, 20*time.Second, func(a []Alert) bool {
		return len(a) > 0 && a[len(a)-1].Status == "resolved"
	}); err != nil {
		t.Fatal(err)
	}
	if f := hook.Firing(since); len(f) != 0 {
		t.Errorf("still firing: %s", Describe(f))
	}
	if errs := hook.Errors(); len(errs) > 0 {
		t.Errorf("bad notifications: %q", errs)
	}
}
