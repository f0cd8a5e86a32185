# syntax=docker/dockerfile:1.7
#
# One image for every Storemesh process: `storemesh serve <auth|catalog|storage|gateway|
# dispatcher|edge>`. The build stage compiles the native binary and the edge functions
# (wasm32-wasip2); the final stage is distroless (glibc + CA roots, no shell, no package
# manager, no compiler) and runs as the unprivileged `nonroot` user (65532).
#
#   docker build -t storemesh:dev .
#   docker run --rm storemesh:dev serve gateway
#
# Needs BuildKit (the default builder of Docker 23+) for the cache mounts.

ARG RUST_VERSION=1.95
ARG NODE_VERSION=20

# The web front end (seller console and storefront) that the `web` component serves: npm
# packages as package-lock.json pins them, TypeScript clients generated from proto/, Vite.
FROM node:${NODE_VERSION}-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY proto /src/proto
COPY buf.yaml /src/buf.yaml
COPY web ./
RUN npm run build

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
# Cache mounts keep the registry and the target dirs between builds; the outputs are copied
# out of them inside the same RUN (a cache mount is not part of the layer).
# The edge functions are their own cargo workspace (edge-functions/, with its own Cargo.lock
# and target dir); only the components spin.toml names are built, not the test fixtures.
# Cargo is started in /src, so /src/.cargo/config.toml applies (simd128 for wasm32-wasip2).
# `serve edge` reads the components at spin.toml's `source` paths, relative to spin.toml:
# /app/spin.toml → /app/edge-functions/target/wasm32-wasip2/release/*.wasm.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    --mount=type=cache,target=/src/edge-functions/target,sharing=locked \
    cargo build --locked --release -p storemesh --bin storemesh \
 && cargo build --locked --release --target wasm32-wasip2 \
      --manifest-path edge-functions/Cargo.toml -p upload-hook -p thumbnail -p images -p web \
 && mkdir -p /out/bin /out/app/edge-functions/target/wasm32-wasip2/release \
      /out/app/data/auth/keys /out/app/data/edge/cache /out/app/data/storage/objects \
 && cp target/release/storemesh /out/bin/storemesh \
 && cp edge-functions/target/wasm32-wasip2/release/upload_hook.wasm \
      edge-functions/target/wasm32-wasip2/release/thumbnail.wasm \
      edge-functions/target/wasm32-wasip2/release/images.wasm \
      edge-functions/target/wasm32-wasip2/release/web.wasm \
      /out/app/edge-functions/target/wasm32-wasip2/release/ \
 && cp spin.toml /out/app/spin.toml

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="storemesh" \
      org.opencontainers.image.description="Storemesh services and the embedded edge runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/bin/storemesh /usr/local/bin/storemesh
# The Spin application (spin.toml + components at the paths it names) for `serve edge`, and
# writable data directories owned by the runtime user, so named volumes mounted there start
# with the right owner.
COPY --from=build --chown=65532:65532 /out/app /app
# The site the `web` component mounts read-only at `/` (spin.toml: web/dist).
COPY --from=web /src/web/dist /app/web/dist
WORKDIR /app
USER 65532:65532
# Inside a container every listener binds all interfaces; the admin ports too, for probes and
# Prometheus. The defaults of the other keys stay the service's own.
ENV STOREMESH_TELEMETRY__FORMAT=json \
    STOREMESH_TELEMETRY__COLOR=never \
    STOREMESH_EDGE__MANIFEST=/app/spin.toml \
    STOREMESH_EDGE__CACHE_DIR=/app/data/edge/cache
# gateway, auth, catalog, storage, edge (HTTP); admin ports 9050-9053, 9080, dispatcher 9054.
EXPOSE 50050 50051 50052 50053 3000 9050 9051 9052 9053 9054 9080
ENTRYPOINT ["/usr/local/bin/storemesh"]
CMD ["--help"]
