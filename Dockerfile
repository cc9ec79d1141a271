# The component images, GPU and CPU, from this one file: this package with kfp baked in (the pipeline's
# lightweight components run with install_kfp_package=False), every package, torch included, pinned to the
# lock that CI tests (requirements/lock.txt). The two images differ only in TORCH_INDEX_URL.
# Build and tag them with `python images/build.py build` (tags: <version>-<content digest>; images/README.md).
FROM python:3.11.11-slim-bookworm

# Where torch and torchvision come from. Empty: the default index, whose Linux wheels are CUDA builds (the GPU
# image; the NVIDIA libraries come as wheels, the driver from the node). The CPU image passes PyTorch's CPU
# index; where that index is unreachable, an empty value gives the CPU image the CUDA build, which runs on CPU.
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/streetvision
COPY requirements/lock.txt ./requirements/lock.txt

# torch in a layer of its own: the largest by far, rebuilt only when the lock or the index changes.
RUN pip install --constraint requirements/lock.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch torchvision

COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines

# The import check fails the build, not the first pipeline run, if something is missing. KFP's launcher
# writes artifacts under /gcs, /minio and /s3 (a fixed path contract), so the non-root user must own them.
RUN pip install --constraint requirements/lock.txt ".[kfp]" \
    && python -c "import streetvision, streetvision_components, streetvision_pipelines, kfp, kfp.kubernetes, torch" \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin streetvision \
    && mkdir -p /gcs /minio /s3 \
    && chown 1000:1000 /gcs /minio /s3

# After the installs, so that a new revision reuses every cached layer above.
ARG VERSION=unknown
ARG REVISION=unknown
ARG IMAGE_TITLE=streetvision-stage1
ARG IMAGE_DESCRIPTION="StreetVision Stage 1 pipeline components"
LABEL org.opencontainers.image.title="${IMAGE_TITLE}" \
      org.opencontainers.image.description="${IMAGE_DESCRIPTION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/streetvision/stage1" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.11-slim-bookworm"

USER 1000:1000
WORKDIR /home/streetvision
