# The shadowplane binary in a small image: `serve`, `forward`, `backend`, `translate`, ...
#   docker build -t shadowplane:dev .
#   docker run --rm shadowplane:dev backend --name v1 --listen 0.0.0.0:8080
# docker-compose.yml builds it for the control plane, the forwarder and the demo backends.
# Tags are pinned (the Rust toolchain the project supports, Debian 12); bump them together.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions of Cargo.lock.
RUN cargo build --release --locked --bin shadowplane \
    && install -D -m 0755 target/release/shadowplane /out/shadowplane

FROM debian:12.11-slim
COPY --from=build /out/shadowplane /usr/local/bin/shadowplane
# Not root: nothing here needs a privileged port or a writable file system.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/shadowplane"]
CMD ["--help"]
