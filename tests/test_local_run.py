"""The whole pipeline through the real KFP local runner, and resume after a killed run (slow: ~3 min)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

from streetvision.cli import main
from streetvision.config import config_from_yaml_file, load_config
from streetvision.contracts.validators import validate_bundle


def _streetvision(*args, **kw):
    return subprocess.run([sys.executable, "-m", "streetvision", *args], capture_output=True, text=True, **kw)


def _only_run_dir(output_dir: Path) -> Path:
    runs = [p for p in output_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_whole_pipeline_runs_locally(tmp_path):
    result = _streetvision("run", *TINY, "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert set(record["phases"].values()) == {"done"}
    validate_bundle(record["bundle"])
    assert Path(record["report"]).read_text().count("<img") == 5  # 4 plots + the challenge levels
    assert config_from_yaml_file(run_dir / "config.yaml") == load_config(TINY)
    assert f"bundle: {record['bundle']}" in result.stdout and f"report: {record['report']}" in result.stdout
    assert "majority-class rate" in result.stdout and "run summary (succeeded" in result.stdout
    assert "blessing: PASSED" in result.stdout or "blessing: FAILED" in result.stdout
    assert "Got executor_input" not in result.stdout  # kept in run.log, not on the console
    assert "Got executor_input" in (run_dir / "run.log").read_text()
    # The runner's own bookkeeping records (artifact reprs included) go to run.log whole, not to the console.
    for chatter in ("Streamed logs:", "outputs:\n", "uri='"):
        assert chatter not in result.stdout and chatter in (run_dir / "run.log").read_text(), chatter
    assert "Executing task" in result.stdout and "[streetvision] " in result.stdout  # the phases' own lines


@pytest.mark.slow
def test_killed_run_resumes_from_the_unfinished_phase(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "streetvision", "run", *TINY, "--output-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    try:
        # Kill the whole run (as a preemption would) as soon as phase 2 has started.
        while not list(tmp_path.glob("*/kfp/*/phase2-threshold")):
            assert process.poll() is None, "the run ended before phase 2 started"
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    run_dir = _only_run_dir(tmp_path)
    result = _streetvision("run", "--resume", str(run_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (run_dir / "run.log").read_text()
    assert "Task ingest cache hit" in log and "Task phase1-train cache hit" in log
    first, second = sorted(p for p in (run_dir / "kfp").iterdir() if p.name.startswith("streetvision"))
    assert {p.name for p in second.iterdir()} == {"phase2-threshold", "phase6-export", "evaluate"}
    assert "phase1-train" in {p.name for p in first.iterdir()}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "succeeded"
    assert "reused" in result.stdout  # the summary says which phases came from the first attempt


def test_resume_refuses_new_overrides(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    assert main(["run", "--resume", str(tmp_path), "training.epochs=2"]) == 2
    assert "--resume reruns a run with its saved config" in capsys.readouterr().err


def test_cli_reports_config_errors_in_one_message(capsys):
    assert main(["plan", "training.epohcs=1", "model.depth=two"]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "did you mean 'epochs'" in err and "model.depth: expected int" in err


def test_cli_plan_and_compile(tmp_path, capsys):
    assert main(["plan", "--phases", "phase1", "phase2", "phase6", "training.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "ingest -> phase1 -> phase2 -> phase6" in out and "added as dependencies: ingest" in out
    assert "ValCalibLogits [VAL_CALIB]" in out and "evaluate" not in out
    assert main(["compile", "-o", str(tmp_path / "p.yaml"), "--phases", "all"]) == 0
    assert (tmp_path / "p.yaml").read_text().startswith("#")
    assert main(["plan", "--phases", "phase6"]) == 2
    assert "exactly one policy phase" in capsys.readouterr().err
