# GPU component image: CUDA PyTorch + this package + kfp (components run with install_kfp_package=False).
# Build: see images/README.md (tag = package version).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

LABEL org.opencontainers.image.title="streetvision-stage1" \
      org.opencontainers.image.description="StreetVision Stage 1 pipeline components (GPU)" \
      org.opencontainers.image.source="https://github.com/streetvision/stage1" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The CUDA wheels carry their own CUDA runtime; the node only needs the NVIDIA driver.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /opt/streetvision
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN pip install ".[kfp]"

RUN useradd --create-home --uid 1000 streetvision
USER streetvision
WORKDIR /home/streetvision
