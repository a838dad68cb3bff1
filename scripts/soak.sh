#!/usr/bin/env bash
# make soak: the cluster in a box (e2e/cmd/pwlab) for SOAK_DURATION (default
# 1h) with a fault toggled every SOAK_TOGGLE (default 1m) — a node's egress to
# the upstream, to the mirror, or to both cut, then healed, node by node — and
# the RSS, open file descriptors and threads of every pullwatch process (the
# aggregator's goroutines from its /metrics too) at the start, every
# SOAK_SAMPLE (default 5m) and at the end, in SOAK_DIR/soak.tsv. Not part of
# make test: it takes an hour. Needs root, like make demo.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_DIR=${SOAK_DIR:-/tmp/pullwatch-soak}
SOAK_DURATION=${SOAK_DURATION:-1h}
SOAK_TOGGLE=${SOAK_TOGGLE:-1m}
SOAK_SAMPLE=${SOAK_SAMPLE:-5m}
HTTP_PORT=${SOAK_HTTP_PORT:-18090}
BIN=$PWD/bin

secs() { # 1h, 5m, 30s, or plain seconds
  local v=$1
  case $v in
    *h) echo $((${v%h} * 3600)) ;;
    *m) echo $((${v%m} * 60)) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}

if [ "$(id -u)" != 0 ]; then
  echo "make soak needs root: it creates network namespaces and starts containerd" >&2
  exit 2
fi
bash scripts/install-deps.sh # make soak built the binaries
mkdir -p "$SOAK_DIR"
pwlab() { (cd e2e && go run ./cmd/pwlab cluster "$@" --dir "$SOAK_DIR"); }
trap 'pwlab down >/dev/null 2>&1 || true' EXIT
pwlab up --bin "$BIN" --http-port "$HTTP_PORT" --break-node ""

state=$SOAK_DIR/cluster.json
out=$SOAK_DIR/soak.tsv
printf 'elapsed_s\tprocess\tpid\trss_kib\tfds\tthreads\tgoroutines\n' >"$out"

sample() {
  local elapsed=$1 name pid
  # "name pid" pairs from pwlab's state: each node's agent, the aggregator.
  while read -r name pid; do
    [ -d "/proc/$pid" ] || { printf '%s\t%s\t%s\tgone\t\t\t\n' "$elapsed" "$name" "$pid" >>"$out"; continue; }
    local rss fds threads gor=""
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    if [ "$name" = aggregator ]; then
      gor=$(curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^go_goroutines / {print $2}')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$elapsed" "$name" "$pid" "$rss" "$fds" "$threads" "$gor" >>"$out"
  done < <(
    tr -d '\n ' <"$state" | grep -oE '"name":"node-[0-9]+"[^}]*"agentPid":[0-9]+' | sed -E 's/"name":"([^"]+)".*"agentPid":([0-9]+)/agent-\1 \2/'
    tr -d '\n ' <"$state" | grep -oE '"aggregator":\{[^}]*"pid":[0-9]+' | sed -E 's/.*"pid":([0-9]+)/aggregator \1/'
  )
}

duration=$(secs "$SOAK_DURATION") toggle=$(secs "$SOAK_TOGGLE") every=$(secs "$SOAK_SAMPLE")
start=$(date +%s) next_sample=0 i=0
faults=("upstream" "mirror" "upstream,mirror")
sample 0
while :; do
  elapsed=$(($(date +%s) - start))
  ((elapsed < duration)) || break
  if ((i % 2 == 0)); then
    node="node-$(((i / 2) % 3 + 1))" from=${faults[$(((i / 2) % 3))]}
    echo "soak ${elapsed}s: break $node from $from"
    pwlab break --node "$node" --from "$from"
  else
    echo "soak ${elapsed}s: heal"
    pwlab heal
  fi
  i=$((i + 1))
  if ((elapsed >= next_sample)); then
    ((elapsed == 0)) || sample "$elapsed"
    next_sample=$((next_sample + every))
  fi
  sleep "$toggle"
done
pwlab heal
sleep 60 # a round or two healed
sample "$(($(date +%s) - start))"
echo "soak done: $out"
cat "$out"
