# syntax=docker/dockerfile:1
# Herald's container image: the `herald` binary, whose subcommand selects the service (router,
# sender, admin, topics apply, …), and the reference receiver `herald-receiver`.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t herald:0.1.0 .
#
# The demo and the load-test harness are left out: they download and run their own Kafka.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# rdkafka-sys compiles librdkafka from source with librdkafka's own configure script and make
# (the workspace does not enable rdkafka's cmake-build feature), linking Debian's OpenSSL and
# zlib; zstd is compiled in. The rust image has most of these already; they are listed so that
# the build does not depend on it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep crates and build output between builds; the binaries are copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p herald -p herald-verify --bin herald --bin herald-receiver \
    && install -D -m 0755 target/release/herald /out/herald \
    && install -D -m 0755 target/release/herald-receiver /out/herald-receiver

FROM debian:${DEBIAN_RELEASE}-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Kafka-native webhook delivery: events from Kafka to HTTPS endpoints as signed Standard Webhooks" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# libssl3 for librdkafka's TLS to the brokers, and the CA bundle it trusts when no
# ssl.ca.location is set. Webhook requests use rustls with the Mozilla roots built into the
# binary. zlib and libgcc are already in the slim image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 herald \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin herald
COPY --from=build /out/ /usr/local/bin/
# Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# The admin API (admin.listen) and the metrics and health endpoints (telemetry.listen), when
# configured to listen on 0.0.0.0 as the Helm chart does.
EXPOSE 8088 9464
ENTRYPOINT ["herald"]
CMD ["--help"]
