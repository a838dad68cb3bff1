#!/usr/bin/env bash
# Build the real Kubernetes binaries the e2e tests run from the pinned modules
# under hack/kube/:
#
#   hack/kube/kubernetes  k8s.io/kubernetes/cmd/{kube-apiserver,kubelet,
#                         kube-controller-manager,kube-scheduler,kube-proxy,kubectl}
#                         (k8s.io/kubernetes v1.34.x)
#   hack/kube/etcd        go.etcd.io/etcd/server/v3 (v3.5.x)
#
# kube-apiserver and etcd back the API tests (e2e/harness/kubeapi); the others
# make the cluster in a box a real cluster (real kubelets on every box node).
# Prometheus is built too (github.com/prometheus/prometheus, pinned below):
# the box's Prometheus finds the aggregator with kubernetes_sd_configs, which
# Debian's prometheus 2.42 package is built without.
# `build-kube.sh apiserver` builds only etcd and kube-apiserver.
#
# into ${PULLWATCH_KUBE_BIN:-<repo>/.cache/kube/bin}.
#
# Idempotent: a binary is rebuilt only when it is missing or when the version
# pinned in its go.mod differs from the one recorded in the stamp file
# (<bin>/versions) at its last build. A cold build takes minutes (kube-apiserver
# is big: ~3 min on 2 cores); a warm Go build cache brings that to ~30 s.
# Set PULLWATCH_KUBE_REBUILD=1 to force a rebuild.
#
# The modules are not part of go.work: everything here runs with GOWORK=off.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${PULLWATCH_KUBE_BIN:-$REPO/.cache/kube/bin}
STAMP=$BIN/versions
export GOWORK=off CGO_ENABLED=0
# Respect a caller's GOFLAGS, but never let it turn on -mod=mod/vendor here:
# the committed go.mod/go.sum are the pin.
export GOFLAGS="${GOFLAGS:-} -mod=readonly"

log() { printf 'build-kube: %s\n' "$*"; }

command -v go >/dev/null 2>&1 || { log "the go toolchain is not on PATH" >&2; exit 1; }
mkdir -p "$BIN"

# One build at a time per bin dir (parallel test runs may call this script).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BIN/.lock"
  if ! flock -n 9; then
    log "another build-kube.sh is running for $BIN; waiting for it"
    flock 9
  fi
fi

# pinned MODDIR MODULE: the version of MODULE that MODDIR's go.mod selects.
pinned() {
  (cd "$REPO/$1" && go list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$2")
}

# stamped NAME: what the stamp file says NAME was last built from ("" if none).
stamped() {
  [[ -f $STAMP ]] || return 0
  awk -F= -v k="$1" '$1 == k { print substr($0, length(k) + 2) }' "$STAMP"
}

# stamp NAME VALUE: record VALUE for NAME, keeping the other lines.
stamp() {
  local tmp
  tmp=$(mktemp "$STAMP.XXXXXX")
  { [[ -f $STAMP ]] && awk -F= -v k="$1" '$1 != k' "$STAMP"; printf '%s=%s\n' "$1" "$2"; } >"$tmp" || true
  sort -o "$tmp" "$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$STAMP"
}

# build NAME MODDIR PKG WANT LDFLAGS
build() {
  local name=$1 moddir=$2 pkg=$3 want=$4 ldflags=$5
  local have
  have=$(stamped "$name")
  if [[ -x $BIN/$name && $have == "$want" && ${PULLWATCH_KUBE_REBUILD:-} != 1 ]]; then
    log "$name up to date ($want) in $BIN"
    return 0
  fi
  if [[ ! -x $BIN/$name ]]; then
    log "$name missing: building $want"
  elif [[ ${PULLWATCH_KUBE_REBUILD:-} == 1 ]]; then
    log "$name: rebuild forced (PULLWATCH_KUBE_REBUILD=1): building $want"
  else
    log "$name was built from '${have:-unknown}', pinned now: building $want"
  fi
  log "$name: go build -trimpath $pkg (in $moddir; cold builds take minutes)"
  local start=$SECONDS tmp="$BIN/.$name.tmp.$$"
  trap "rm -f '$tmp'" EXIT
  (cd "$REPO/$moddir" && go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg")
  mv -f "$tmp" "$BIN/$name"
  trap - EXIT
  stamp "$name" "$want"
  log "$name: built in $((SECONDS - start))s: $("$BIN/$name" --version 2>&1 | head -n 3 | tr '\n' ' ')"
}

log "resolving pinned versions"
K8S=$(pinned hack/kube/kubernetes k8s.io/kubernetes)
ETCD=$(pinned hack/kube/etcd go.etcd.io/etcd/server/v3)
[[ $K8S =~ ^v([0-9]+)\.([0-9]+)\. ]] || { log "cannot parse k8s.io/kubernetes version '$K8S'" >&2; exit 1; }
K8S_MAJOR=${BASH_REMATCH[1]} K8S_MINOR=${BASH_REMATCH[2]}
log "kubernetes $K8S, etcd $ETCD -> $BIN"

# The version kube-apiserver reports (/version, --version) is set at link
# time, as Kubernetes' own hack/lib/version.sh does; without it the server
# says v0.0.0-master and clients' version checks misbehave.
K8S_LDFLAGS="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $p.gitVersion=$K8S -X $p.gitMajor=$K8S_MAJOR -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
done

build etcd hack/kube/etcd go.etcd.io/etcd/server/v3 "$ETCD" "-s -w"
build kube-apiserver hack/kube/kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$K8S" "$K8S_LDFLAGS"
if [[ ${1:-all} != apiserver ]]; then
  for cmd in kubelet kube-controller-manager kube-scheduler kube-proxy kubectl; do
    build "$cmd" hack/kube/kubernetes "k8s.io/kubernetes/cmd/$cmd" "$K8S" "$K8S_LDFLAGS"
  done
  # Prometheus 3.16 (its Go module versions are v0.3XX.Y): go install of a
  # version pins it by its own go.mod, like a release build.
  PROMETHEUS=v0.316.0
  if [[ -x $BIN/prometheus && $(stamped prometheus) == "$PROMETHEUS" && ${PULLWATCH_KUBE_REBUILD:-} != 1 ]]; then
    log "prometheus up to date ($PROMETHEUS) in $BIN"
  else
    log "prometheus: go install github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS (cold builds take minutes)"
    start=$SECONDS
    tmpbin=$(mktemp -d "$BIN/.prometheus.XXXXXX")
    GOBIN=$tmpbin GOFLAGS=-mod=mod go install -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS#v0.}" "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS"
    mv -f "$tmpbin/prometheus" "$BIN/prometheus"
    rm -rf "$tmpbin"
    stamp prometheus "$PROMETHEUS"
    log "prometheus: built in $((SECONDS - start))s"
  fi
fi
log "done: $(cat "$STAMP" | tr '\n' ' ')"
