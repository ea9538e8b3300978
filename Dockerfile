# kube-audit-stream container image: hack/build-image.sh builds it.
#
# Build stage: the official Rust image (Debian bookworm), which has everything the build
# needs (rustc, cargo, gcc and the glibc headers and static libraries ring compiles and
# links with), so the build downloads nothing but crates. hack/build-static.sh links the
# binary statically.
#
# Run stage: scratch, the static binary and nothing else (no shell, no libc, no package
# manager), as a non-root numeric user. Without CA certificates in the image, the kube
# client trusts only the CA of its kubeconfig or, in a pod, the service account's
# ca.crt; that is all it talks to.
#
# Two targets share the run stage: the default (last) builds from source; `--target
# prebuilt` packages a binary built outside instead (hack/build-image.sh --prebuilt), from
# a build context holding only that binary.
ARG RUST_VERSION=1.89

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole workspace (see .dockerignore): cargo checks every target Cargo.toml declares
# (benches, the load generator) even when it builds only the binary, and the binary embeds
# deploy/dev/.
COPY . .
# The cache mounts keep the crate downloads and the build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    hack/build-static.sh /out

FROM scratch AS runtime
# Numeric, so that runAsNonRoot can verify it; manifests/base/deployment.yaml runs as
# the same user.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/kube-audit-stream"]
# manifests/base/deployment.yaml passes "serve" and the cluster-mode flags.
CMD ["serve", "--help"]

FROM runtime AS prebuilt
COPY kube-audit-stream /usr/local/bin/kube-audit-stream

FROM runtime
COPY --from=build /out/kube-audit-stream /usr/local/bin/kube-audit-stream
