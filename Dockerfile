# syntax=docker/dockerfile:1
#
# teamgate container image.
#
#   docker build -t teamgate:dev .
#   docker run --rm teamgate:dev policy check /etc/teamgate/policies/default.toml
#   # SQLite in /var/lib/teamgate, no service keys (local trial only: anyone reaching the port can
#   # call every RPC; without keys teamgate refuses a non-loopback listener unless told so):
#   docker run --rm -p 127.0.0.1:50051:50051 teamgate:dev serve --listen 0.0.0.0:50051 --insecure-allow-remote
#
# The default command listens on 0.0.0.0:50051, which needs [[auth.keys]] in the configuration
# (see deploy/compose/teamgate.toml); deploy/compose.yaml and deploy/k8s/ show complete setups.
#
# The build needs no protoc (protox compiles proto/ in pure Rust), no OpenSSL (rustls) and no
# system SQLite (libsqlite3-sys builds its bundled copy); a C compiler is still needed for that
# bundled SQLite and for ring.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build

# The slim image already ships gcc and libc6-dev; installing them explicitly keeps the build
# working should that ever change. Versions are not pinned: Debian point releases replace them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# 1. Dependencies (and the generated gRPC code) only: this layer is reused until Cargo.toml,
#    Cargo.lock, build.rs or proto/ change. Placeholder sources stand in for src/.
#    The workspace names the benchmark crate, so its manifest (and a placeholder) is needed too;
#    only the service (`-p teamgate`) is built.
COPY Cargo.toml Cargo.lock build.rs ./
COPY bench/Cargo.toml ./bench/
COPY proto/ ./proto/
RUN mkdir -p src bench/src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo build --release --locked -p teamgate \
 && rm -rf src

# 2. The service itself. src/domain/policy.rs embeds deploy/policies/default.toml at compile
#    time, so the policies are needed here too. COPY keeps the files' original mtimes, which can
#    be older than the placeholder build above: touch the crate roots so cargo rebuilds them
#    instead of shipping the placeholder binary.
COPY src/ ./src/
COPY deploy/policies/ ./deploy/policies/
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p teamgate \
 && install -m 0755 target/release/teamgate /usr/local/bin/teamgate

# ---------------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

LABEL org.opencontainers.image.title="teamgate" \
      org.opencontainers.image.description="gRPC identity service: organizations, members, roles, invitations, audit log and permission checks" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: TLS to PostgreSQL, Redis or mail servers that use a public CA.
# A fixed, non-root uid/gid (10001) so Kubernetes' runAsNonRoot can check it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 teamgate \
 && useradd --system --uid 10001 --gid teamgate --home-dir /var/lib/teamgate --no-create-home \
        --shell /usr/sbin/nologin teamgate \
 && install -d -o teamgate -g teamgate -m 0750 /var/lib/teamgate

COPY --from=build /usr/local/bin/teamgate /usr/local/bin/teamgate
COPY deploy/policies/ /etc/teamgate/policies/

# Smoke test at build time: the binary runs on this base image and every shipped policy is valid.
RUN for f in /etc/teamgate/policies/*.toml; do teamgate policy check "$f" || exit 1; done

# The data directory: the default database URL (sqlite://teamgate.db?mode=rwc) is relative, so
# without a PostgreSQL URL the SQLite file lands here. Mount a volume on it to keep the data.
WORKDIR /var/lib/teamgate
USER 10001:10001

# gRPC (the API, server reflection, grpc.health.v1.Health and Envoy ext_authz).
EXPOSE 50051
# Prometheus text on /metrics, served only when telemetry.metrics_listen is set, e.g.
# TEAMGATE__TELEMETRY__METRICS_LISTEN=0.0.0.0:9464 (the port deploy/compose.yaml and
# deploy/k8s/ use).
EXPOSE 9464

# `teamgate health` calls grpc.health.v1.Health/Check over plaintext gRPC on 127.0.0.1:50051 and
# exits 0 only when the server reports SERVING. If the server listens elsewhere or with TLS
# (`[tls]`), override it (`--health-cmd` / a compose healthcheck with `--addr HOST:PORT`, or
# none). Kubernetes ignores HEALTHCHECK and uses its native gRPC probes (deploy/k8s/deployment.yaml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["teamgate", "health"]

# teamgate handles SIGTERM itself (marks itself NOT_SERVING, then drains in-flight calls for up
# to server.drain_timeout_ms), so it runs as PID 1 without an init.
ENTRYPOINT ["teamgate"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
