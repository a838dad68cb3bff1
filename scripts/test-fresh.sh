#!/usr/bin/env bash
# make test-fresh: prove that a fresh machine needs nothing but what the repo
# installs. Runs `.ci/run` on a fresh clone of HEAD inside a freshly
# debootstrapped Debian 12 (bookworm, minbase) root, with only the Go toolchain
# copied in, so nothing installed by hand on this machine can hide a missing
# entry in scripts/deps.txt.
#
# Needs root. The pristine root is cached as a tarball (debootstrap takes about
# a minute); every run unpacks it anew. The run happens in its own mount
# namespace (/proc, /sys, /dev bound in for containerd, runc and network
# namespaces), so nothing stays mounted when it ends.
#
#   PULLWATCH_FRESH_DIR     work dir (default /var/tmp/pullwatch-fresh)
#   PULLWATCH_FRESH_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   PULLWATCH_FRESH_KEEP=1  keep the unpacked root afterwards (to look around)
#   PULLWATCH_FRESH_REF     what to clone (default HEAD; uncommitted work is not tested)
#   PULLWATCH_FRESH_WARM_GO=1  bind this machine's Go module and build caches in
#                           (faster; proves the same: every Debian package and Go
#                           tool still has to come from the repo's own scripts)
#   PULLWATCH_FRESH_MAKE    run `make $PULLWATCH_FRESH_MAKE` (after the deps
#                           target) instead of .ci/run, e.g. e2e-installed
#
# The fresh root becomes the root of its mount namespace (pivot_root, not
# chroot): the box's nodes enter mount namespaces of their own with setns,
# which resets a process' root to its namespace's root and so would leave
# a chroot.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${PULLWATCH_FRESH_DIR:-/var/tmp/pullwatch-fresh}
mirror=${PULLWATCH_FRESH_MIRROR:-http://deb.debian.org/debian}
ref=${PULLWATCH_FRESH_REF:-HEAD}
goroot=$(go env GOROOT)
log() { printf 'test-fresh: %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || { log "must run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
bash "$repo/scripts/install-deps.sh" fresh
mkdir -p "$dir"
tarball=$dir/bookworm-minbase.tar
root=$dir/root

if [[ ! -s $tarball ]]; then
  log "debootstrap bookworm (minbase) from $mirror"
  rm -rf "$dir/bootstrap"
  debootstrap --variant=minbase bookworm "$dir/bootstrap" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
    { tail -n 20 "$dir/debootstrap.log" >&2; log "debootstrap failed: see $dir/debootstrap.log" >&2; exit 1; }
  tar -C "$dir/bootstrap" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$dir/bootstrap"
fi

# leftovers KILL: processes the run left behind (containerd, registries, kubelets
# the tests may have left): their environment carries this run's id (the root
# is pivoted, so /proc/PID/root does not name it); killed with KILL when asked.
run_id=$$-$(date +%s)
leftovers() {
  local p found=0
  for p in /proc/[0-9]*; do
    # any: a run before this one (one root, so one run at a time)
    if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "PULLWATCH_FRESH_RUN=$([[ ${2:-} == any ]] && echo '.*' || echo "$run_id")"; then
      found=1
      [[ ${1:-} == kill ]] && kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  return $((1 - found))
}
cleanup() {
  leftovers kill || true
  if [[ ${PULLWATCH_FRESH_KEEP:-} == 1 ]]; then log "kept $root"; else rm -rf "$root"; fi
}
if [[ -d $root ]]; then leftovers kill any || true; rm -rf "$root"; fi
trap cleanup EXIT

log "unpacking a fresh root in $root"
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
# What the machine image ships besides Debian: the Go toolchain and its
# settings, the resolver, and its local CA certificates
# (/usr/local/share/ca-certificates: e.g. the one of an egress proxy that
# re-signs TLS, without which no Go module downloads). Debian's
# ca-certificates package, which deps.txt names, builds the bundle from them.
mkdir -p "$root/usr/local" "$root/root/.config/go"
if [[ -d /usr/local/share/ca-certificates ]]; then mkdir -p "$root/usr/local/share" && cp -a /usr/local/share/ca-certificates "$root/usr/local/share/"; fi
cp -a "$goroot" "$root/usr/local/go"
[[ -f /root/.config/go/env ]] && cp /root/.config/go/env "$root/root/.config/go/env"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
if [[ -d /etc/apt/sources.list.d && ! -s $root/etc/apt/sources.list ]]; then
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" >"$root/etc/apt/sources.list"
fi

log "cloning $ref of $repo"
mkdir -p "$root/ci"
git -C "$repo" rev-parse --verify "$ref^{commit}" >/dev/null
git clone -q --no-hardlinks "$repo" "$root/ci/pullwatch"
git -C "$root/ci/pullwatch" checkout -q "$(git -C "$repo" rev-parse "$ref")"
# CI lays a read-only copy of shared/ beside the clone; do the same when there is one.
[[ -d $repo/../shared ]] && cp -a "$repo/../shared" "$root/ci/shared" && chmod -R a-w "$root/ci/shared"

log "running .ci/run in the fresh root (log: $dir/ci.log)"
start=$SECONDS
set +e
PATH=$PATH:$(dirname "$(command -v go)") unshare --mount --propagation private -- bash -euc '
  root=$1
  # The root must be a mount point: runc and ip netns make "/" a slave
  # mount ("mount --make-rslave /"), which a plain directory refuses.
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=0755 tmpfs "$root/run"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  # The network namespaces, bridges and veths the tests make are this
  # machine'"'"'s, not the root'"'"'s: share the markers that say whose they are
  # (e2e/harness/netns), or a cleanup in the root would remove what a test
  # running beside it on this machine made, and the reverse.
  mkdir -p /run/pullwatch-netns "$root/run/pullwatch-netns"
  mount --bind /run/pullwatch-netns "$root/run/pullwatch-netns"
  if [[ ${PULLWATCH_FRESH_WARM_GO:-} == 1 ]]; then
    for d in "$(go env GOMODCACHE)" "$(go env GOCACHE)"; do
      mkdir -p "$root/root/${d#/root/}" && mount --bind "$d" "$root/root/${d#/root/}"
    done
  fi
  cd "$root"
  mkdir -p .old-root
  pivot_root . .old-root
  cd /
  umount -l /.old-root
  rmdir /.old-root
  cmd="bash .ci/run"
  if [[ -n $2 ]]; then cmd="export PATH=/usr/local/go/bin:\$PATH; apt-get update -qq && apt-get install -y -qq make >/dev/null && make deps $2"; fi
  exec /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 PULLWATCH_FRESH_RUN=$3 \
    PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CI=true bash -c "cd /ci/pullwatch && $cmd </dev/null"
' _ "$root" "${PULLWATCH_FRESH_MAKE:-}" "$run_id" >"$dir/ci.log" 2>&1
rc=$?
set -e
elapsed=$((SECONDS - start))
tail -n 30 "$dir/ci.log"
if ((rc == 0)); then
  log "PASSED in ${elapsed}s on a fresh Debian 12 root ($(nproc) cores); log: $dir/ci.log"
else
  log "FAILED (exit $rc) after ${elapsed}s; log: $dir/ci.log" >&2
fi
exit $rc
