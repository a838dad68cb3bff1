#!/usr/bin/env bash
# make release REGISTRY=registry.example.com/pullwatch VERSION=v0.2.0
#
# Builds pullwatch-agent and pullwatch-aggregator for every arch in ARCHES
# (default amd64,arm64; Go cross-compiles in the builder stage, so no
# emulation) with scripts/build-images.sh, pushes each as a manifest list
# REGISTRY/NAME:VERSION, and writes the install files pinned by the digest
# the registry serves, under OUT (default _out/release/VERSION):
#
#   images.txt            REGISTRY/NAME:VERSION@sha256:... of both images
#   kustomization.yaml    an overlay of deploy/ whose images: pin both
#                         digests (deploy/ is a relative path, so it is used
#                         from this checkout: copy it into yours, or point
#                         resources: at a git URL of the release's tag)
#   pullwatch.yaml        that overlay rendered (kubectl kustomize), one
#                         file for `kubectl apply -f` (when kubectl is here)
#   values.yaml           Helm values for deploy/helm/pullwatch pinning both
#                         images (image.registry/repository/tag/digest)
#
# Each digest is the one buildah pushed (--digestfile), checked against the
# registry's answer to a HEAD of REGISTRY/NAME:VERSION before anything is
# written: the files pin what a node's pull of that tag gets.
#
# Variables: REGISTRY and VERSION (required; VERSION is also the images'
# tag and the binaries' version), ARCHES, OUT, IMAGES_TLS_VERIFY (as
# make images: false for localhost/127.0.0.1), and what build-images.sh
# reads. Registry credentials: `buildah login REGISTRY` first; the digest
# check reads the same auth file (REGISTRY_AUTH_FILE, or buildah's default).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'release: %s\n' "$*"; }
die() { log "$*" >&2; exit 1; }

REGISTRY=${REGISTRY:-}
REGISTRY=${REGISTRY%/}
VERSION=${VERSION:-}
first=${REGISTRY%%/*}
[[ $REGISTRY == */* && ($first == *.* || $first == *:*) ]] ||
  die "REGISTRY=$REGISTRY: give the registry and repository prefix to push to, e.g. REGISTRY=registry.example.com/pullwatch"
[[ $VERSION =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "VERSION='$VERSION' is not a valid image tag (e.g. VERSION=v0.2.0)"
ARCHES=${ARCHES:-amd64,arm64}
OUT=${OUT:-$REPO/_out/release/$VERSION}

host=${REGISTRY%%/*}
prefix=${REGISTRY#*/}
if [[ -z ${IMAGES_TLS_VERIFY:-} ]]; then
  case ${host%:*} in
    localhost | 127.0.0.1 | '[::1]') IMAGES_TLS_VERIFY=false ;;
    *) IMAGES_TLS_VERIFY=true ;;
  esac
fi
scheme=https
[[ $IMAGES_TLS_VERIFY == false ]] && scheme=http

digests=$(mktemp -d)
trap 'rm -rf "$digests"' EXIT
REGISTRY=$REGISTRY TAG=$VERSION VERSION=$VERSION ARCHES=$ARCHES PUSH=1 \
  IMAGES_TLS_VERIFY=$IMAGES_TLS_VERIFY DIGEST_DIR=$digests \
  bash "$REPO/scripts/build-images.sh"

# served_digest NAME: the Docker-Content-Digest of a HEAD of NAME:VERSION,
# with buildah's credentials for the host when it has any.
served_digest() {
  local auth=() user
  if user=$(buildah login --get-login "$host" 2>/dev/null) && [[ -n $user ]]; then
    local authfile=${REGISTRY_AUTH_FILE:-${XDG_RUNTIME_DIR:-/run/containers/0}/containers/auth.json}
    local b64
    b64=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["auths"][sys.argv[2]]["auth"])' "$authfile" "$host" 2>/dev/null) || true
    [[ -n $b64 ]] && auth=(-H "Authorization: Basic $b64")
  fi
  curl -fsSI "${auth[@]}" \
    -H 'Accept: application/vnd.oci.image.index.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$scheme://$host/v2/$prefix/$1/manifests/$VERSION" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }'
}

declare -A digest=()
for name in pullwatch-agent pullwatch-aggregator; do
  pushed=$(cat "$digests/$name.digest" 2>/dev/null) || die "$name: buildah wrote no digest"
  served=$(served_digest "$name") || die "$name: HEAD $scheme://$host/v2/$prefix/$name/manifests/$VERSION failed"
  [[ $pushed == sha256:* && $served == "$pushed" ]] ||
    die "$name: pushed $pushed, but the registry serves $REGISTRY/$name:$VERSION as '$served'"
  digest[$name]=$pushed
  log "$REGISTRY/$name:$VERSION@$pushed"
done

mkdir -p "$OUT"
{
  for name in pullwatch-agent pullwatch-aggregator; do
    printf '%s/%s:%s@%s\n' "$REGISTRY" "$name" "$VERSION" "${digest[$name]}"
  done
} >"$OUT/images.txt"

deploy_rel=$(realpath --relative-to="$OUT" "$REPO/deploy")
cat >"$OUT/kustomization.yaml" <<EOF
# pullwatch $VERSION, images pinned by digest (scripts/release.sh).
# kubectl apply -k $(realpath --relative-to="$REPO" "$OUT")
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $deploy_rel
images:
  - name: ghcr.io/pullwatch/pullwatch-agent
    newName: $REGISTRY/pullwatch-agent
    digest: ${digest[pullwatch-agent]}
  - name: ghcr.io/pullwatch/pullwatch-aggregator
    newName: $REGISTRY/pullwatch-aggregator
    digest: ${digest[pullwatch-aggregator]}
EOF

cat >"$OUT/values.yaml" <<EOF
# pullwatch $VERSION for deploy/helm/pullwatch, images pinned by digest
# (scripts/release.sh):
#   helm install pullwatch deploy/helm/pullwatch -n pullwatch -f $(realpath --relative-to="$REPO" "$OUT")/values.yaml
agent:
  image:
    registry: $host
    repository: $prefix/pullwatch-agent
    tag: "$VERSION"
    digest: ${digest[pullwatch-agent]}
aggregator:
  image:
    registry: $host
    repository: $prefix/pullwatch-aggregator
    tag: "$VERSION"
    digest: ${digest[pullwatch-aggregator]}
EOF

if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize "$OUT" >"$OUT/pullwatch.yaml.tmp" && mv "$OUT/pullwatch.yaml.tmp" "$OUT/pullwatch.yaml"
  log "wrote $OUT/pullwatch.yaml"
else
  log "kubectl is not on PATH: $OUT/pullwatch.yaml not rendered (kubectl kustomize $OUT renders it)"
fi
log "wrote $OUT/images.txt, kustomization.yaml, values.yaml"
