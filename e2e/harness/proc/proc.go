// Package proc starts and stops the real daemons the e2e harness runs
// (containerd, the registry, Prometheus): each in its own process group with
// its output appended to a log file, stopped with SIGTERM then SIGKILL.
// It also picks free loopback ports and finds processes by command line, so
// the harness can prove it left nothing behind.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Spec describes a process to start.
type Spec struct {
	// Name is a short human name used in errors ("containerd").
	Name string
	// Path is the binary: an absolute path or a name looked up in PATH.
	Path string
	Args []string
	// Dir is the working directory (empty: the caller's).
	Dir string
	// Env is appended to the caller's environment.
	Env []string
	// LogFile receives stdout and stderr (appended; created if missing).
	LogFile string
	// Detach starts the process in a new session (setsid) so it outlives the
	// caller (pwlab up). Otherwise it gets its own process group (setpgid).
	Detach bool
}

// Process is a started (or attached) daemon.
type Process struct {
	name    string
	pid     int
	logFile string
	cmd     *exec.Cmd     // nil when attached
	done    chan struct{} // closed when a child started by us has been reaped
	waitErr error
}

// Start starts spec's process. It returns once the process exists; readiness
// is the caller's business (see Poll).
func Start(spec Spec) (*Process, error) {
	if spec.Name == "" {
		spec.Name = filepath.Base(spec.Path)
	}
	bin, err := exec.LookPath(spec.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Name, err)
	}
	var out *os.File
	if spec.LogFile != "" {
		if err := os.MkdirAll(filepath.Dir(spec.LogFile), 0o755); err != nil {
			return nil, err
		}
		out, err = os.OpenFile(spec.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer out.Close() // the child keeps its own descriptor
	}
	cmd := exec.Command(bin, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = append(os.Environ(), spec.Env...)
	if out != nil {
		// An *os.File (not a pipe) so the child never blocks on, or dies
		// with, a parent that has gone away.
		cmd.Stdout, cmd.Stderr = out, out
	}
	if spec.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p := &Process{name: spec.Name, pid: cmd.Process.Pid, logFile: spec.LogFile, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Attach returns a Process for a running pid that this program did not start
// (pwlab down reads it from a pid file). To guard against pid reuse, the
// process's command line must contain cmdlineContains.
func Attach(name string, pid int, cmdlineContains, logFile string) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("%s: bad pid %d", name, pid)
	}
	if !alive(pid) {
		return nil, fmt.Errorf("%s: pid %d is not running", name, pid)
	}
	cl, err := Cmdline(pid)
	if err != nil {
		return nil, fmt.Errorf("%s: pid %d: %w", name, pid, err)
	}
	if !strings.Contains(cl, cmdlineContains) {
		return nil, fmt.Errorf("%s: pid %d is %q, not ours (want %q in its command line)", name, pid, cl, cmdlineContains)
	}
	return &Process{name: name, pid: pid, logFile: logFile}, nil
}

// Pid is the process id (also its process group id).
func (p *Process) Pid() int { return p.pid }

// Name is the human name given at start.
func (p *Process) Name() string { return p.name }

// LogFile is where the process's output goes.
func (p *Process) LogFile() string { return p.logFile }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	if p.done != nil {
		select {
		case <-p.done:
			return true
		default:
			// A zombie not yet reaped by the Wait goroutine has exited too.
			return !alive(p.pid)
		}
	}
	return !alive(p.pid)
}

// ExitErr is the wait error once a child started by Start has exited
// (nil for exit status 0, and nil while running or when attached).
func (p *Process) ExitErr() error {
	if p.done == nil || !p.Exited() {
		return nil
	}
	select {
	case <-p.done: // reaped: waitErr is set
		return p.waitErr
	case <-time.After(time.Second):
		return nil
	}
}

// Wait waits up to timeout for the process to end and reports whether it did.
func (p *Process) Wait(timeout time.Duration) bool {
	if p.done != nil {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-p.done:
			return true
		case <-t.C:
			return false
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		if !alive(p.pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Signal sends sig to the process's group (or to the process alone if it
// does not lead its own group).
func (p *Process) Signal(sig syscall.Signal) error {
	target := p.pid
	if pg, err := syscall.Getpgid(p.pid); err == nil && pg == p.pid {
		target = -p.pid
	}
	err := syscall.Kill(target, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Stop sends SIGTERM to the process group, waits up to grace, then sends
// SIGKILL; it returns once the process and every other member of its group
// are gone, or an error if they are still there 10s after SIGKILL.
// Stopping an exited process only waits for (and kills) group leftovers.
func (p *Process) Stop(grace time.Duration) error {
	leader := p.ownGroup()
	if !p.Exited() {
		_ = p.Signal(syscall.SIGTERM)
		if !p.Wait(grace) {
			_ = p.Signal(syscall.SIGKILL)
			if !p.Wait(10 * time.Second) {
				return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.pid)
			}
		}
	}
	if !leader {
		return nil
	}
	// The leader is gone; other members of its group may still be exiting
	// (or ignore SIGTERM).
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := groupMembers(p.pid)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d): group members %v still alive after SIGKILL", p.name, p.pid, left)
		}
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		time.Sleep(20 * time.Millisecond)
	}
}

// ownGroup reports whether the process leads its own process group (true
// for everything Start starts; checked for attached ones).
func (p *Process) ownGroup() bool {
	if p.cmd != nil {
		return true
	}
	st, ok := stat(p.pid)
	return ok && st.pgrp == p.pid
}

// LogTail returns the last n lines of the process's log.
func (p *Process) LogTail(n int) string { return LogTail(p.logFile, n) }

// alive reports whether pid exists and has not finished exiting. A zombie
// (an orphan whose reaper has not reaped it yet) counts as gone, but only
// once all its threads are gone: a multi-threaded process's leader turns
// zombie while other threads may still be exiting with its files (sockets,
// listeners) open.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	st, ok := stat(pid)
	if !ok {
		return false
	}
	switch st.state {
	case 'Z', 'X', 'x':
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		return err == nil && len(tasks) > 1
	}
	return true
}

type procStat struct {
	state      byte
	ppid, pgrp int
}

// stat parses /proc/pid/stat: "pid (comm) S ppid pgrp ..."; comm may hold
// spaces and parentheses, so the fields start after the last ')'.
func stat(pid int) (procStat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 || len(f[0]) == 0 {
		return procStat{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return procStat{}, false
	}
	return procStat{state: f[0][0], ppid: ppid, pgrp: pgrp}, true
}

// groupMembers returns the live processes in process group pgid.
func groupMembers(pgid int) []int {
	var out []int
	for _, pid := range allPids() {
		if st, ok := stat(pid); ok && st.pgrp == pgid && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// Alive reports whether pid is a live (non-zombie) process.
func Alive(pid int) bool { return alive(pid) }

// Cmdline returns pid's command line with arguments joined by spaces.
func Cmdline(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")), nil
}

// Find returns the live processes (other than this one) whose command line
// contains substr.
func Find(substr string) []int {
	var pids []int
	self := os.Getpid()
	for _, pid := range allPids() {
		if pid == self || !alive(pid) {
			continue
		}
		if cl, err := Cmdline(pid); err == nil && strings.Contains(cl, substr) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Descendants returns every live descendant of pid (children first, then
// their children, and so on).
func Descendants(pid int) []int {
	children := map[int][]int{}
	for _, p := range allPids() {
		if pp, ok := ppid(p); ok {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, c := range children[cur] {
			if alive(c) {
				out = append(out, c)
			}
			queue = append(queue, c)
		}
	}
	return out
}

// KillTree SIGKILLs pid and all its descendants and waits up to timeout for
// them to go.
func KillTree(pid int, timeout time.Duration) error {
	pids := append(Descendants(pid), pid)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still alive after SIGKILL: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func allPids() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func ppid(pid int) (int, bool) {
	st, ok := stat(pid)
	return st.ppid, ok
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ErrPortInUse, returned by a StartOnFreePort start function, says the
// port it was given will not do: StartOnFreePort tries another.
var ErrPortInUse = errors.New("port in use")

// StartOnFreePort calls start with port, or, when port is 0, with a port
// on 127.0.0.1 that was free a moment ago. A port picked here may be taken
// before the process binds it: when start fails with ErrPortInUse, or the
// tail of logFile says "address already in use", it tries another port,
// up to three in all.
func StartOnFreePort(port int, logFile string, start func(port int) error) error {
	for attempt := 0; ; attempt++ {
		p := port
		if port == 0 {
			var err error
			if p, err = FreePort(); err != nil {
				return err
			}
		}
		err := start(p)
		if err == nil || port != 0 || attempt >= 2 {
			return err
		}
		if !errors.Is(err, ErrPortInUse) && !strings.Contains(LogTail(logFile, 50), "address already in use") {
			return err
		}
	}
}

// PortOpen reports whether something accepts TCP connections on addr.
func PortOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// WaitPortClosed waits until nothing accepts connections on addr.
func WaitPortClosed(addr string, timeout time.Duration) error {
	return Poll(context.Background(), timeout, 50*time.Millisecond, func() error {
		if PortOpen(addr) {
			return fmt.Errorf("%s still accepts connections", addr)
		}
		return nil
	})
}

// Poll calls cond every interval until it returns nil, ctx ends or timeout
// passes; the error then wraps cond's last error. A cond error wrapping
// ErrStop ends polling at once.
func Poll(ctx context.Context, timeout, interval time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrStop) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// ErrStop, wrapped in a Poll condition's error, ends polling early.
var ErrStop = errors.New("stop polling")

// LogTail returns the last n lines of the file at path ("" if unreadable).
func LogTail(path string, n int) string {
	if path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, 0)
	}
	b := make([]byte, max)
	k, _ := f.Read(b)
	lines := strings.Split(strings.TrimRight(string(b[:k]), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WritePidFile writes pid to path.
func WritePidFile(path string, pid int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// ReadPidFile reads a pid written by WritePidFile.
func ReadPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// WaitHTTPReady polls url until it answers 200, for at most timeout,
// giving up early when p exits. On failure it stops p and returns an error
// with the tail of p's log, so a daemon that never came up says why.
func WaitHTTPReady(ctx context.Context, p *Process, client *http.Client, url string, timeout time.Duration) error {
	err := Poll(ctx, timeout, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v: %w", p.Name(), p.ExitErr(), ErrStop)
		}
		reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("%w: %w", err, ErrStop)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
	if err != nil {
		_ = p.Stop(5 * time.Second)
		return fmt.Errorf("%s not ready at %s: %w\n--- %s (tail) ---\n%s", p.Name(), url, err, p.LogFile(), LogTail(p.LogFile(), 30))
	}
	return nil
}
