# syntax=docker/dockerfile:1
#
# infoscore images; one Dockerfile, two targets (see docs/deploy.md):
#
#   docker build --target gateway -t infoscore-gateway .   # FastAPI gateway, no torch
#   docker build --target worker  -t infoscore-worker  .   # Celery worker, CPU torch
#   docker build --target worker -t infoscore-worker-gpu \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .   # CUDA torch
#
# Each target installs into /opt/venv in a build stage and copies only that venv into a
# clean runtime stage, so no source tree, build directory or pip cache ships.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    INFOSCORE_DATA_DIR=/data

# A fixed numeric uid/gid (USER 10001:10001 below; fine for runAsNonRoot) so that a shared
# artifact volume or NFS export can be owned by it on every machine that runs a container.
RUN groupadd --system --gid 10001 infoscore \
    && useradd --system --uid 10001 --gid infoscore --create-home --home-dir /home/infoscore \
       --shell /usr/sbin/nologin infoscore \
    && mkdir -p /data \
    && chown infoscore:infoscore /data

WORKDIR /home/infoscore

# ---------------------------------------------------------------------------------------
FROM base AS gateway-build

RUN python -m venv "$VIRTUAL_ENV"
COPY . /src
# The gateway installs the project WITHOUT the [worker] extra: no torch, no science stack.
# [postgres] brings the psycopg driver for INFOSCORE_DATABASE_URL=postgresql+psycopg://...
RUN pip install "/src[postgres]" \
    && python -c "import sys, service.app, launcher.cli, launcher.client, service.settings; \
assert 'torch' not in sys.modules, 'the gateway must not import torch'"

# ---------------------------------------------------------------------------------------
FROM base AS gateway

COPY --from=gateway-build /opt/venv /opt/venv
USER 10001:10001
ENV INFOSCORE_HOST=0.0.0.0 \
    INFOSCORE_PORT=8000
EXPOSE 8000
VOLUME ["/data"]
# /healthz says the process serves HTTP; /readyz (broker and database) is for load balancers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INFOSCORE_PORT', '8000'), timeout=4)"]
CMD ["infoscore", "api"]

# ---------------------------------------------------------------------------------------
FROM base AS worker-build

# PyTorch's own wheel index: .../whl/cpu (default, about 200 MB) or a CUDA one such as
# .../whl/cu130 for the GPU worker. torch goes first and alone, pinned, so that the
# [worker] extra below finds it satisfied and never pulls a different build from PyPI.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY . /src
RUN pip install "/src[worker,postgres]" \
    && python -c "import torch, infoscore, workers.celery_app, workers.tasks; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------
FROM base AS worker

COPY --from=worker-build /opt/venv /opt/venv
USER 10001:10001
ENV INFOSCORE_WORKER_DEVICE=auto \
    INFOSCORE_WORKER_CONCURRENCY=1 \
    MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/data"]
# Alive = this container's Celery node answers a broadcast ping through the broker. Nodes
# are named infoscore-<pid>@<hostname> (launcher/cli.py), so match on the hostname only.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import socket, sys; from workers.celery_app import app; me = '@' + socket.gethostname(); replies = app.control.ping(timeout=5) or []; sys.exit(0 if any(n.endswith(me) for r in replies for n in r) else 1)"]
CMD ["infoscore", "worker"]
