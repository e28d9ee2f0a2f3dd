# tokenwise server image. Multi-stage: build the release binary, then a slim runtime
# that fetches the model into a volume on first start (weights are never baked in).
#
#   docker build -t tokenwise .
#   docker run -p 8080:8080 -v tokenwise-cache:/cache tokenwise                 # SmolLM2-135M
#   docker run -p 8080:8080 -v tokenwise-cache:/cache -e MODEL=qwen2.5-coder-0.5b tokenwise
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p tokenwise && strip target/release/tokenwise

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tokenwise /usr/local/bin/tokenwise
COPY scripts/fetch_models.py /opt/tokenwise/fetch_models.py
COPY scripts/docker-entrypoint.sh /opt/tokenwise/entrypoint.sh
ENV TOKENWISE_CACHE=/cache MODEL=smollm2-135m PORT=8080 PARALLEL=4
VOLUME /cache
EXPOSE 8080
# /health answers 200 once the model is loaded and the engine runs (503 while
# shutting down): use it as the readiness probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
ENTRYPOINT ["/opt/tokenwise/entrypoint.sh"]
