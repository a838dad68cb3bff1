#!/usr/bin/env bash
# make demo / make demo-down: the cluster in a box (e2e/cmd/pwlab cluster):
# three "nodes" in network namespaces, each with its own containerd and
# agent, registries, the aggregator, Prometheus and Alertmanager; node-2
# loses its egress, and the summary shows what pullwatch makes of it.
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
  if [ -d "$DEMO_DIR" ]; then
    (cd e2e && go run ./cmd/pwlab cluster down --dir "$DEMO_DIR") || true
    # A single-node demo from an older checkout, if one is still up.
    stop_pid agent; stop_pid aggregator
    (cd e2e && go run ./cmd/pwlab down --dir "$DEMO_DIR") || true
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

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
