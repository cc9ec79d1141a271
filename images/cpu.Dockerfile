# syntax=docker/dockerfile:1
# Slim CPU image for the phases without a GPU (ingest, phase2, phase6): CPU PyTorch, no CUDA libraries.
# Same PyTorch version as the GPU image's base, same pins (constraints.txt) for everything else.
FROM python:3.11.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG TORCH_VERSION=2.9.0
ARG TORCHVISION_VERSION=0.24.0

LABEL org.opencontainers.image.title="streetvision-stage1-cpu" \
      org.opencontainers.image.description="StreetVision Stage 1 pipeline components (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/streetvision/stage1" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/streetvision
COPY images/constraints.txt pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines

# CPU wheels of PyTorch from its own index (PyPI's Linux wheels pull in the CUDA libraries), then the package
# with everything else pinned. /gcs, /minio and /s3: KFP's launcher writes artifacts there (see ../Dockerfile).
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install --constraint constraints.txt ".[kfp]" \
    && python -c "import streetvision, streetvision_components, streetvision_pipelines, kfp, kfp.kubernetes, torch" \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin streetvision \
    && mkdir -p /gcs /minio /s3 \
    && chown 1000:1000 /gcs /minio /s3

USER 1000:1000
WORKDIR /home/streetvision
