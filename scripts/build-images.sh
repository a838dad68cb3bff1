#!/usr/bin/env bash
# Build the pullwatch-agent and pullwatch-aggregator container images from
# Dockerfile.agent and Dockerfile.aggregator, unchanged, without a Docker
# engine: Debian's buildah, daemonless (vfs storage, chroot isolation), as
# root. `make images` runs it; the Makefile passes these variables:
#
#   REGISTRY           repository prefix; the images are REGISTRY/pullwatch-agent:TAG
#                      and REGISTRY/pullwatch-aggregator:TAG (default localhost/pullwatch,
#                      which stays in buildah's local storage)
#   TAG                default VERSION
#   VERSION            the binaries' version and the version label (default dev)
#   REVISION, CREATED  OCI revision (commit) and created (RFC 3339) labels
#   SOURCE_URL         OCI source label
#   LICENSES           OCI licenses label (an SPDX expression; default Apache-2.0, LICENSE)
#   ARCHES             comma-separated GOARCHes, e.g. amd64,arm64 (default: the build
#                      host's). Several arches: REGISTRY/NAME:TAG is a manifest list,
#                      each arch's image is also tagged TAG-ARCH.
#   PUSH               1: push REGISTRY/NAME:TAG (the manifest list with --all when
#                      several arches); default 1 when REGISTRY starts with host:port
#   IMAGES_TLS_VERIFY  bh push --tls-verify (default true, false for
#                      localhost/127.0.0.1 registries, which are plain HTTP)
#   OCI_DIR            when set, also export each image as an OCI archive
#                      OCI_DIR/pullwatch-NAME-TAG[-ARCH].tar
#   DIGEST_DIR         when set and pushing, write the digest of each pushed
#                      REGISTRY/NAME:TAG (the manifest list's with several arches)
#                      to DIGEST_DIR/pullwatch-NAME.digest (scripts/release.sh)
#
# Nothing is pulled: the base images the Dockerfiles name are made locally,
# under the same names, so that the Dockerfiles stay what a Docker/BuildKit
# user builds (see "Base images" below). A base image that exists locally
# and is not one of these stand-ins (e.g. the real one, pulled by hand) is
# used as it is.
#
# What was built is recorded in .cache/images/built.json, which the image
# test (aggregator/images_test.go) reads to check the images against the
# Dockerfiles.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PULLWATCH_IMAGES_CACHE:-$REPO/.cache/images}
# chroot isolation: RUN steps need no runc, no network namespace setup.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

REGISTRY=${REGISTRY:-localhost/pullwatch}
REGISTRY=${REGISTRY%/}
VERSION=${VERSION:-dev}
TAG=${TAG:-$VERSION}
REVISION=${REVISION:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)}
CREATED=${CREATED:-$(TZ=UTC git -C "$REPO" log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)}
SOURCE_URL=${SOURCE_URL:-https://github.com/pullwatch/pullwatch}
LICENSES=${LICENSES:-Apache-2.0}
OCI_DIR=${OCI_DIR:-}
DIGEST_DIR=${DIGEST_DIR:-}
# Standard tag syntax; `make` passes `git describe --dirty` output, which fits.
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || { echo "build-images: TAG '$TAG' is not a valid image tag" >&2; exit 2; }

log() { printf 'build-images: %s\n' "$*"; }

# buildah, with STORAGE_DRIVER (e.g. vfs where overlay mounts are not
# allowed) as its --storage-driver: buildah 1.28 does not read the variable
# itself. Unset: buildah's default (containers-storage.conf; overlay).
bh() { buildah ${STORAGE_DRIVER:+--storage-driver "$STORAGE_DRIVER"} "$@"; }
die() { log "$*" >&2; exit 1; }

# registry_host: the host[:port] REGISTRY starts with, or "" when its first
# component is not a registry host (no dot, no colon, not localhost).
registry_host() {
  local first=${REGISTRY%%/*}
  [[ $REGISTRY == */* ]] || first=$REGISTRY
  if [[ $first == *:* || $first == *.* || $first == localhost ]]; then
    printf '%s' "$first"
  fi
}
HOST=$(registry_host)
if [[ -z ${PUSH:-} ]]; then
  # A bare "localhost/..." prefix is buildah's local namespace: keep it local.
  if [[ $HOST == *:* ]]; then PUSH=1; else PUSH=0; fi
fi
if [[ -z ${IMAGES_TLS_VERIFY:-} ]]; then
  case ${HOST%:*} in
    localhost | 127.0.0.1 | '[::1]') IMAGES_TLS_VERIFY=false ;;
    *) IMAGES_TLS_VERIFY=true ;;
  esac
fi

HOST_ARCH=$(go env GOARCH 2>/dev/null || dpkg --print-architecture)
ARCHES=${ARCHES:-$HOST_ARCH}
IFS=, read -ra arches <<<"$ARCHES"
for a in "${arches[@]}"; do
  [[ $a =~ ^(amd64|arm64)$ ]] || die "ARCHES: '$a' is not supported (amd64, arm64)"
done

[[ $(id -u) -eq 0 ]] || die "run as root: buildah (root storage, chroot isolation) and debootstrap for the builder stand-in"
bash "$REPO/scripts/install-deps.sh" images
command -v go >/dev/null 2>&1 || die "the go toolchain is not on PATH (its /usr/local/go becomes the builder image's Go)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "another build-images.sh is running; waiting for it"
  flock 9
fi

# ---------------------------------------------------------------------------
# Base images. The Dockerfiles name a builder (golang:1.26) and a runtime
# base (gcr.io/distroless/static-debian12:{latest,nonroot}); the names are
# read from the Dockerfiles, so a change there is followed here. Stand-ins
# carry the label io.pullwatch.standin=<key>; a stand-in is rebuilt when its
# key changes (the Go version for the builder, the recipe version for the
# runtime base), never otherwise.
# ---------------------------------------------------------------------------
STANDIN_LABEL=io.pullwatch.standin

# Working containers of the stand-ins, removed when this script fails.
declare -a containers=()
trap 'for c in "${containers[@]}"; do bh rm "$c" >/dev/null 2>&1 || true; done' EXIT
STANDIN_RECIPE=1

# from_images DOCKERFILE: "stage-name image" for every FROM line.
from_images() {
  awk 'toupper($1) == "FROM" {
         img = ""; as = "-"
         for (i = 2; i <= NF; i++) {
           if ($i ~ /^--/) continue
           if (toupper($i) == "AS") { as = $(i + 1); break }
           img = $i
         }
         print as, img
       }' "$1"
}

# full_name NAME: the fully qualified form of an image name (docker.io/library/
# for Docker Hub short names, :latest when untagged).
full_name() {
  local n=$1 first=${1%%/*}
  if [[ $n != */* ]]; then
    n=docker.io/library/$n
  elif [[ ! ($first == *.* || $first == *:* || $first == localhost) ]]; then
    n=docker.io/$n
  fi
  [[ ${n##*/} == *:* || $n == *@* ]] || n=$n:latest
  printf '%s' "$n"
}

# standin_key NAME [INSTANCE]: the stand-in label of local image NAME (of
# INSTANCE when NAME is a manifest list); "real" when NAME exists but is not
# a stand-in; "" when it does not exist.
standin_key() {
  local img=$1 out
  if bh manifest inspect "$1" >/dev/null 2>&1; then
    img=${2:-}
    [[ -n $img ]] || { printf real; return 0; }
  fi
  out=$(bh inspect --type image --format "{{index .OCIv1.Config.Labels \"$STANDIN_LABEL\"}}" "$img" 2>/dev/null) || return 0
  printf '%s' "${out:-real}"
}

# standin_needed NAME WANT [INSTANCE]: whether the stand-in NAME must be
# (re)made: not when a real NAME is present or the stand-in's key is WANT.
standin_needed() {
  local key
  key=$(standin_key "$1" "${3:-}")
  if [[ $key == real ]]; then
    log "$1: a real image is present locally; using it"
    return 1
  elif [[ $key == "$2" ]]; then
    log "$1: stand-in up to date ($2)"
    return 1
  fi
  log "$1: making the stand-in ($2)${key:+, was: $key}"
}

# cached_rootfs: a Debian 12 minbase root as a tarball, debootstrapped once.
cached_rootfs() {
  local tar=$CACHE/bookworm-minbase.tar
  if [[ ! -s $tar ]]; then
    local dir
    dir=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    chmod 0755 "$dir" # the image's / (mktemp makes it 0700)
    log "debootstrap --variant=minbase bookworm (once; cached in $tar)" >&2 # stdout is the answer
    debootstrap --variant=minbase bookworm "$dir" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 ||
      { rm -rf "$dir"; die "debootstrap failed; see $CACHE/debootstrap.log"; }
    tar -C "$dir" -cf "$tar.tmp" . && mv -f "$tar.tmp" "$tar"
    rm -rf "$dir"
  fi
  printf '%s' "$tar"
}

# builder_standin NAME: a Debian 12 root with the build host's Go
# (/usr/local/go) and CA bundle, as golang:1.x is. It only ever runs on the
# build host (FROM --platform=$BUILDPLATFORM), so it is built for that arch.
builder_standin() {
  local name=$1 goroot goversion want
  goroot=$(go env GOROOT)
  goversion=$(go env GOVERSION)
  want="go=$goversion arch=$HOST_ARCH recipe=$STANDIN_RECIPE"
  # golang:1.26 must hold a Go 1.26.x.
  local tag=${name##*:}
  if [[ $tag =~ ^[0-9]+\.[0-9]+ && $goversion != go$tag && $goversion != go$tag.* ]]; then
    die "the Dockerfiles build with $name but this machine's Go is $goversion: install Go $tag, or pull the real $name"
  fi
  standin_needed "$name" "$want" || return 0
  local tar c mnt
  tar=$(cached_rootfs)
  c=$(bh from --pull=never scratch)
  containers+=("$c")
  mnt=$(bh mount "$c")
  tar -C "$mnt" -xf "$tar"
  mkdir -p "$mnt/usr/local"
  cp -a "$goroot" "$mnt/usr/local/go"
  mkdir -p "$mnt/etc/ssl/certs" "$mnt/go/bin" "$mnt/go/src"
  cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  bh umount "$c" >/dev/null
  bh config --os linux --arch "$HOST_ARCH" \
    --env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env GOLANG_VERSION="${goversion#go}" --env GOTOOLCHAIN=local --env GOPATH=/go \
    --workingdir /go --cmd bash \
    --label "$STANDIN_LABEL=$want" "$c"
  bh commit --rm --quiet "$c" "$name" >/dev/null
}

# runtime_standin NAME: distroless/static's files (no binaries, so one per
# arch is just a matter of the config's architecture), as a manifest list
# with an amd64 and an arm64 instance, like the real one.
runtime_standin() {
  local name=$1 variant=${1##*:} want
  want="recipe=$STANDIN_RECIPE"
  standin_needed "$name" "$want" "localhost/pullwatch-standin/distroless-static:$variant-arm64" || return 0
  local user=0:0 workdir=/
  if [[ $variant == nonroot ]]; then user=65532:65532 workdir=/home/nonroot; fi
  bh manifest rm "$name" >/dev/null 2>&1 || bh rmi "$name" >/dev/null 2>&1 || true
  bh manifest create "$name" >/dev/null
  local a c mnt inst
  for a in amd64 arm64; do
    inst=localhost/pullwatch-standin/distroless-static:$variant-$a
    c=$(bh from --pull=never scratch)
    containers+=("$c")
    mnt=$(bh mount "$c")
    mkdir -p "$mnt/etc/ssl/certs" "$mnt/tmp" "$mnt/root" "$mnt/home/nonroot" "$mnt/usr/share"
    chmod 1777 "$mnt/tmp"
    chmod 0700 "$mnt/root"
    chown 65532:65532 "$mnt/home/nonroot"
    chmod 0700 "$mnt/home/nonroot"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
      'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$mnt/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$mnt/etc/group"
    printf 'hosts: files dns\n' >"$mnt/etc/nsswitch.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
    [[ -d /usr/share/zoneinfo ]] && cp -a /usr/share/zoneinfo "$mnt/usr/share/zoneinfo"
    bh umount "$c" >/dev/null
    bh config --os linux --arch "$a" --user "$user" --workingdir "$workdir" \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
      --label "$STANDIN_LABEL=$want" "$c"
    bh commit --rm --quiet "$c" "$inst" >/dev/null
    bh manifest add "$name" "containers-storage:$inst" >/dev/null
  done
}

declare -A made=()
for df in Dockerfile.agent Dockerfile.aggregator; do
  while read -r stage img; do
    [[ -n $img && $img != scratch ]] || continue
    # FROM of an earlier stage (FROM build ...) is no image.
    from_images "$REPO/$df" | awk '{ print $1 }' | grep -qxF "$img" && continue
    n=$(full_name "$img")
    [[ -z ${made[$n]:-} ]] || continue
    made[$n]=1
    if [[ $stage != - ]]; then
      builder_standin "$n"
    else
      runtime_standin "$n"
    fi
  done < <(from_images "$REPO/$df")
done

# ---------------------------------------------------------------------------
# The images.
# ---------------------------------------------------------------------------
# The labels that come from build arguments, also given to buildah as
# --label: buildah 1.28's layer cache (--layers) does not key a LABEL step on
# the build arguments it expands, so a rebuild with the same VERSION but
# another REVISION or CREATED reused the LABEL layer with the old values
# (TestImagesBuilt caught it). --label is applied at commit, after the cache.
labels=()
for kv in "version=$VERSION" "revision=$REVISION" "created=$CREATED" "source=$SOURCE_URL" "licenses=$LICENSES"; do
  labels+=(--label "org.opencontainers.image.$kv")
done

json_arches=()
built=()
for name in agent aggregator; do
  ref=$REGISTRY/pullwatch-$name:$TAG
  per_arch=()
  for a in "${arches[@]}"; do
    out=$ref-$a
    log "$out: buildah bud -f Dockerfile.$name --platform linux/$a"
    start=$SECONDS
    # BUILDPLATFORM: buildah 1.28 does not predefine it, and without it
    # `FROM --platform=$BUILDPLATFORM golang:...` looks for a builder of the
    # target arch ("image not known" for arm64). BuildKit sets it itself.
    bh bud --pull=never --layers --platform "linux/$a" \
      --build-arg BUILDPLATFORM="linux/$HOST_ARCH" --build-arg TARGETOS=linux --build-arg TARGETARCH="$a" \
      --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
      --build-arg CREATED="$CREATED" --build-arg SOURCE_URL="$SOURCE_URL" \
      --build-arg LICENSES="$LICENSES" \
      "${labels[@]}" \
      -f "$REPO/Dockerfile.$name" -t "$out" "$REPO"
    log "$out: built in $((SECONDS - start))s"
    per_arch+=("$out")
    json_arches+=("{\"image\": \"$name\", \"arch\": \"$a\", \"ref\": \"$out\"}")
  done
  # REGISTRY/NAME:TAG: the image itself for one arch, a manifest list for several.
  bh manifest rm "$ref" >/dev/null 2>&1 || bh rmi "$ref" >/dev/null 2>&1 || true
  if ((${#per_arch[@]} == 1)); then
    bh tag "${per_arch[0]}" "$ref"
  else
    bh manifest create "$ref" >/dev/null
    for out in "${per_arch[@]}"; do
      bh manifest add "$ref" "containers-storage:$out" >/dev/null
    done
  fi
  built+=("$ref")

  if [[ -n $OCI_DIR ]]; then
    mkdir -p "$OCI_DIR"
    for out in "${per_arch[@]}"; do
      f=$OCI_DIR/pullwatch-$name-$TAG${out#"$ref"}.tar
      ((${#per_arch[@]} > 1)) || f=$OCI_DIR/pullwatch-$name-$TAG.tar
      rm -f "$f"
      bh push --quiet "$out" "oci-archive:$f:${out##*/}" >/dev/null
      log "exported $f"
    done
  fi

  if [[ $PUSH == 1 ]]; then
    digest_args=()
    if [[ -n $DIGEST_DIR ]]; then
      mkdir -p "$DIGEST_DIR"
      rm -f "$DIGEST_DIR/pullwatch-$name.digest"
      digest_args=(--digestfile "$DIGEST_DIR/pullwatch-$name.digest")
    fi
    if ((${#per_arch[@]} == 1)); then
      log "push $ref (--tls-verify=$IMAGES_TLS_VERIFY)"
      bh push --quiet "${digest_args[@]}" --tls-verify="$IMAGES_TLS_VERIFY" "$ref" "docker://$ref" >/dev/null
    else
      log "push manifest list $ref with ${#per_arch[@]} images (--tls-verify=$IMAGES_TLS_VERIFY)"
      bh manifest push --quiet --all "${digest_args[@]}" --tls-verify="$IMAGES_TLS_VERIFY" "$ref" "docker://$ref" >/dev/null
    fi
  fi
done

# The record the image test reads.
{
  printf '{\n  "storage_driver": "%s",\n  "version": "%s",\n  "revision": "%s",\n  "created": "%s",\n' \
    "$(bh info --format '{{.store.GraphDriverName}}')" "$VERSION" "$REVISION" "$CREATED"
  printf '  "source": "%s",\n  "licenses": "%s",\n  "refs": [' "$SOURCE_URL" "$LICENSES"
  sep=''
  for r in "${built[@]}"; do printf '%s"%s"' "$sep" "$r"; sep=', '; done
  printf '],\n  "images": [\n    '
  sep=''
  for j in "${json_arches[@]}"; do printf '%s%s' "$sep" "$j"; sep=$',\n    '; done
  printf '\n  ]\n}\n'
} >"$CACHE/built.json.tmp"
mv -f "$CACHE/built.json.tmp" "$CACHE/built.json"

for r in "${built[@]}"; do
  log "built $r"
done
bh images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -F "$REGISTRY/pullwatch-" | grep -F ":$TAG" | sed 's/^/build-images:   /' || true
