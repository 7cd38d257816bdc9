#!/usr/bin/env bash
# Build the flashtalk-live image with buildah on a Debian base made here, with no registry but Debian's and PyPI's:
#   1. mmdebstrap makes a bookworm rootfs with the packages the image needs (cached as a tarball keyed by its
#      inputs, so a second build skips it);
#   2. buildah imports it as an image (from scratch + the tarball);
#   3. buildah bud --isolation chroot builds deploy/container/Containerfile with BASE= that image.
# The pip sources of this host (find-links folders, file:// indexes, the CA bundle, from `pip config list` and
# PIP_* variables) go into the build read-only (folders at the same paths, the CA bundle beside the image's own), so
# the build installs what this host's pip would (here: torch's CPU wheel from a local folder; PyPI through a
# TLS-inspecting proxy).
#
# usage: deploy/container/build-debian.sh [TAG]       (run as root, from anywhere; TAG default localhost/flashtalk-live:dev)
# environment: CACHE_DIR (base tarballs; default /var/tmp/flashtalk-live-image), STORAGE_ROOT (a private buildah
#   storage: --root $STORAGE_ROOT/root --runroot $STORAGE_ROOT/run; default buildah's own), EXTRAS, TORCH,
#   TORCH_INDEX_URL (build args), DEBIAN_MIRROR (default http://deb.debian.org/debian), HOST_PIP=0 (don't pass
#   this host's pip sources). Prints the seconds of each step.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tag=${1:-localhost/flashtalk-live:dev}
cache=${CACHE_DIR:-/var/tmp/flashtalk-live-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# The Containerfile's APT_PACKAGES, installed here so the build needs no apt step.
packages=python3,python3-venv,ca-certificates,tini,fonts-noto-cjk
buildah=(buildah)
if [ -n "${STORAGE_ROOT:-}" ]; then buildah+=(--root "$STORAGE_ROOT/root" --runroot "$STORAGE_ROOT/run"); fi

step() { printf '%s: %s s\n' "$1" "$(( $(date +%s) - $2 ))" >&2; }

# 1. the base rootfs, keyed by what makes it (a changed package list or mirror makes a new one)
key=$(printf '%s\n' "$suite" "$packages" "$mirror" "variant=apt" | sha256sum | cut -c1-16)
base_tar=$cache/debian-$suite-$key.tar
base_image=localhost/flashtalk-live-base:$suite-$key
mkdir -p "$cache"
t=$(date +%s)
if [ ! -s "$base_tar" ]; then
    # (the .tar suffix tells mmdebstrap the format; the rename makes a killed run leave no half tarball behind)
    mmdebstrap --quiet --variant=apt --include="$packages" "$suite" "$base_tar.part.tar" "$mirror"
    mv "$base_tar.part.tar" "$base_tar"
fi
step "base rootfs (mmdebstrap)" "$t"

# 2. imported as an image, once per key
t=$(date +%s)
if ! "${buildah[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
    ctr=$("${buildah[@]}" from scratch)
    "${buildah[@]}" add --quiet "$ctr" "$base_tar" /
    "${buildah[@]}" commit --quiet --rm "$ctr" "$base_image" >/dev/null
fi
step "base image (import)" "$t"

# 3. the image
args=(--build-arg "BASE=$base_image")
for a in EXTRAS TORCH TORCH_INDEX_URL; do
    if [ -n "${!a:-}" ]; then args+=(--build-arg "$a=${!a}"); fi
done
if [ "${HOST_PIP:-1}" = 1 ]; then
    # `pip config list` prints scope.key='value' lines; PIP_<KEY> variables win, as they do for pip itself.
    pip_conf=$(python3 -m pip config list 2>/dev/null || true)
    for key in index-url extra-index-url find-links cert; do
        var=PIP_$(echo "$key" | tr a-z- A-Z_)
        value=${!var:-}
        if [ -z "$value" ]; then
            value=$(printf '%s\n' "$pip_conf" | sed -n "s/^[^.]*\.$key='\(.*\)'$/\1/p" | tail -n1)
        fi
        [ -n "$value" ] || continue
        if [ "$key" = cert ]; then
            # beside, not over, the image's own CA bundle: the base's ca-certificates may still be installed
            # (and rewrite its bundle) in the build
            args+=(--build-arg "PIP_CERT=/run/host-pip-ca.crt" --volume "$value:/run/host-pip-ca.crt:ro")
            continue
        fi
        args+=(--build-arg "$var=$value")
        for item in $value; do
            path=${item#file://}
            case $path in /*) ;; *) continue ;; esac   # a URL: reached over the network, nothing to bind
            [ -e "$path" ] || continue
            # an index's files lie beside its simple/ folder (../../files/...): bind the folder above it
            case $key in *index-url) path=$(dirname "$path") ;; esac
            args+=(--volume "$path:$path:ro")
        done
    done
fi
t=$(date +%s)
# (pip's notes on each package a local index lacks are dropped: one line per package, nothing wrong)
"${buildah[@]}" bud --isolation chroot --layers --quiet -f "$here/Containerfile" "${args[@]}" -t "$tag" "$repo" 2>&1 \
    | { grep -v "^WARNING: Location 'file://.*' is ignored: it is neither a file nor a directory" || true; } >&2
step "image (buildah bud)" "$t"
echo "$tag"
