#!/usr/bin/env bash
# Build the container runtimes the fidelity matrix (e2e/fidelity) and the
# containerd-2 box run, from their Go modules, the way build-kube.sh builds
# the kube binaries: `go install MODULE/cmd/...@VERSION`, which pins each by
# its own go.mod as a release build does, version-stamped with -X so the
# runtime reports (CRI Version, --version) the release a distribution's
# build reports; the agent gates behaviour on that version.
#
#   containerd 1.7   github.com/containerd/containerd        (newest 1.7.x served;
#                    built in hack/runtimes/containerd-1.7, see 2.0)
#   containerd 2.0   github.com/containerd/containerd/v2     (last 2.x minor that
#                    pulls through the CRI plugin's local pull path by default;
#                    its go.mod has exclude directives, which `go install
#                    pkg@version` refuses, so it builds in the pinning module
#                    hack/runtimes/containerd-2.0 instead)
#   containerd 2.4   github.com/containerd/containerd/v2     (newest 2.x served;
#                    2.1+ pull through the transfer service)
#   crictl           sigs.k8s.io/cri-tools                   (the oracle: `crictl pull`)
#
# Debian's containerd 1.6 comes from scripts/deps.txt. Each containerd goes
# with its own containerd-shim-runc-v2 into
#   ${PULLWATCH_RUNTIMES_DIR:-<repo>/.cache/runtimes}/containerd-<version>/
# and crictl into .../crictl-<version>/crictl. A binary is rebuilt only when
# it is missing (the directory name is the pin); PULLWATCH_RUNTIMES_REBUILD=1
# forces it. Cold: a few minutes each on 2 cores; warm Go build cache: seconds.
#
#   build-runtimes.sh          all of them
#   build-runtimes.sh list     print NAME=DIR lines for what is pinned here
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${PULLWATCH_RUNTIMES_DIR:-$REPO/.cache/runtimes}
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

# The pins. Keep e2e/harness/runtimes (which reads `build-runtimes.sh list`)
# and docs/node-path.md in step when they move.
CONTAINERD_17=v1.7.35
# CONTAINERD_17 and CONTAINERD_20 must match hack/runtimes/containerd-*/go.mod.
CONTAINERD_20=v2.0.14
CONTAINERD_24=v2.4.2
CRICTL=v1.37.0

log() { printf 'build-runtimes: %s\n' "$*"; }

if [[ ${1:-} == list ]]; then
  printf 'containerd-1.7=%s\n' "$DIR/containerd-${CONTAINERD_17#v}"
  printf 'containerd-2.0=%s\n' "$DIR/containerd-${CONTAINERD_20#v}"
  printf 'containerd-2.4=%s\n' "$DIR/containerd-${CONTAINERD_24#v}"
  printf 'crictl=%s\n' "$DIR/crictl-${CRICTL#v}"
  exit 0
fi

command -v go >/dev/null 2>&1 || { log "the go toolchain is not on PATH" >&2; exit 1; }
mkdir -p "$DIR"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DIR/.lock"
  if ! flock -n 9; then
    log "another build-runtimes.sh is running for $DIR; waiting for it"
    flock 9
  fi
fi

# install OUT LDFLAGS PKG@VERSION...: go install into OUT (atomically per binary).
install() {
  local out=$1 ldflags=$2
  shift 2
  local want=() pkg
  for pkg in "$@"; do
    local name=${pkg%@*}
    name=${name##*/}
    [[ -x $out/$name && ${PULLWATCH_RUNTIMES_REBUILD:-} != 1 ]] || want+=("$pkg")
  done
  if ((${#want[@]} == 0)); then
    log "$(basename "$out") up to date in $out"
    return 0
  fi
  local start=$SECONDS tmp
  tmp=$(mktemp -d "$DIR/.build.XXXXXX")
  trap "rm -rf '$tmp'" EXIT
  for pkg in "${want[@]}"; do
    log "go install $pkg (cold builds take minutes)"
    GOBIN=$tmp go install -trimpath -ldflags "-s -w $ldflags" "$pkg"
  done
  mkdir -p "$out"
  mv -f "$tmp"/* "$out"/
  rm -rf "$tmp"
  trap - EXIT
  log "$(basename "$out"): built in $((SECONDS - start))s"
}

containerd() {
  local v=$1 mod
  case $v in
  v1.*) mod=github.com/containerd/containerd ;;
  *) mod=github.com/containerd/containerd/${v%%.*} ;;
  esac
  install "$DIR/containerd-${v#v}" "-X $mod/version.Version=$v -X $mod/version.Revision=module-$v" \
    "$mod/cmd/containerd@$v" "$mod/cmd/containerd-shim-runc-v2@$v"
}

# build_in MODDIR OUT LDFLAGS PKG...: go build in a pinning module (its
# go.mod/go.sum are the pin, read-only).
build_in() {
  local moddir=$REPO/$1 out=$2 ldflags=$3
  shift 3
  local pkg name start=$SECONDS
  for pkg in "$@"; do
    name=${pkg##*/}
    if [[ -x $out/$name && ${PULLWATCH_RUNTIMES_REBUILD:-} != 1 ]]; then
      log "$(basename "$out")/$name up to date in $out"
      continue
    fi
    log "go build $pkg in ${moddir#$REPO/} (cold builds take minutes)"
    mkdir -p "$out"
    (cd "$moddir" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w $ldflags" -o "$out/.$name.tmp" "$pkg")
    mv -f "$out/.$name.tmp" "$out/$name"
  done
  log "$(basename "$out"): done in $((SECONDS - start))s"
}

containerd "$CONTAINERD_24"
m=github.com/containerd/containerd/v2
build_in hack/runtimes/containerd-2.0 "$DIR/containerd-${CONTAINERD_20#v}" \
  "-X $m/version.Version=$CONTAINERD_20 -X $m/version.Revision=module-$CONTAINERD_20" \
  "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2"
build_in hack/runtimes/containerd-1.7 "$DIR/containerd-${CONTAINERD_17#v}" \
  "-X github.com/containerd/containerd/version.Version=$CONTAINERD_17 -X github.com/containerd/containerd/version.Revision=module-$CONTAINERD_17" \
  github.com/containerd/containerd/cmd/containerd github.com/containerd/containerd/cmd/containerd-shim-runc-v2
install "$DIR/crictl-${CRICTL#v}" "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL#v}" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL"
for d in "$DIR"/containerd-*/; do
  log "$("$d/containerd" --version 2>&1 | head -n1)"
done
log "$("$DIR/crictl-${CRICTL#v}/crictl" --version 2>&1)"
