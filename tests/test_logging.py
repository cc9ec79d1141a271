"""The library logs through `logging` with one console handler: `[streetvision] ...` on stderr, once, even where
a root handler exists (a KFP task's executor installs one)."""

import logging
import subprocess
import sys

CODE = """
import logging, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="[KFP Executor INFO]: %(message)s")
from streetvision.phases import phase2
phase2.logger.info("policy fitted")
phase2.logger.warning("no threshold meets the target")
logging.getLogger("kfp").info("executor line")
"""


def test_one_console_handler_and_no_second_copy_through_the_root_logger():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert result.stderr.splitlines() == [
        "[streetvision] policy fitted",
        "[streetvision] WARNING: no threshold meets the target",
    ]
    assert result.stdout.splitlines() == ["[KFP Executor INFO]: executor line"]


def test_the_handler_writes_to_stderr_as_it_is_now(capsys):
    logging.getLogger("streetvision.phases.ingest").info("3 records")
    assert capsys.readouterr().err == "[streetvision] 3 records\n"


def test_the_library_has_no_print_calls():
    from pathlib import Path

    library = Path(__file__).resolve().parents[1] / "src" / "streetvision"
    offenders = [
        f"{p.name}:{i}"
        for p in library.rglob("*.py")
        if p.name != "cli.py"  # the command line's own output (tables, JSON lines) is printed
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if line.lstrip().startswith("print(")
    ]
    assert offenders == []
