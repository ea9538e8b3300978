#!/usr/bin/env bash
# Builds the container image from the Dockerfile at the repository root, with docker
# (BuildKit) or podman, whichever is installed.
#
#   hack/build-image.sh                                   # kube-audit-stream:latest
#   hack/build-image.sh registry.example.com/kube-audit-stream:v0.1.0 --push
#
# Environment: CONTAINER_ENGINE (docker or podman), PLATFORM (e.g. linux/arm64),
# RUST_VERSION (the build image's tag, default in the Dockerfile).
# Then point manifests/base/kustomization.yaml (images:) at the same name and tag.
set -euo pipefail
cd "$(dirname "$0")/.."

image=kube-audit-stream:latest
push=false
for arg in "$@"; do
  case "$arg" in
    --push) push=true ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-image.sh: unknown option $arg" >&2; exit 2 ;;
    *) image=$arg ;;
  esac
done

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null 2>&1; then
      engine=$candidate
      break
    fi
  done
fi
if [ -z "$engine" ]; then
  echo "build-image.sh: neither docker nor podman is installed (or set CONTAINER_ENGINE)" >&2
  exit 1
fi

args=(build --tag "$image" --file Dockerfile)
if [ -n "${PLATFORM:-}" ]; then
  args+=(--platform "$PLATFORM")
fi
if [ -n "${RUST_VERSION:-}" ]; then
  args+=(--build-arg "RUST_VERSION=$RUST_VERSION")
fi
# The Dockerfile's RUN --mount=type=cache needs BuildKit (docker's default since 23.0).
export DOCKER_BUILDKIT=1
echo "+ $engine ${args[*]} ."
"$engine" "${args[@]}" .
if $push; then
  echo "+ $engine push $image"
  "$engine" push "$image"
fi
echo "built $image"
