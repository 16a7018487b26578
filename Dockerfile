# syntax=docker/dockerfile:1
# The virtfleet operator image. Build from the repository root:
#   docker build -t ghcr.io/virtfleet/virtfleet:0.1.0 .
# The Helm chart (charts/virtfleet) runs it as uid 65532 with a read-only root filesystem.

# One base for both stages: the virtualenv's interpreter is a link to the base image's python.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# -- builder: build the wheel and install it with its dependencies into /opt/virtfleet -----------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore): the package metadata and operator/.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/virtfleet \
    && /opt/virtfleet/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/virtfleet/bin/pip install /tmp/wheels/virtfleet-*.whl \
    && /opt/virtfleet/bin/pip uninstall --yes pip \
    && /opt/virtfleet/bin/python -m compileall -q /opt/virtfleet/lib \
    && rm -rf /tmp/wheels

# -- runtime: the virtualenv on the same slim base; no build tools, no pip caches, not root --------------
FROM ${PYTHON_IMAGE}
# A named user (kopf asks the OS for the user name when POD_ID is unset) with no home and no shell.
RUN groupadd --system --gid 65532 virtfleet \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin virtfleet
COPY --from=builder /opt/virtfleet /opt/virtfleet
ENV PATH=/opt/virtfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /
USER 65532:65532
# 9090: Prometheus metrics (VIRTFLEET_METRICS_PORT); 8080: kopf's /healthz (VIRTFLEET_LIVENESS_ENDPOINT).
EXPOSE 9090 8080
ENTRYPOINT ["virtfleet", "run"]
