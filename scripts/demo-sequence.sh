#!/usr/bin/env bash
# make demo-sequence: the README's demo commands in the orders a user runs
# them, both demos side by side, each step checked, in a DEMO_DIR of its own
# (the shipped /tmp/pullwatch-demo is left alone):
#
#   make demo; make demo-cluster (side by side: two boxes, two subnets)
#   make demo-down                (both stop; DEMO_DIR is gone)
#   make demo-cluster; make demo  (the reverse order)
#   make demo-down
#   make demo-cluster; SIGKILL its pwlab; make demo-down (what a killed
#   holder left is stopped too)
#
# Not in make test (about 5 minutes with the images and binaries cached); root. Run
# under the box lock when other box runs share the machine:
#   flock /tmp/pullwatch-box.lock make demo-sequence
set -euo pipefail
cd "$(dirname "$0")/.."
export DEMO_DIR=${DEMO_SEQUENCE_DIR:-/tmp/pullwatch-demo-sequence}
say() { printf '\n\033[1m== demo-sequence: %s\033[0m\n' "$*"; }
fail() { echo "demo-sequence: FAIL: $*" >&2; exit 1; }
KUBECTL=$PWD/.cache/kube/bin/kubectl
[ -x "$KUBECTL" ] || KUBECTL=${PULLWATCH_KUBE_BIN:-}/kubectl

up_demo() {
  say "make demo"
  make demo
  (cd e2e && go run ./cmd/pwlab cluster status --dir "$DEMO_DIR") >/dev/null || fail "make demo is not up"
}

up_cluster() {
  say "make demo-cluster"
  make demo-cluster
  local kc
  kc=$(sed -n 's/^KUBECONFIG=//p' "$DEMO_DIR/kube-summary.txt")
  [ -n "$kc" ] || fail "no KUBECONFIG line in $DEMO_DIR/kube-summary.txt"
  "$KUBECTL" --kubeconfig "$kc" -n pullwatch rollout status ds/pullwatch-agent --timeout=2m || fail "the agents are not ready"
  "$KUBECTL" --kubeconfig "$kc" -n pullwatch rollout status deploy/pullwatch-aggregator --timeout=2m || fail "the aggregator is not ready"
}

down() {
  say "make demo-down"
  make demo-down
  [ ! -e "$DEMO_DIR" ] || fail "make demo-down left $DEMO_DIR"
  local left
  left=$(pgrep -af -- "$DEMO_DIR" | grep -v -e demo-sequence -e pgrep || true)
  [ -z "$left" ] || fail "processes left: $left"
  if grep -qs "\"dir\": \"$DEMO_DIR" /run/pullwatch-box/*.json; then fail "a box record for $DEMO_DIR is left"; fi
  if grep -q " $DEMO_DIR/" /proc/self/mountinfo; then fail "mounts left under $DEMO_DIR"; fi
}

trap 'make demo-down >/dev/null 2>&1 || true' EXIT
start=$(date +%s)
make demo-down >/dev/null
up_demo; up_cluster; down
up_cluster; up_demo; down
say "make demo-cluster, then its pwlab is killed (SIGKILL)"
up_cluster
kill -KILL "$(cat "$DEMO_DIR/kube-serve.pid")"
down
trap - EXIT
say "passed in $(( $(date +%s) - start ))s"
