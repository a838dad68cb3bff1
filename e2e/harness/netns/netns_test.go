package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

func need(t *testing.T) {
	t.Helper()
	proc.RequireReal(t, Binaries...)
}

// TestNetwork: two namespaces on a bridge reach each other and the
// bridge's address, reach nothing beyond it, and Block cuts exactly one
// address and port; Delete leaves nothing.
func TestNetwork(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := Create(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = n.Delete(context.Background())
		}
	})
	a, err := n.AddNamespace(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.AddNamespace(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("network %s: bridge %s %s gateway %s; a=%s (%s) b=%s (%s)", n.ID(), n.Bridge(), n.Subnet(), n.Gateway(), a.IP(), a.Netns(), b.IP(), b.Netns())
	if !n.Subnet().Contains(a.IP()) || !n.Subnet().Contains(n.Gateway()) || a.IP().Equal(b.IP()) {
		t.Fatalf("addresses: subnet %s gateway %s a %s b %s", n.Subnet(), n.Gateway(), a.IP(), b.IP())
	}

	// Two listeners in a, one on the gateway in the root namespace.
	la1, err := a.Listen("tcp", net.JoinHostPort(a.IP().String(), "7001"))
	if err != nil {
		t.Fatal(err)
	}
	defer la1.Close()
	la2, err := a.Listen("tcp", net.JoinHostPort(a.IP().String(), "7002"))
	if err != nil {
		t.Fatal(err)
	}
	defer la2.Close()
	lgw, err := net.Listen("tcp", net.JoinHostPort(n.Gateway().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer lgw.Close()
	for _, l := range []net.Listener{la1, la2, lgw} {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	dial := func(ns *Namespace, addr string) error {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := ns.DialContext(dctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	mustDial := func(ns *Namespace, addr string) {
		t.Helper()
		if err := dial(ns, addr); err != nil {
			t.Fatalf("from %s to %s: %v", ns.Name(), addr, err)
		}
	}
	mustDial(b, la1.Addr().String())
	mustDial(b, la2.Addr().String())
	mustDial(b, lgw.Addr().String())
	// The root namespace reaches a through the bridge.
	if c, err := net.DialTimeout("tcp", la1.Addr().String(), 2*time.Second); err != nil {
		t.Fatalf("from the root namespace to %s: %v", la1.Addr(), err)
	} else {
		c.Close()
	}
	// Nothing beyond the bridge: no route at all.
	if err := dial(b, "192.0.2.1:80"); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("from b to 192.0.2.1:80: %v, want network unreachable", err)
	}
	if out, err := b.Run(ctx, "ip", "-4", "route", "show"); err != nil || strings.Contains(out, "default") {
		t.Errorf("routes in b: %q %v", out, err)
	}

	// Block cuts b → a:7001 only; a itself and b → a:7002 still work.
	r, err := b.Block(ctx, a.IP(), 7001, Reject)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(b, la1.Addr().String()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("blocked dial: %v, want connection refused", err)
	}
	mustDial(b, la2.Addr().String())
	mustDial(a, la1.Addr().String())
	rules, err := b.Rules(ctx)
	if err != nil || len(rules) != 1 || !strings.Contains(rules[0], a.IP().String()) {
		t.Errorf("rules %q %v", rules, err)
	}
	if err := r.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(ctx); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	mustDial(b, la1.Addr().String())

	// Drop makes the connection time out instead.
	if _, err := b.Block(ctx, a.IP(), 0, Drop); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = b.DialContext(dctx, "tcp", la2.Addr().String())
	dcancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
		t.Errorf("dropped dial: %v, want a timeout", err)
	}
	if err := b.Unblock(ctx); err != nil {
		t.Fatal(err)
	}
	mustDial(b, la2.Addr().String())

	// A process started in the namespace sees its address.
	spec, err := a.Spec(proc.Spec{Name: "ip", Path: "ip", Args: []string{"-4", "-o", "addr", "show", "dev", "eth0"}, LogFile: filepath.Join(t.TempDir(), "ip.log")})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proc.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Wait(10 * time.Second) {
		t.Fatal("ip did not exit")
	}
	if tail := p.LogTail(5); !strings.Contains(tail, a.IP().String()+"/24") {
		t.Errorf("ip addr in a: %q", tail)
	}

	// A process left running is killed by Delete, which says so.
	sleeper, err := proc.Start(proc.Spec{Name: "sleep", Path: "nsenter", Args: []string{"--net=" + b.Path(), "--", "sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	la1.Close()
	la2.Close()
	err = n.Delete(ctx)
	deleted = true
	if err == nil || !strings.Contains(err.Error(), "sleep") {
		t.Errorf("Delete with a process inside: %v, want it named", err)
	}
	if !sleeper.Wait(5 * time.Second) {
		t.Error("the process in b survived Delete")
	}
	assertGone(t, n.State())
}

// TestCleanupStale: a network whose owner died is removed by
// CleanupStale; a live one and one kept by an existing path are not.
func TestCleanupStale(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Created by a child process that then exits.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCreate$")
	cmd.Env = append(os.Environ(), "PW_NETNS_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var id string
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "network-id="); ok {
			id = strings.TrimSpace(v)
		}
	}
	dead, err := Attach(id)
	if err != nil {
		t.Fatalf("helper's network %q: %v\n%s", id, err, out)
	}
	if !dead.State().Stale() {
		t.Fatalf("network %s of an exited process is not stale: %+v", id, dead.State())
	}
	if !linkExists(dead.Bridge()) || !exists(dead.Namespaces()[0].Path()) {
		t.Fatalf("helper's network %s is not there", id)
	}

	live, err := Create(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Delete(context.Background())
	if _, err := live.AddNamespace(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(t.TempDir(), "keep")
	if err := os.WriteFile(keep, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	kept, err := Create(ctx, Options{KeepWhile: keep})
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Delete(context.Background())
	if live.Subnet().String() == kept.Subnet().String() || live.Subnet().String() == dead.Subnet().String() {
		t.Errorf("subnets clash: %s %s %s", live.Subnet(), kept.Subnet(), dead.Subnet())
	}

	removed, err := CleanupStale(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %q", removed)
	if !strings.Contains(strings.Join(removed, "\n"), id) {
		t.Errorf("CleanupStale removed %q, want network %s", removed, id)
	}
	assertGone(t, dead.State())
	if !linkExists(live.Bridge()) || !exists(live.Namespaces()[0].Path()) || !linkExists(kept.Bridge()) {
		t.Errorf("CleanupStale removed a live network")
	}
	// Once its path is gone, the kept one is stale too.
	if err := os.Remove(keep); err != nil {
		t.Fatal(err)
	}
	if _, err := CleanupStale(ctx, ""); err != nil {
		t.Fatal(err)
	}
	assertGone(t, kept.State())
	if !linkExists(live.Bridge()) {
		t.Error("the live network went")
	}
}

// TestHelperCreate is run by TestCleanupStale in a child process: it
// creates a network with one namespace and exits without deleting it.
func TestHelperCreate(t *testing.T) {
	if os.Getenv("PW_NETNS_HELPER") != "1" {
		t.Skip("helper for TestCleanupStale")
	}
	n, err := Create(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.AddNamespace(context.Background(), "orphan"); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("network-id=%s\n", n.ID())
}

func assertGone(t *testing.T, st State) {
	t.Helper()
	if linkExists(st.Bridge) {
		t.Errorf("bridge %s still there", st.Bridge)
	}
	for _, s := range st.Namespaces {
		if exists(filepath.Join("/run/netns", s.Netns)) {
			t.Errorf("namespace %s still there", s.Netns)
		}
		if linkExists(s.HostVeth) {
			t.Errorf("veth %s still there", s.HostVeth)
		}
	}
	if exists(filepath.Join(MarkerDir, st.ID+".json")) {
		t.Errorf("marker of %s still there", st.ID)
	}
}
