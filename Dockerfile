# syntax=docker/dockerfile:1
# dashd: one image for every role (APP_ROLE or `serve --role` picks it). Multi-stage, with the
# dependencies built in a layer of their own by cargo-chef: the layer is keyed on the manifests
# and Cargo.lock, so a source change rebuilds only Dash's own crates. No sqlx offline data is
# needed: Dash checks its queries at run time (no `query!` macros).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
ENV SQLX_OFFLINE=true
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p dashd
COPY . .
# The release profile keeps line tables for profiling: they go to dashd.debug, which stays in
# this stage (`--target debug` exports it); the binary shipped keeps its symbols, so perf still
# names functions, and is about a fifth of the size (36 MB instead of 168 MB).
RUN cargo build --release --locked -p dashd \
 && objcopy --only-keep-debug target/release/dashd target/release/dashd.debug \
 && objcopy --strip-debug --add-gnu-debuglink=target/release/dashd.debug target/release/dashd

# `podman build --target debug --output type=local,dest=DIR .` writes dashd.debug to DIR.
FROM scratch AS debug
COPY --from=build /src/target/release/dashd.debug /dashd.debug

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin dash \
 && mkdir -p /app/config /data \
 && chown dash:dash /data
WORKDIR /app
COPY --from=build /src/target/release/dashd /usr/local/bin/dashd
COPY config/ /app/config/
COPY deploy/image/entrypoint.sh /usr/local/bin/dash-entrypoint
ENV DASH_ENV=production DASH_LOG_FORMAT=json
# No `USER dash`: a fresh volume is owned by root, so the entrypoint starts as root only to hand
# /data to dash, then runs dashd as dash (uid 10001). Started with --user, it runs as that user.
EXPOSE 8080
VOLUME ["/data"]
# tini passes SIGTERM on to dashd, which stops accepting, drains its buffers and exits 0. On Fly
# tini is not PID 1 (Fly's init is), so it registers as the subreaper (-s) to reap orphans. Fly
# runs `[processes]` commands and `release_command` as CMD after this ENTRYPOINT.
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "/usr/local/bin/dash-entrypoint"]
CMD ["serve"]
