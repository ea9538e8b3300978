# kube-audit-stream container image: hack/build-image.sh builds it.
#
# Build stage: the official Rust image (Debian bookworm). It already has everything the
# build needs (rustc and cargo for x86_64/aarch64-unknown-linux-gnu, gcc and the glibc
# headers that ring's C and assembly parts compile with), so the build downloads nothing
# but crates from crates.io.
#
# Run stage: distroless "cc" (glibc, libgcc, CA certificates, no shell, no package
# manager), as its non-root user. Why glibc and not a fully static musl binary: the
# official image has no musl target (adding one means a rustup download, or apk packages
# on the Alpine variant), and musl's allocator is markedly slower under the many-thread
# fan-out this server does, which an allocator crate would fix only with a new
# dependency. Build and run stages are both Debian 12, so the glibc versions match.
ARG RUST_VERSION=1.89

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole workspace (see .dockerignore): cargo checks every target Cargo.toml declares
# (benches, the load generator) even when it builds only the binary, and the binary embeds
# deploy/dev/.
COPY . .
# Symbols kept (for readable backtraces), debug info dropped: a smaller image.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
# The cache mounts keep the crate downloads and the build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kube-audit-stream \
    && install -D -m 0755 target/release/kube-audit-stream /out/kube-audit-stream

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kube-audit-stream /usr/local/bin/kube-audit-stream
# distroless "nonroot": uid and gid 65532. Numeric, so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/kube-audit-stream"]
# manifests/base/deployment.yaml passes "serve" and the cluster-mode flags.
CMD ["serve", "--help"]
