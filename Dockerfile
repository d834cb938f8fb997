# embedd in a container: build on debian:bookworm, run on debian:bookworm-slim.
#
#   DOCKER_BUILDKIT=0 docker build --network host -t embedd .
#   docker run -p 127.0.0.1:8080:8080 -v embedd-data:/data embedd
#
# No registry is reachable here, so scripts/docker-test.sh builds both base
# images locally (debootstrap --variant=minbase bookworm, then docker import);
# see the README's "Docker" section. --network host lets apt inside the build
# reach the same Debian mirror as the host.
#
# The default model is taken from the build context. Until models/embedd-small
# exists, build with --build-arg EMBEDD_MODEL_SRC=tests/fixtures/tiny-f16.
#
# BLAS: the binary links OpenBLAS's OpenMP build through a fixed rpath
# (Makefile BLAS_DIR, /usr/lib/<multiarch>/openblas-openmp). Debian's
# libopenblas0-openmp installs it at exactly that path, and OpenBLAS picks
# its kernel for the CPU at run time (DYNAMIC_ARCH), so OPENBLAS_CORETYPE is
# deliberately left unset here.

FROM debian:bookworm AS build
WORKDIR /src
# The package list lives in one place, scripts/install-deps.sh; copying it
# alone first keeps this layer cached while the sources change.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh --build \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make -j"$(nproc)" build/embedd \
    && strip --strip-debug build/embedd \
    && ./build/embedd version

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="embedd" \
      org.opencontainers.image.description="BERT text-embedding HTTP server (TEI and OpenAI embeddings API, item store with /similar)"
# Runtime libraries only. libcurl4 and ca-certificates are for Hugging Face
# downloads; curl is for the HEALTHCHECK; libpq5 for --store postgres://
# (docker-compose.yml, docs/scaling.md).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl libcjson1 libcurl4 libgomp1 libmicrohttpd12 \
        libopenblas0-openmp libpq5 libstdc++6 libutf8proc2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin embedd \
    && mkdir -p /data /cache/huggingface \
    && chown embedd:embedd /data /cache/huggingface

COPY --from=build /src/build/embedd /usr/local/bin/embedd
ARG EMBEDD_MODEL_SRC=models/embedd-small
COPY ${EMBEDD_MODEL_SRC} /usr/local/share/embedd/models/embedd-small
# Fail the build, not the first start, if a library is missing or OpenBLAS
# is not found at the rpath the binary was linked with.
RUN ! ldd /usr/local/bin/embedd | grep "not found" \
    && ldd /usr/local/bin/embedd | grep -q "/openblas-openmp/libopenblas.so.0" \
    && embedd version

# EMBEDD_MODEL: the default-model lookup (<exe dir>/../share/embedd/models/
# embedd-small) finds the same directory; the variable makes it explicit.
ENV EMBEDD_MODEL=/usr/local/share/embedd/models/embedd-small \
    EMBEDD_DATA=/data \
    EMBEDD_PORT=8080 \
    HF_HOME=/cache/huggingface
VOLUME ["/data", "/cache/huggingface"]
# Numeric, so that runAsNonRoot-style checks can verify it is not root.
USER 10001:10001
WORKDIR /data
EXPOSE 8080
# EMBEDD_PORT, not --port, when changing the port: the check reads it.
# No --start-period: dockerfilelint 1.8.0 rejects it (its option regex stops
# at the dash; replicatedhq/dockerfilelint#166, fix never merged), and the
# model loads in well under the 90 s that 3 failed 30 s checks take.
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${EMBEDD_PORT}/health" > /dev/null || exit 1
ENTRYPOINT ["embedd", "serve", "--host", "0.0.0.0"]
