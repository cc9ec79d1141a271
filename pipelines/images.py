"""The component images and their immutable tags (standard library only: images/build.py runs before any
environment exists, and imports this file by path).

Both images come from the one `Dockerfile`; they differ only in where torch comes from. A tag is
`<package version>-<content digest>`: the digest covers every file the Dockerfile copies (filtered by
`.dockerignore`, as the build context is) and the image's build arguments. Rebuilding after any change to
the library, the lock or the Dockerfile therefore gives a new tag, and since the tag is part of each task's
container spec, it changes every task's cache key too, on a cluster and in the local runner alike: a task
can never be served from a cache filled by an older image.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

import tomllib

# The source checkout this module belongs to (its parent folder); absent when the package is installed
# from a wheel, where images cannot be tagged from source.
SOURCE_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = "Dockerfile"
DEFAULT_REGISTRY = "ghcr.io/streetvision"
# PyPI's Linux torch wheels are CUDA builds: the GPU image takes them; the CPU image takes PyTorch's CPU builds.
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Image name -> its build arguments (the ones that change what is installed; they enter the digest).
IMAGES = {
    "stage1": {"TORCH_INDEX_URL": ""},
    "stage1-cpu": {"TORCH_INDEX_URL": CPU_TORCH_INDEX},
}
GPU_IMAGE, CPU_IMAGE = "stage1", "stage1-cpu"
DIGEST_LENGTH = 12


class ImageTagError(FileNotFoundError):
    """The image tags cannot be derived here: no source checkout (the CLI reports it as a missing file)."""


def has_source_tree(root: Path = SOURCE_ROOT) -> bool:
    return (root / DOCKERFILE).is_file() and (root / "pyproject.toml").is_file()


def _require_source(root: Path) -> None:
    if not has_source_tree(root):
        raise ImageTagError(
            f"no source checkout at {root} to derive the image tags from; set cluster.gpu_image and "
            "cluster.cpu_image to the images you built (python images/build.py tags prints them)"
        )


def package_version(root: Path = SOURCE_ROOT) -> str:
    _require_source(root)
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


def copied_sources(root: Path = SOURCE_ROOT) -> list[str]:
    """The sources of every COPY in the Dockerfile, relative to the build context (the repository root)."""
    sources = []
    for line in (root / DOCKERFILE).read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def _ignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    # .dockerignore semantics for the patterns used here: a pattern matches a path or any folder above it;
    # a leading "**/" matches at any depth.
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern[3:] if pattern.startswith("**/") else None
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if bare is not None and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], bare):
                return True
    return False


def context_files(root: Path = SOURCE_ROOT) -> list[str]:
    """Every file the image build copies, as sorted paths relative to the repository root."""
    _require_source(root)
    patterns = _ignore_patterns(root)
    files = set()
    for source in [DOCKERFILE, ".dockerignore", *copied_sources(root)]:
        path = root / source
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            relative = candidate.relative_to(root).as_posix()
            if relative in (DOCKERFILE, ".dockerignore") or not _ignored(relative, patterns):
                files.add(relative)
    return sorted(files)


def content_digest(build_args: dict[str, str], root: Path = SOURCE_ROOT) -> str:
    """sha256 over the build context's files (path and bytes) and the build arguments, shortened."""
    digest = hashlib.sha256()
    for relative in context_files(root):
        digest.update(relative.encode() + b"\0" + (root / relative).read_bytes() + b"\0")
    for key in sorted(build_args):
        digest.update(f"{key}={build_args[key]}\0".encode())
    return digest.hexdigest()[:DIGEST_LENGTH]


def image_build_args(name: str, cpu_torch_index: str = CPU_TORCH_INDEX) -> dict[str, str]:
    args = dict(IMAGES[name])
    if name == CPU_IMAGE:
        args["TORCH_INDEX_URL"] = cpu_torch_index
    return args


def image_tags(
    registry: str = DEFAULT_REGISTRY, cpu_torch_index: str = CPU_TORCH_INDEX, root: Path = SOURCE_ROOT
) -> dict[str, str]:
    """Image name -> `<registry>/<name>:<version>-<digest>`, the tag `images/build.py` gives what it builds."""
    version = package_version(root)
    return {
        name: f"{registry.rstrip('/')}/{name}:{version}-{content_digest(image_build_args(name, cpu_torch_index), root)}"
        for name in IMAGES
    }
