#!/usr/bin/env bash
# make demo / make demo-down: real containerd + registry on 127.0.0.1 (via
# e2e/cmd/pwlab), then the aggregator and an agent, then what they see.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-/tmp/pullwatch-demo}
GRPC=127.0.0.1:19400
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
  stop_pid agent
  stop_pid aggregator
  if [ -d "$DEMO_DIR" ]; then
    (cd e2e && go run ./cmd/pwlab down --dir "$DEMO_DIR") || true
  fi
  echo "demo stopped"
}

up() {
  if [ "$(id -u)" != 0 ]; then
    echo "make demo needs root: it installs Debian packages and starts containerd" >&2
    exit 2
  fi
  bash scripts/install-deps.sh
  [ -x "$BIN/pullwatch-agent" ] || make build
  mkdir -p "$DEMO_DIR"
  stop_pid agent; stop_pid aggregator

  say "starting containerd and a registry on 127.0.0.1, pushing and pulling demo images"
  (cd e2e && go run ./cmd/pwlab up --dir "$DEMO_DIR")
  # shellcheck disable=SC1091
  . "$DEMO_DIR/env"

  say "starting pullwatch-aggregator (gRPC $GRPC, HTTP $HTTP)"
  nohup "$BIN/pullwatch-aggregator" --grpc-listen "$GRPC" --http-listen "$HTTP" --stale-after 1m \
    > "$DEMO_DIR/aggregator.log" 2>&1 & echo $! > "$DEMO_DIR/aggregator.pid"

  say "starting pullwatch-agent run (node demo-node, every 15s)"
  nohup "$BIN/pullwatch-agent" run --aggregator "$GRPC" --cri-endpoint "$PULLWATCH_CRI_ENDPOINT" \
    --node-name demo-node --interval 15s > "$DEMO_DIR/agent.log" 2>&1 & echo $! > "$DEMO_DIR/agent.pid"

  say "pullwatch-agent check (one round on this node)"
  "$BIN/pullwatch-agent" check --cri-endpoint "$PULLWATCH_CRI_ENDPOINT" --node-name demo-node --log-level warn || true

  say "the aggregator's pullwatch_ metrics"
  for _ in $(seq 60); do
    if curl -fsS "http://$HTTP/metrics" 2>/dev/null | grep -q '^pullwatch_node_image_status{'; then break; fi
    sleep 0.5
  done
  curl -fsS "http://$HTTP/metrics" | grep '^pullwatch_' | grep -v '^pullwatch_reports_' || {
    echo "the aggregator shows no node yet; logs:"; tail -20 "$DEMO_DIR/agent.log" "$DEMO_DIR/aggregator.log"; exit 1; }

  say "running"
  echo "metrics:    http://$HTTP/metrics"
  echo "logs:       $DEMO_DIR/agent.log  $DEMO_DIR/aggregator.log"
  echo "CRI:        $PULLWATCH_CRI_ENDPOINT   registry: $PULLWATCH_REGISTRY"
  echo "stop with:  make demo-down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
