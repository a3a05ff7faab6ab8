# syntax=docker/dockerfile:1
# Builds both binaries, shell-query-worker and mce-sim, into a small non-root
# image (uid/gid 10001, as deploy/deployment.yaml expects):
#
#   docker build -t shell-query-worker:0.1.0 .
#
# BuildKit (the default builder) keeps the cargo registry and the target
# directory in cache mounts between builds, so a rebuild after a code change
# recompiles only the workspace crates, not every dependency. The binaries
# are copied out of the cache mount, which is not part of any image layer.
# `--locked`: the build uses Cargo.lock exactly and fails if it is stale.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --no-default-features -p service -p mce-sim \
    && mkdir -p /out \
    && cp target/release/shell-query-worker target/release/mce-sim /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin worker
COPY --from=build /out/shell-query-worker /out/mce-sim /usr/local/bin/
USER 10001:10001
# /healthz, /readyz and /metrics (HTTP_ADDR, 0.0.0.0:8080 by default).
EXPOSE 8080
ENTRYPOINT ["shell-query-worker"]
CMD ["run"]
