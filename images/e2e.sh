#!/usr/bin/env bash
# The containerized end-to-end check (`make e2e-containers`, run by CI): build both component images from
# ../Dockerfile, verify them (non-root, `pip freeze` equal to requirements/lock.txt), then run the whole default
# pipeline on the demo data with kfp.local.DockerRunner, every task inside its phase's image without network.
# Fails when a build, a check or any task fails, or when a task's outputs lack their completion records.
# The images do not carry the demo renderer (demo/): `streetvision run` renders the scenes here and links them
# into the run's pipeline root, which the runner mounts into every task's container at the same path.
#
# Needs: a Docker engine (or Debian's docker.io package, installed and started here, which needs root), and the
# project's environment (.venv, from `make test` or `make demo`). Where the Dockerfile's base image cannot be
# pulled, it is made from Debian's packages with debootstrap (root). Every daemon this script starts, it stops,
# by its PID. Extra run arguments: E2E_ARGS="training.epochs=2".
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/e2e-containers}
# Where the CPU image takes torch from: PyTorch's CPU index by default. Where that index is unreachable (only the
# package registry is), the CPU image takes the registry's torch, a CUDA build that runs on CPU; its tag differs
# (the index is part of the digest). Set CPU_TORCH_INDEX to choose ('' for the registry's build).
if [ -z "${CPU_TORCH_INDEX+set}" ]; then
    CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
    if ! python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=15)" \
            "$CPU_TORCH_INDEX" >/dev/null 2>&1; then
        echo "PyTorch's CPU index is unreachable: the CPU image takes the default index's torch (CUDA build, runs on CPU)"
        CPU_TORCH_INDEX=""
    fi
fi
WORK=$(mktemp -d)
DOCKERD_PID=""

log() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

cleanup() {
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the Docker engine this script started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

apt_install() {
    if [ ! -f "$WORK/.apt-updated" ]; then apt-get update -qq && touch "$WORK/.apt-updated"; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_engine() {
    if docker info >/dev/null 2>&1; then return; fi
    if ! command -v dockerd >/dev/null; then
        log "installing Debian's docker.io (no Docker engine here)"
        apt_install docker.io
    fi
    log "starting dockerd (host network left alone: no bridge, no iptables, no forwarding)"
    dockerd --bridge=none --iptables=false --ip-forward=false >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
    cat "$WORK/dockerd.log" >&2
    echo "dockerd did not come up within 60 s (its log is above)" >&2
    exit 1
}

# The Dockerfile's FROM image, pulled, or (no registry reachable) made from Debian's packages: the same Debian
# release and Python minor version, python/pip from a venv first on PATH as in the official image, and this
# machine's CA bundle, which package downloads here need.
ensure_base_image() {
    local base rootfs
    base=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' Dockerfile | head -n 1)
    if docker image inspect "$base" >/dev/null 2>&1; then return; fi
    if timeout 120 docker pull "$base" >/dev/null 2>&1; then return; fi
    log "no registry for $base: making it from Debian's packages"
    command -v debootstrap >/dev/null || apt_install debootstrap
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv bookworm "$rootfs" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    chroot "$rootfs" python3 -m venv /opt/python
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base" >/dev/null
}

ensure_engine
ensure_base_image

log "building the images"
python3 images/build.py build --cpu-torch-index "$CPU_TORCH_INDEX"
log "verifying the images"
python3 images/build.py verify --cpu-torch-index "$CPU_TORCH_INDEX"

log "running the whole default pipeline in the images (kfp.local.DockerRunner)"
read -r -a IMAGE_OVERRIDES <<<"$(python3 images/build.py tags --cpu-torch-index "$CPU_TORCH_INDEX" --format overrides)"
read -r -a EXTRA <<<"${E2E_ARGS:-}"
mkdir -p "$OUTPUT_DIR"
"$PY" -m streetvision run --runner docker --output-dir "$OUTPUT_DIR" "${IMAGE_OVERRIDES[@]}" "${EXTRA[@]}"

# The run exits non-zero when a task failed or lacks its completion records; say which image each task ran in.
run_dir=$(ls -td "$OUTPUT_DIR"/*/ | head -n 1)
"$PY" - "$run_dir" "${IMAGE_OVERRIDES[@]}" <<'EOF'
import json
import sys
from pathlib import Path

from streetvision_pipelines.inspect_spec import load_documents

run_dir, overrides = Path(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:])
built = {overrides["cluster.gpu_image"], overrides["cluster.cpu_image"]}
spec = load_documents((run_dir / "pipeline.yaml").read_text())[0]
executors = spec["deploymentSpec"]["executors"]
tasks = spec["root"]["dag"]["tasks"]
print(f"\n{'task':<16} image")
for name, task in tasks.items():
    executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    image = executors[executor]["container"]["image"]
    print(f"{name:<16} {image}")
    if image not in built:
        sys.exit(f"task {name} ran {image}, which is not an image this check built ({sorted(built)})")
record = json.loads((run_dir / "run.json").read_text())
print(f"\ncontainerized run {record['status']}: {record['phases']}")
sys.exit(0 if record["status"] == "succeeded" else 1)
EOF
