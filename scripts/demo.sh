#!/usr/bin/env bash
# make demo / make demo-cluster / make demo-down.
#
# make demo: the cluster in a box (e2e/cmd/pwlab cluster):
# three "nodes" in network namespaces, each with its own containerd and
# agent, registries, the aggregator, Prometheus and Alertmanager; node-2
# loses its egress, and the summary shows what pullwatch makes of it.
#
# make demo-cluster: the same box with real kubelets (e2e/cmd/pwlab kube):
# kube-apiserver, controller-manager, scheduler, 2 nodes each with a kubelet,
# containerd and kube-proxy; deploy/ installed with kubectl apply -k and the
# images built from the Dockerfiles (make images TAG=demo). RUNTIME (or
# PULLWATCH_BOX_RUNTIME) picks the nodes' containerd: containerd-1.6
# (Debian's, the default) or one scripts/build-runtimes.sh built, e.g.
# containerd-2.4 (a version = 3 config).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-/tmp/pullwatch-demo}
HTTP=127.0.0.1:18080
BIN=$PWD/bin

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_pid() { # name
  local f=$DEMO_DIR/$1.pid
  if [ -f "$f" ]; then
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  fi
}

down() {
  case "$(realpath -m "$DEMO_DIR")" in
    /|/tmp|/root|/home|/var|/run|"$(realpath -m "$HOME")") echo "demo-down: DEMO_DIR=$DEMO_DIR is not a demo's own directory" >&2; exit 2 ;;
  esac
  if [ -d "$DEMO_DIR" ]; then
    (cd e2e && go run ./cmd/pwlab kube down --dir "$DEMO_DIR") || true
    (cd e2e && go run ./cmd/pwlab cluster down --dir "$DEMO_DIR") || true
    # A single-node demo from an older checkout, if one is still up.
    stop_pid agent; stop_pid aggregator
    (cd e2e && go run ./cmd/pwlab down --dir "$DEMO_DIR") || true
    # Nothing of either demo is left in the directory: it goes, so the next
    # demo starts from nothing (a new box may get another subnet). Not while
    # something is still mounted under it (a stop that failed halfway: run
    # make demo-down again).
    if grep -q " ${DEMO_DIR%/}/" /proc/self/mountinfo; then
      echo "demo-down: mounts under $DEMO_DIR are still there; kept it (run make demo-down again):" >&2
      grep " ${DEMO_DIR%/}/" /proc/self/mountinfo | awk '{print "  " $5}' >&2
      exit 1
    fi
    rm -rf "$DEMO_DIR"
  fi
  echo "demo stopped"
}

up() {
  if [ "$(id -u)" != 0 ]; then
    echo "make demo needs root: it installs Debian packages, creates network namespaces and starts containerd" >&2
    exit 2
  fi
  bash scripts/install-deps.sh
  [ -x "$BIN/pullwatch-agent" ] && [ -x "$BIN/pullwatch-aggregator" ] || make build
  mkdir -p "$DEMO_DIR"
  say "cluster in a box: 3 nodes (network namespaces, each with its own containerd and agent), an upstream and a mirror registry, the aggregator, Prometheus and Alertmanager; then node-2 loses its egress"
  # DEMO_ALERT_FOR=15s makes the alerts fire during the demo instead of
  # after the shipped for: durations.
  (cd e2e && go run ./cmd/pwlab cluster up --dir "$DEMO_DIR" --bin "$BIN" --http-port "${HTTP##*:}" --break-node node-2 ${DEMO_ALERT_FOR:+--alert-for "$DEMO_ALERT_FOR"})
  say "running until: make demo-down"
  echo "status page: http://$HTTP/   metrics: http://$HTTP/metrics"
  echo "again:       (cd e2e && go run ./cmd/pwlab cluster status --dir $DEMO_DIR)"
}

cluster() {
  if [ "$(id -u)" != 0 ]; then
    echo "make demo-cluster needs root: it installs Debian packages, creates namespaces and runs kubelets" >&2
    exit 2
  fi
  bash scripts/install-deps.sh
  bash scripts/build-kube.sh
  local runtime=${RUNTIME:-${PULLWATCH_BOX_RUNTIME:-containerd-1.6}}
  [ "$runtime" = containerd-1.6 ] || bash scripts/build-runtimes.sh
  make images TAG=demo
  mkdir -p "$DEMO_DIR"
  say "cluster in a box with real kubelets: kube-apiserver, controller-manager, scheduler, 2 nodes (kubelet, $runtime, kube-proxy); deploy/ installed with kubectl apply -k"
  (cd e2e && go run ./cmd/pwlab kube up --dir "$DEMO_DIR" --images localhost/pullwatch --tag demo --runtime "$runtime")
}

case "${1:-up}" in
  up) up ;;
  cluster) cluster ;;
  down) down ;;
  *) echo "usage: $0 up|cluster|down" >&2; exit 2 ;;
esac
