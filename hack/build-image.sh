#!/usr/bin/env bash
# Builds the container image from the Dockerfile at the repository root, with docker
# (BuildKit), podman or buildah, whichever is installed.
#
#   hack/build-image.sh                                   # kube-audit-stream:latest
#   hack/build-image.sh registry.example.com/kube-audit-stream:v0.1.0 --push
#   hack/build-image.sh --prebuilt out/kube-audit-stream IMAGE   # package a binary from
#                                                         # hack/build-static.sh
#
# Environment: CONTAINER_ENGINE (docker, podman or buildah), PLATFORM (e.g. linux/arm64),
# RUST_VERSION (the build image's tag, default in the Dockerfile).
# Then point manifests/base/kustomization.yaml (images:) at the same name and tag.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

image=kube-audit-stream:latest
push=false
prebuilt=
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push=true ;;
    --prebuilt)
      [ $# -ge 2 ] || { echo "build-image.sh: --prebuilt needs the binary's path" >&2; exit 2; }
      # As the caller named it, before the cd below.
      prebuilt=$(realpath -- "$2")
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "build-image.sh: unknown option $1" >&2; exit 2 ;;
    *) image=$1 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null 2>&1; then
      engine=$candidate
      break
    fi
  done
fi
if [ -z "$engine" ]; then
  echo "build-image.sh: none of docker, podman, buildah is installed (or set CONTAINER_ENGINE)" >&2
  exit 1
fi

context=.
args=(--tag "$image" --file "$PWD/Dockerfile")
if [ -n "$prebuilt" ]; then
  if [ ! -x "$prebuilt" ]; then
    echo "build-image.sh: $prebuilt is not an executable file" >&2
    exit 1
  fi
  # A context of its own: the binary and nothing else.
  context=$(mktemp -d)
  trap 'rm -rf "$context"' EXIT
  cp "$prebuilt" "$context/kube-audit-stream"
  args+=(--target prebuilt)
fi
if [ -n "${PLATFORM:-}" ]; then
  args+=(--platform "$PLATFORM")
fi
if [ -n "${RUST_VERSION:-}" ]; then
  args+=(--build-arg "RUST_VERSION=$RUST_VERSION")
fi
case "$engine" in
  # buildah's build is "bud"; it needs no daemon.
  buildah) build=(bud) ;;
  *) build=(build) ;;
esac
# The Dockerfile's RUN --mount=type=cache needs BuildKit (docker's default since 23.0);
# podman and buildah understand it.
export DOCKER_BUILDKIT=1
echo "+ $engine ${build[*]} ${args[*]} $context"
"$engine" "${build[@]}" "${args[@]}" "$context"
if $push; then
  echo "+ $engine push $image"
  "$engine" push "$image"
fi
echo "built $image"
