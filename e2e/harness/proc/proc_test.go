package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestStartStopKillsGroup(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "sh.log")
	marker := "pw-proc-test-" + strconv.Itoa(os.Getpid())
	// A shell with a child that ignores SIGTERM: Stop must escalate to
	// SIGKILL for the whole group.
	script := fmt.Sprintf(`echo started; trap '' TERM; sleep 300 & echo child $!; sleep 301; : %s`, marker)
	p, err := Start(Spec{Name: "sh", Path: "sh", Args: []string{"-c", script}, LogFile: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := Poll(context.Background(), 5*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(LogTail(log, 5), "child ") {
			return errors.New("no child yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var child int
	for _, line := range strings.Split(LogTail(log, 5), "\n") {
		if v, ok := strings.CutPrefix(line, "child "); ok {
			child, _ = strconv.Atoi(v)
		}
	}
	if child == 0 || !Alive(child) {
		t.Fatalf("child %d not running; log:\n%s", child, LogTail(log, 5))
	}
	if got := Find(marker); len(got) != 1 || got[0] != p.Pid() {
		t.Errorf("Find(%q) = %v, want [%d]", marker, got, p.Pid())
	}
	found := false
	for _, x := range Descendants(p.Pid()) {
		found = found || x == child
	}
	if !found {
		t.Errorf("Descendants(%d) = %v, want to include %d", p.Pid(), Descendants(p.Pid()), child)
	}
	if _, err := Attach("sh", p.Pid(), "not-in-cmdline", ""); err == nil {
		t.Error("Attach accepted a pid whose command line does not match")
	}
	a, err := Attach("sh", p.Pid(), marker, log)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := a.Stop(500 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if Alive(child) {
		t.Errorf("group member %d survived Stop", child)
	}
	if !p.Wait(5*time.Second) || !p.Exited() {
		t.Error("process not reaped")
	}
	t.Logf("stopped in %v", time.Since(start))
	if err := p.Stop(time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestFreePortAndPortOpen(t *testing.T) {
	port, err := FreePort()
	if err != nil || port <= 0 {
		t.Fatalf("FreePort = %d, %v", port, err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if PortOpen(addr) {
		t.Errorf("%s open", addr)
	}
	if err := WaitPortClosed(addr, time.Second); err != nil {
		t.Error(err)
	}
}

func TestPollStopAndTimeout(t *testing.T) {
	n := 0
	err := Poll(context.Background(), 5*time.Second, time.Millisecond, func() error {
		n++
		return fmt.Errorf("fatal: %w", ErrStop)
	})
	if !errors.Is(err, ErrStop) || n != 1 {
		t.Errorf("Poll with ErrStop: %v after %d calls", err, n)
	}
	err = Poll(context.Background(), 50*time.Millisecond, 10*time.Millisecond, func() error { return errors.New("never") })
	if err == nil || !strings.Contains(err.Error(), "never") {
		t.Errorf("Poll timeout error %v should carry the last error", err)
	}
}

func TestLogTailAndPidFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "x.log")
	var b strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := LogTail(f, 2); got != "line 98\nline 99" {
		t.Errorf("LogTail = %q", got)
	}
	if LogTail(filepath.Join(dir, "missing"), 3) != "" {
		t.Error("LogTail of a missing file")
	}
	pf := filepath.Join(dir, "x.pid")
	if err := WritePidFile(pf, 4242); err != nil {
		t.Fatal(err)
	}
	if pid, err := ReadPidFile(pf); err != nil || pid != 4242 {
		t.Errorf("ReadPidFile = %d, %v", pid, err)
	}
}

func TestStartOnFreePort(t *testing.T) {
	log := filepath.Join(t.TempDir(), "x.log")
	var tried []int
	err := StartOnFreePort(0, log, func(port int) error {
		tried = append(tried, port)
		if len(tried) == 1 {
			return fmt.Errorf("bind: %w", ErrPortInUse)
		}
		return nil
	})
	if err != nil || len(tried) != 2 || tried[0] == 0 || tried[1] == 0 {
		t.Fatalf("err %v, tried %v; want a second free port after ErrPortInUse", err, tried)
	}

	// The log saying so is enough; three tries at the most.
	if err := os.WriteFile(log, []byte("listen tcp 127.0.0.1:1: bind: address already in use\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tried = nil
	failed := errors.New("did not start")
	if err := StartOnFreePort(0, log, func(port int) error { tried = append(tried, port); return failed }); !errors.Is(err, failed) || len(tried) != 3 {
		t.Errorf("err %v after %d tries, want %v after 3", err, len(tried), failed)
	}

	// A port given is used as is, once.
	tried = nil
	if err := StartOnFreePort(4321, log, func(port int) error { tried = append(tried, port); return failed }); !errors.Is(err, failed) || len(tried) != 1 || tried[0] != 4321 {
		t.Errorf("err %v, tried %v; want one try on 4321", err, tried)
	}

	// Any other failure is final.
	tried = nil
	_ = os.Remove(log)
	if err := StartOnFreePort(0, log, func(port int) error { tried = append(tried, port); return failed }); !errors.Is(err, failed) || len(tried) != 1 {
		t.Errorf("err %v after %d tries, want one", err, len(tried))
	}
}
