# syntax=docker/dockerfile:1
# The nrl-registry image: `nrl` (server and CLI) on distroless, as the non-root user 65532.
#   docker build -t nrl-registry:0.1.0 --build-arg NRL_BUILD_REVISION=$(git rev-parse --short HEAD) .
# protoc is not needed: build.rs compiles the protobuf files in-process.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Shown as the `revision` label of nrl_build_info.
ARG NRL_BUILD_REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    NRL_BUILD_REVISION="$NRL_BUILD_REVISION" cargo build --release --locked --bin nrl \
    && cp target/release/nrl /nrl

# glibc and libgcc only (Redis and gRPC TLS use rustls): distroless/cc, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /nrl /usr/local/bin/nrl
USER 65532:65532
# gRPC API; admin HTTP (/metrics, /live, /ready). Both listen on loopback unless NRL_LISTEN and
# NRL_ADMIN_LISTEN say otherwise (the Helm chart sets 0.0.0.0).
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/nrl"]
CMD ["serve"]
