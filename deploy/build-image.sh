#!/usr/bin/env bash
# Builds the walship image from a built binary with buildah:
#   deploy/build-image.sh BINARY [TAG]      (TAG default walship:latest)
# Stages BINARY and the shared libraries it links (from ldd) under a
# temporary rootfs, then `buildah build` with deploy/Containerfile.
set -euo pipefail
bin="${1:?usage: deploy/build-image.sh BINARY [TAG]}"
tag="${2:-walship:latest}"
here="$(cd "$(dirname "$0")" && pwd)"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/var/lib/walship" "$ctx/rootfs/tmp"
cp "$bin" "$ctx/rootfs/usr/local/bin/walship"
# Each library at the path the loader looks for it.
ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp "$here/Containerfile" "$ctx/Containerfile"
buildah build --quiet --layers=false -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
echo "built $tag"
