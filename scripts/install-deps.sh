#!/usr/bin/env bash
# Install the real parts pullwatch's e2e tests and demo run (Debian/Ubuntu, as root):
# containerd + runc, the CNCF registry, Prometheus, htpasswd, protoc, iptables/iproute2.
#
# Idempotent: installs only the packages that are missing, and runs
# `apt-get update` (once) only when something must be installed.
# It never starts a daemon: service starts during the install are blocked with a
# temporary policy-rc.d; the tests and `pwlab up` start their own instances.
set -euo pipefail

PACKAGES=(
  containerd        # containerd 1.6 + CRI plugin, containerd-shim-runc-v2
  runc
  docker-registry   # CNCF distribution registry 2.x ("docker-registry serve config.yml")
  prometheus        # prometheus + promtool
  apache2-utils     # htpasswd
  protobuf-compiler # protoc
  iptables
  iproute2          # ip netns, bridges, veth
  ca-certificates
  curl
  procps            # pgrep/ps, used by the tests' leftover-process checks
  chromium          # headless browser for the status page test
  prometheus-alertmanager # alert delivery in the cluster-in-a-box tests
)

log() { printf 'install-deps: %s\n' "$*"; }

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  log "this script needs a Debian/Ubuntu system (dpkg + apt-get); install these by other means: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  log "all present: ${PACKAGES[*]}"
else
  if [[ $(id -u) -ne 0 ]]; then
    log "NOT ROOT: cannot install ${missing[*]}" >&2
    log "run as root, e.g.: sudo $0" >&2
    exit 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting containerd, the registry or Prometheus
  # (only if no policy-rc.d is in place already; removed again on exit).
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# installed temporarily by pullwatch scripts/install-deps.sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  for p in "${missing[@]}"; do
    installed "$p" || { log "failed to install $p" >&2; exit 1; }
  done
  log "installed: ${missing[*]}"
fi

# What the tests look for on PATH.
for bin in containerd containerd-shim-runc-v2 runc docker-registry prometheus promtool htpasswd protoc iptables ip pgrep; do
  if ! command -v "$bin" >/dev/null 2>&1; then
    log "warning: $bin not on PATH after install" >&2
  fi
done
if ! command -v go >/dev/null 2>&1; then
  log "note: Go is not installed by this script (the tests and pwlab need the go toolchain on PATH)" >&2
fi
if [[ $(id -u) -ne 0 ]]; then
  log "note: the e2e tests and pwlab must run as root (containerd, runc, mounts)" >&2
fi
