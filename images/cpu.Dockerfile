# Slim CPU image for the phases without a GPU (ingest, phase2, phase6): CPU PyTorch, no CUDA libraries.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1

LABEL org.opencontainers.image.title="streetvision-stage1-cpu" \
      org.opencontainers.image.description="StreetVision Stage 1 pipeline components (CPU)" \
      org.opencontainers.image.source="https://github.com/streetvision/stage1" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /opt/streetvision
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN pip install ".[kfp]"

RUN useradd --create-home --uid 1000 streetvision
USER streetvision
WORKDIR /home/streetvision
