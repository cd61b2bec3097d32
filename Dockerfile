# syntax=docker/dockerfile:1
#
# keyhouse: one image with all three binaries.
#   /usr/local/bin/keyhouse              all-in-one server and operator commands (migrate, session, ...)
#   /usr/local/bin/user-key-service      keyhouse.v1.UserKeyService only
#   /usr/local/bin/platform-key-service  keyhouse.v1.PlatformKeyService only
#
#   docker build -t keyhouse:0.1.0 .
#   docker run --rm -e DATABASE_URL=postgres://... keyhouse:0.1.0 migrate
#   docker run --rm -p 8084:8084 -e DATABASE_URL=postgres://... -e KEYHOUSE_ENCRYPTION_KEYS=... \
#     --entrypoint user-key-service keyhouse:0.1.0
#
# The Helm chart (helm/keyhouse) sets the command of each container explicitly.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build -----------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src

# Pure-Rust TLS and crypto (rustls, ring) and bundled SQLite: the image's C compiler is all the
# native toolchain needed; no OpenSSL, no protoc (generated code is checked in under gen/).
COPY . .

# The caches keep downloaded crates and compiled dependencies between builds; the binaries are
# copied out of the cached target directory before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p keyhouse -p keyhouse-user-keys -p keyhouse-platform-keys \
 && mkdir -p /out \
 && cp target/release/keyhouse target/release/user-key-service target/release/platform-key-service /out/

# ---- runtime ---------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# CA certificates for TLS to PostgreSQL, Redis and the LLM providers. The working directory is the
# only writable place the image needs, and only for the all-in-one server's default SQLite file.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keyhouse \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/keyhouse --no-create-home \
      --shell /usr/sbin/nologin keyhouse \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/keyhouse

COPY --from=build /out/keyhouse /out/user-key-service /out/platform-key-service /usr/local/bin/

# In a container the services must listen on every interface, not on the loopback default.
ENV KEYHOUSE_LISTEN=0.0.0.0:8084

WORKDIR /var/lib/keyhouse
USER 10001:10001
# Native gRPC (HTTP/2 cleartext), grpc-web, REST and /metrics, all on one port.
EXPOSE 8084
# Every binary stops gracefully on SIGTERM: no new connections, in-flight calls finish.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/keyhouse"]
CMD ["serve"]
