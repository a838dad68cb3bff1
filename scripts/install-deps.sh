#!/usr/bin/env bash
# Install what pullwatch's tests, demo and CI use, from the one list in
# scripts/deps.txt (read it for what each package is for).
#
#   install-deps.sh            Debian packages (`apt` lines); needs root
#   install-deps.sh fresh      the packages `make test-fresh` needs on the host
#   install-deps.sh images     the packages `make images` needs (buildah, debootstrap)
#   install-deps.sh go DIR     Go tools (`go` lines) into DIR with `go install`
#
# Idempotent: installs only what is missing, and runs `apt-get update` (once)
# only when something must be installed. It never starts a daemon: service
# starts during the install are blocked with a temporary policy-rc.d; the tests
# and `pwlab up` start their own instances.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
list=$here/deps.txt

log() { printf 'install-deps: %s\n' "$*"; }

# entries KIND: "name commands" for every line of that kind in deps.txt.
entries() { awk -v k="$1" '$1 == k { print $2, $3 }' "$list"; }

go_tools() {
  local dir=$1 name cmds
  command -v go >/dev/null 2>&1 || { log "the go toolchain is not on PATH: install Go 1.26 first" >&2; exit 1; }
  mkdir -p "$dir"
  while read -r name cmds; do
    if [[ -x $dir/${cmds%%,*} && -f $dir/.${cmds%%,*}.version && $(<"$dir/.${cmds%%,*}.version") == "$name" ]]; then
      continue
    fi
    log "go install $name"
    GOBIN=$dir GOWORK=off go install "$name"
    printf '%s\n' "$name" >"$dir/.${cmds%%,*}.version"
  done < <(entries go)
}

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

apt_packages() {
  local kind=$1 name cmds
  local -a want=() missing=() bins=()
  while read -r name cmds; do
    want+=("$name")
    if [[ $cmds != - ]]; then
      IFS=, read -ra c <<<"$cmds"
      bins+=("${c[@]}")
    fi
  done < <(entries "$kind")

  if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    log "this needs a Debian/Ubuntu system (dpkg + apt-get); install these by other means: ${want[*]}" >&2
    exit 1
  fi
  for p in "${want[@]}"; do
    installed "$p" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "all present: ${want[*]}"
  else
    if [[ $(id -u) -ne 0 ]]; then
      log "NOT ROOT: cannot install ${missing[*]}" >&2
      log "run as root, e.g.: sudo $0 ${*}" >&2
      exit 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting containerd, the registry or Prometheus
    # (only if no policy-rc.d is in place already; removed again on exit).
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\n# installed temporarily by pullwatch scripts/install-deps.sh\nexit 101\n' >"$policy"
      chmod 0755 "$policy"
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    for p in "${missing[@]}"; do
      installed "$p" || { log "failed to install $p" >&2; exit 1; }
    done
    log "installed: ${missing[*]}"
  fi
  for bin in "${bins[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$bin" >/dev/null 2>&1 ||
      { log "$bin is not on PATH after the install (scripts/deps.txt names it)" >&2; exit 1; }
  done
}

case "${1:-apt}" in
  apt)
    apt_packages apt
    command -v go >/dev/null 2>&1 || log "note: Go is not installed by this script (the tests and pwlab need Go 1.26 on PATH)" >&2
    [[ $(id -u) -eq 0 ]] || log "note: the e2e tests and pwlab must run as root (containerd, runc, mounts)" >&2
    ;;
  fresh) apt_packages fresh ;;
  images) apt_packages images ;;
  go) go_tools "${2:?usage: install-deps.sh go DIR}" ;;
  *) log "unknown argument '$1': use no argument (Debian packages), 'fresh', 'images' or 'go DIR'" >&2; exit 2 ;;
esac
