"""Project rules that are cheap to break by accident."""

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "streetvision"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_kfp():
    offenders = [str(p.relative_to(ROOT)) for p in LIBRARY.rglob("*.py") if "kfp" in _imports(p)]
    assert offenders == []
    # Only the CLI reaches the KFP layer, lazily, inside the commands that need it.
    reaching = [
        p.name for p in LIBRARY.rglob("*.py") if _imports(p) & {"streetvision_pipelines", "streetvision_components"}
    ]
    assert reaching == ["cli.py"]


def test_the_demo_renderer_stays_outside_the_library_and_its_images():
    # The library, components and pipelines reach the renderer only through the local runner, lazily.
    shipped = [*LIBRARY.rglob("*.py"), *(ROOT / "components").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]
    reaching = [p.name for p in shipped if "streetvision_demo" in _imports(p)]
    assert reaching == ["local_run.py"]
    from streetvision_pipelines.images import context_files

    assert not [f for f in context_files() if "demo" in f.split("/")[0] or f.endswith("scenes.py")]


def test_importing_the_whole_library_does_not_load_kfp():
    modules = sorted(
        ".".join(p.relative_to(LIBRARY.parent).with_suffix("").parts)
        for p in LIBRARY.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "assert not [m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')], 'kfp was imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_package_is_listed_for_installation():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in LIBRARY.rglob("__init__.py")}
    found |= {"streetvision_components", "streetvision_pipelines"}
    assert found == listed


def test_layout_exists():
    for name in (
        "components",
        "pipelines",
        "images",
        "manifests",
        "src/streetvision",
        "tests",
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        ".ci/run",
        "Makefile",
    ):
        assert (ROOT / name).exists(), name


def test_cli_help_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "streetvision", "--help"], capture_output=True, text=True, check=True)
    for command in ("run", "plan", "compile", "config"):
        assert command in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "streetvision", "run", "--help"], capture_output=True, text=True, check=True
    )
    assert "--resume" in out.stdout and "--phases" in out.stdout and "--output-dir" in out.stdout
