#!/usr/bin/env bash
# Build the Helm CLI that checks deploy/helm/pullwatch (helm lint, helm
# template in e2e/deploy) from the pinned module under hack/helm/
# (helm.sh/helm/v4/cmd/helm), like scripts/build-kube.sh builds the kube
# binaries, into ${PULLWATCH_HELM_BIN:-<repo>/.cache/helm/bin}/helm.
#
# Idempotent: helm is rebuilt only when it is missing or when the version
# pinned in hack/helm/go.mod differs from the one recorded in the stamp file
# (<bin>/versions) at its last build. A cold build takes minutes on 2 cores;
# a warm Go build cache brings that to seconds. PULLWATCH_HELM_REBUILD=1
# forces a rebuild.
#
# The module is not part of go.work: everything here runs with GOWORK=off.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${PULLWATCH_HELM_BIN:-$REPO/.cache/helm/bin}
STAMP=$BIN/versions
MODDIR=hack/helm
MODULE=helm.sh/helm/v4
export GOWORK=off CGO_ENABLED=0
# Respect a caller's GOFLAGS, but never let it turn on -mod=mod/vendor here:
# the committed go.mod/go.sum are the pin.
export GOFLAGS="${GOFLAGS:-} -mod=readonly"

log() { printf 'build-helm: %s\n' "$*"; }

command -v go >/dev/null 2>&1 || { log "the go toolchain is not on PATH" >&2; exit 1; }
mkdir -p "$BIN"

# One build at a time per bin dir (parallel test runs may call this script).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BIN/.lock"
  if ! flock -n 9; then
    log "another build-helm.sh is running for $BIN; waiting for it"
    flock 9
  fi
fi

want=$(cd "$REPO/$MODDIR" && go list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$MODULE")
[[ $want =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]] || { log "cannot parse $MODULE version '$want'" >&2; exit 1; }
have=$(awk -F= '$1 == "helm" { print substr($0, 6) }' "$STAMP" 2>/dev/null || true)

if [[ -x $BIN/helm && $have == "$want" && ${PULLWATCH_HELM_REBUILD:-} != 1 ]]; then
  log "helm up to date ($want) in $BIN"
  exit 0
fi
if [[ ! -x $BIN/helm ]]; then
  log "helm missing: building $want"
elif [[ ${PULLWATCH_HELM_REBUILD:-} == 1 ]]; then
  log "helm: rebuild forced (PULLWATCH_HELM_REBUILD=1): building $want"
else
  log "helm was built from '${have:-unknown}', pinned now: building $want"
fi

# `helm version` reports what is set at link time, as Helm's own Makefile
# does (-X helm.sh/helm/v4/internal/version.version=...); without it, it
# says only the minor version compiled into the source.
LDFLAGS="-s -w -X $MODULE/internal/version.version=$want -X $MODULE/internal/version.gitTreeState=clean"

log "helm: go build -trimpath $MODULE/cmd/helm (in $MODDIR; cold builds take minutes)"
start=$SECONDS
tmp="$BIN/.helm.tmp.$$"
trap "rm -f '$tmp'" EXIT
(cd "$REPO/$MODDIR" && go build -trimpath -ldflags "$LDFLAGS" -o "$tmp" "$MODULE/cmd/helm")
mv -f "$tmp" "$BIN/helm"
trap - EXIT

stamptmp=$(mktemp "$STAMP.XXXXXX")
{ [[ -f $STAMP ]] && awk -F= '$1 != "helm"' "$STAMP"; printf 'helm=%s\n' "$want"; } >"$stamptmp" || true
sort -o "$stamptmp" "$stamptmp"
chmod 0644 "$stamptmp"
mv -f "$stamptmp" "$STAMP"
log "helm: built in $((SECONDS - start))s: $("$BIN/helm" version --short 2>&1 | head -n 1)"
