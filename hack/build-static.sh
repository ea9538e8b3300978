#!/usr/bin/env bash
# Builds the release binary statically linked (glibc, static-pie) and installs it as
# OUT_DIR/kube-audit-stream: what the container image ships. The Dockerfile's build stage
# runs this script; CI runs it too and packages the result (hack/build-image.sh --prebuilt).
#
#   hack/build-static.sh OUT_DIR
#
# Why static glibc and not musl: the gnu target is the one every Rust toolchain already has
# (musl needs a rustup download), and glibc's allocator holds up under the many-thread
# fan-out this server does. Host names still resolve: glibc (2.34 on) has its "files" and
# "dns" lookups built in, and the kubelet mounts /etc/hosts and /etc/resolv.conf.
set -euo pipefail

if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
# As the caller named it, before the cd below.
out=$(realpath -- "$1")
cd "$(dirname "$0")/.."

target=$(rustc -vV | sed -n 's/^host: //p')
case "$target" in
  *-linux-gnu) ;;
  *) echo "build-static.sh: a static build needs a *-linux-gnu host, not $target" >&2; exit 1 ;;
esac

# The explicit --target keeps crt-static off build scripts and proc macros, which must
# stay dynamic. Symbols kept (readable backtraces), debug info dropped (a smaller image).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo build --release --locked --bin kube-audit-stream --target "$target"

bin=target/$target/release/kube-audit-stream
# An image without a dynamic loader cannot start a dynamic binary: refuse one here rather
# than ship an image that fails with a bare "no such file or directory".
if readelf --program-headers "$bin" | grep -q 'INTERP'; then
  echo "build-static.sh: $bin is dynamically linked" >&2
  exit 1
fi
install -D -m 0755 "$bin" "$out/kube-audit-stream"
echo "built $out/kube-audit-stream ($target, static)"
