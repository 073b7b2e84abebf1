# syntax=docker/dockerfile:1
# gptserve: serves the bundled default model (weights/) on port 8000 as a non-root user.
#
#   docker build -t gptserve:cpu .                           # python:3.11-slim + the CPU build of torch
#   docker build --build-arg BASE=cuda -t gptserve:cuda .    # pytorch/pytorch CUDA runtime (its own torch)
#   docker run --rm -p 8000:8000 gptserve:cpu
#   docker run --rm --gpus all -p 8000:8000 gptserve:cuda
#   docker run --rm -p 8000:8000 -v "$PWD/out:/models:ro" -e GPTSERVE_MODEL=/models/ckpt.pt gptserve:cpu
#
# buildah/podman: add `--format docker` (the OCI format has no HEALTHCHECK); buildah 1.28 (Debian 12) also needs
# `--skip-unused-stages=false` to see the base-${BASE} stage.
#
# Configuration: every `gptserve serve` flag is also the variable GPTSERVE_<FLAG> (`-e GPTSERVE_API_KEY=...`).
# Models you bring are mounted under /models. No build step downloads model weights: the image holds
# whatever weights/ holds at build time (config.json + model.safetensors when they have been trained).

# Which base the runtime stage builds on: cpu or cuda.
ARG BASE=cpu

# ---- the two bases -----------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS base-cpu

FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime AS base-cuda

# ---- build: a virtual environment with gptserve and its dependencies in /opt/venv ----------------------
# hadolint ignore=DL3006
FROM base-${BASE} AS build
ARG BASE
# torch for the CPU image comes from the PyTorch CPU index (no multi-GB CUDA libraries); the CUDA image's
# own torch is used as it is (the venv sees it through --system-site-packages).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN if [ "$BASE" = "cpu" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"; \
    else \
        python -c "import torch; print('using the base image torch', torch.__version__)"; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model/ model/
COPY server/ server/
COPY weights/ weights/
RUN pip install --no-cache-dir /src \
    && python -c "import server.app, model.loader; print('gptserve installed')"
# The native CPU kernels (model/cpu_kernels.py), compiled here so that the runtime image needs no
# compiler; on a base without one the server falls back to torch's kernels. Fixed AVX-512 flags: portable.
# hadolint ignore=DL3008
RUN if [ "$BASE" = "cpu" ]; then \
        apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
        && python -m model.cpu_kernels "$(python -c 'import model, os; print(os.path.dirname(model.__file__))')/kernels"; \
    fi

# ---- runtime ------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${BASE} AS runtime
ARG BASE
LABEL org.opencontainers.image.title="gptserve" \
      org.opencontainers.image.description="Text-generation inference server for GPT-2 and nanoGPT checkpoints" \
      org.opencontainers.image.version="0.1.0"
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/gptserve gptserve \
    && mkdir -p /models \
    && chown gptserve:gptserve /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/gptserve/.cache/huggingface \
    GPTSERVE_HOST=0.0.0.0 \
    GPTSERVE_PORT=8000 \
    GPTSERVE_DEVICE=auto \
    GPTSERVE_SHUTDOWN_TIMEOUT=30 \
    GPTSERVE_LOG_FORMAT=json
WORKDIR /home/gptserve
USER 10001:10001
EXPOSE 8000
# python, not curl: slim images have no curl. A 503 (loading, draining) raises, so the check fails.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GPTSERVE_PORT', '8000'), timeout=4)"]
# SIGTERM (docker stop, Kubernetes) drains: new requests get 503, in-flight ones finish within
# GPTSERVE_SHUTDOWN_TIMEOUT seconds, then the server exits 0. Give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gptserve"]
CMD ["serve"]
