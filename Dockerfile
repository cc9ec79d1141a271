# syntax=docker/dockerfile:1
# GPU component image: CUDA PyTorch (base image) + this package + kfp baked in, so the pipeline's lightweight
# components run with install_kfp_package=False. Build, tag and push: images/README.md (tag = package version).
FROM pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime

ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="streetvision-stage1" \
      org.opencontainers.image.description="StreetVision Stage 1 pipeline components (GPU: CUDA PyTorch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/streetvision/stage1" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/pytorch/pytorch:2.9.0-cuda13.0-cudnn9-runtime"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/streetvision
COPY images/constraints.txt pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines

# torch and torchvision come from the base image; every other package is pinned to CI's lock by the
# constraints file. The import check fails the build, not the first pipeline run, if something is missing.
# KFP's launcher writes artifacts under /gcs, /minio and /s3 (a fixed path contract), so the non-root user
# must own them.
RUN pip install --constraint constraints.txt ".[kfp]" \
    && python -c "import streetvision, streetvision_components, streetvision_pipelines, kfp, kfp.kubernetes, torch" \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin streetvision \
    && mkdir -p /gcs /minio /s3 \
    && chown 1000:1000 /gcs /minio /s3

USER 1000:1000
WORKDIR /home/streetvision
