#!/usr/bin/env python3
"""Build, tag, push and verify the two component images (GPU `stage1`, CPU `stage1-cpu`) from ../Dockerfile.

    python images/build.py tags                     # the tags this checkout builds (and compiles into pipelines)
    python images/build.py build --dry-run          # print the docker commands, run nothing
    python images/build.py build --registry europe-docker.pkg.dev/PROJECT/streetvision --push
    python images/build.py verify                   # built images: non-root, pip freeze equal to the lock, sizes

Tags are immutable: `<registry>/<name>:<version>-<content digest>`, where the digest covers every file the
Dockerfile copies and the image's build arguments (pipelines/images.py). The pipeline factory derives the
same tags from the same files, so a pipeline compiled from a checkout names exactly the images built from it.
Builds use plain `docker build`: the legacy builder where buildx is absent, BuildKit where it is the default.
Standard library only: it runs before any environment exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _load_images_module():
    # By path: the package may not be installed yet when images are built.
    spec = importlib.util.spec_from_file_location("streetvision_images", ROOT / "pipelines" / "images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


images = _load_images_module()

TITLES = {
    images.GPU_IMAGE: ("streetvision-stage1", "StreetVision Stage 1 pipeline components (GPU: CUDA PyTorch)"),
    images.CPU_IMAGE: ("streetvision-stage1-cpu", "StreetVision Stage 1 pipeline components (CPU)"),
}


def git_revision() -> str:
    if shutil.which("git") is None:
        return "unknown"
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def build_commands(registry: str, push: bool, cpu_torch_index: str, platform: str | None) -> list[list[str]]:
    tags = images.image_tags(registry, cpu_torch_index)
    version, revision = images.package_version(), git_revision()
    commands = []
    for name, tag in tags.items():
        build_args = {
            **images.image_build_args(name, cpu_torch_index),
            "VERSION": version,
            "REVISION": revision,
            "IMAGE_TITLE": TITLES[name][0],
            "IMAGE_DESCRIPTION": TITLES[name][1],
        }
        command = ["docker", "build", "--file", images.DOCKERFILE, "--tag", tag, "--network", "host"]
        if platform:
            command += ["--platform", platform]
        for key, value in build_args.items():
            command += ["--build-arg", f"{key}={value}"]
        commands.append(command + ["."])
        if push:
            commands.append(["docker", "push", tag])
    return commands


def lock_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            pins[_normalize(name)] = version.strip()
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def freeze_drift(freeze_text: str, lock_text: str) -> list[str]:
    """Packages in an image's `pip freeze` that the lock does not pin at that version (a local version label
    such as +cpu is the same release). Empty when the image runs exactly the tested stack."""
    pins, problems = lock_pins(lock_text), []
    installed = {}
    for line in freeze_text.splitlines():
        if "==" not in line:
            continue  # this package itself (`name @ file://...`) and comments
        name, version = line.split("==", 1)
        installed[_normalize(name)] = version.strip()
    for name, version in sorted(installed.items()):
        if name == "streetvision":
            continue
        if name not in pins:
            problems.append(f"{name}=={version} is not in requirements/lock.txt")
        elif version.split("+")[0] != pins[name]:
            problems.append(f"{name}=={version}, the lock pins {pins[name]}")
    for required in ("torch", "torchvision", "kfp"):
        if required not in installed:
            problems.append(f"{required} is not installed")
    return problems


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def verify_image(tag: str) -> dict:
    """What CI checks of a built image: who it runs as, that it runs the lock, and how big it is."""
    config = json.loads(_docker("image", "inspect", tag))[0]
    user = config["Config"].get("User") or "root"
    freeze = _docker("run", "--rm", "--network", "none", "--entrypoint", "pip", tag, "freeze")
    torch = _docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python",
        tag,
        "-c",
        "import torch, torchvision; print(torch.__version__, torchvision.__version__)",
    ).split()
    problems = [f"runs as {user}, not as a non-root user"] if user.split(":")[0] in ("", "0", "root") else []
    problems += freeze_drift(freeze, LOCK.read_text())
    return {"tag": tag, "user": user, "size_gb": config["Size"] / 1e9, "torch": torch, "problems": problems}


def cmd_tags(args: argparse.Namespace) -> int:
    tags = images.image_tags(args.registry, args.cpu_torch_index)
    if args.format == "overrides":
        print(f"cluster.gpu_image={tags[images.GPU_IMAGE]} cluster.cpu_image={tags[images.CPU_IMAGE]}")
    else:
        for name, tag in tags.items():
            print(f"{name}\t{tag}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    tags = images.image_tags(args.registry, args.cpu_torch_index)
    for command in build_commands(args.registry, args.push, args.cpu_torch_index, args.platform):
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, cwd=ROOT, check=True)
    if args.dry_run:
        print("(dry run: nothing was built)")
    elif images.image_tags(args.registry, args.cpu_torch_index) != tags:
        # A tag must name what it was built from: sources edited mid-build may be in one layer and not another.
        print(
            "the sources changed while the images were built, so their tags may not match their content: "
            "build again from an unchanging checkout",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    failed = False
    for tag in images.image_tags(args.registry, args.cpu_torch_index).values():
        result = verify_image(tag)
        print(
            f"{result['tag']}: user {result['user']}, {result['size_gb']:.2f} GB, "
            f"torch {' / torchvision '.join(result['torch'])}"
        )
        for problem in result["problems"]:
            print(f"  FAIL: {problem}")
        failed |= bool(result["problems"])
    if failed:
        print(
            "The images must run the lock CI tests (requirements/lock.txt) as a non-root user: rebuild them "
            "with `python images/build.py build` after `make lock`.",
            file=sys.stderr,
        )
        return 1
    print("images verified: non-root, pip freeze matches requirements/lock.txt")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        default=images.DEFAULT_REGISTRY,
        help=f"registry and repository prefix (default: {images.DEFAULT_REGISTRY})",
    )
    common.add_argument(
        "--cpu-torch-index",
        default=images.CPU_TORCH_INDEX,
        metavar="URL",
        help="index the CPU image takes torch from (default: PyTorch's CPU index); '' takes the "
        "default index's CUDA build, which runs on CPU, where that index is unreachable. "
        "It is part of the CPU image's tag.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tags = sub.add_parser("tags", parents=[common], help="print the image tags of this checkout")
    tags.add_argument(
        "--format",
        choices=["lines", "overrides"],
        default="lines",
        help="lines: name and tag; overrides: as config overrides for compile/run/submit",
    )
    tags.set_defaults(func=cmd_tags)
    build = sub.add_parser("build", parents=[common], help="build both images with `docker build`")
    build.add_argument("--push", action="store_true", help="push the images after building them")
    build.add_argument("--platform", help="target platform, e.g. linux/amd64 (default: the engine's own)")
    build.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    build.set_defaults(func=cmd_build)
    verify = sub.add_parser(
        "verify", parents=[common], help="check the built images: non-root user, pip freeze equal to the lock"
    )
    verify.set_defaults(func=cmd_verify)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
