# syntax=docker/dockerfile:1
# One image with the three Jeanus binaries; compose.yaml picks one with `command:`.

# The builder is Debian bookworm like the runtime, so the binaries link the same glibc.
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p jeanus-api -p jeanus-projector -p jeanus-dispatcher \
    && mkdir -p /out \
    && cp target/release/jeanus-api target/release/jeanus-projector \
        target/release/jeanus-dispatcher /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home jeanus
COPY --from=builder /out/ /usr/local/bin/
USER jeanus
ENV JEANUS_API_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
CMD ["jeanus-api"]
