# Builds both binaries: shell-query-worker and mce-sim.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p service -p mce-sim

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home worker
COPY --from=build /src/target/release/shell-query-worker /src/target/release/mce-sim /usr/local/bin/
USER 10001
ENTRYPOINT ["shell-query-worker"]
CMD ["run"]
