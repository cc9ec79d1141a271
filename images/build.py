#!/usr/bin/env python3
"""Build, tag and push the two component images, tagged with the package version.

    python images/build.py build --dry-run          # print the docker buildx commands, run nothing
    python images/build.py build --push             # build both images and push them
    python images/build.py build --registry europe-docker.pkg.dev/PROJECT/streetvision --push
    python images/build.py constraints              # refresh images/constraints.txt from requirements/lock.txt

The tags are `<registry>/stage1:<version>` (GPU, ../Dockerfile) and `<registry>/stage1-cpu:<version>`
(CPU, cpu.Dockerfile), where <version> is pyproject.toml's; the config's `cluster.gpu_image` /
`cluster.cpu_image` defaults name the same tags (a test checks that), so a compiled pipeline runs the
images built from the same commit. Standard library only: it runs before any environment exists.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
CONSTRAINTS = ROOT / "images" / "constraints.txt"
DEFAULT_REGISTRY = "ghcr.io/streetvision"
# image name -> Dockerfile (relative to the repository root, which is the build context)
IMAGES = {"stage1": "Dockerfile", "stage1-cpu": "images/cpu.Dockerfile"}
# Provided by each image's base (CUDA PyTorch) or its own pinned install (CPU PyTorch), never by the lock.
TORCH_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==", re.IGNORECASE)


def package_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def image_tags(registry: str = DEFAULT_REGISTRY, version: str | None = None) -> dict[str, str]:
    """Image name -> full tag, e.g. {'stage1': 'ghcr.io/streetvision/stage1:0.1.0', ...}."""
    version = version or package_version()
    return {name: f"{registry.rstrip('/')}/{name}:{version}" for name in IMAGES}


def build_commands(registry: str, push: bool, platform: str = "linux/amd64") -> list[list[str]]:
    version, revision = package_version(), git_revision()
    commands = []
    for name, tag in image_tags(registry, version).items():
        commands.append([
            "docker", "buildx", "build",
            "--file", IMAGES[name],
            "--platform", platform,
            "--build-arg", f"VERSION={version}",
            "--build-arg", f"REVISION={revision}",
            "--tag", tag,
            "--push" if push else "--load",
            ".",
        ])
    return commands


def constraints_text(lock_text: str) -> str:
    """The lock without the torch stack: every other runtime package pinned exactly as in CI."""
    kept = [line for line in lock_text.splitlines() if "==" in line and not TORCH_STACK.match(line)]
    header = [
        "# Pins for the component images: requirements/lock.txt without torch, torchvision, triton and the",
        "# nvidia-* CUDA wheels (each image brings its own PyTorch). Regenerate: python images/build.py constraints",
    ]
    return "\n".join(header + kept) + "\n"


def cmd_build(args: argparse.Namespace) -> int:
    for command in build_commands(args.registry, args.push, args.platform):
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, cwd=ROOT, check=True)
    if args.dry_run:
        print("(dry run: nothing was built)")
    return 0


def cmd_constraints(args: argparse.Namespace) -> int:
    text = constraints_text(LOCK.read_text())
    tmp = CONSTRAINTS.with_suffix(".txt.tmp")
    tmp.write_text(text)
    tmp.replace(CONSTRAINTS)
    print(f"wrote {CONSTRAINTS.relative_to(ROOT)} ({len(text.splitlines()) - 2} pins)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build both images with docker buildx, tagged with the package version")
    build.add_argument("--registry", default=DEFAULT_REGISTRY,
                       help=f"registry and repository prefix (default: {DEFAULT_REGISTRY})")
    build.add_argument("--push", action="store_true", help="push the images (otherwise load them locally)")
    build.add_argument("--platform", default="linux/amd64", help="target platform (default: linux/amd64)")
    build.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    build.set_defaults(func=cmd_build)
    cons = sub.add_parser("constraints", help="refresh images/constraints.txt from requirements/lock.txt")
    cons.set_defaults(func=cmd_constraints)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
