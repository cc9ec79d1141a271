"""How a local run fails: input paths checked before any task starts, and no retries unless asked for.

A cluster retries a failed task after cluster.retry_backoff (doubling); a local run must neither inherit
those waits nor repeat a failure that cannot succeed. The whole-pipeline test at the end runs the real KFP
local runner into a failure in phase 1 (~1 min).
"""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import TINY
from streetvision_pipelines.factory import RetryPolicy, compile_pipeline
from streetvision_pipelines.inspect_spec import load_documents

from streetvision.cli import main
from streetvision.config import ConfigError, load_config
from streetvision.preflight import local_input_problems


def _problems(*overrides) -> dict[str, str]:
    return {p.key: f"{p.what}; {p.fix}" for p in local_input_problems(load_config(list(overrides)))}


def test_missing_and_unreadable_inputs_are_named_by_key(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "no_parquet").mkdir()
    (tmp_path / "no_parquet" / "notes.txt").write_text("x")

    assert _problems("data.source=manifest", f"data.manifest={manifest}") == {}
    assert _problems("data.source=folder", f"data.path={tmp_path / 'images'}") == {}
    assert _problems() == {}  # the demo reads nothing
    missing = _problems("data.source=manifest", f"data.manifest={tmp_path / 'gone.csv'}")
    assert "no such manifest" in missing["data.manifest"] and str(tmp_path / "gone.csv") in missing["data.manifest"]
    assert "CSV" in missing["data.manifest"]  # the fix says what a manifest is
    assert "must end in" in _problems("data.source=manifest", f"data.manifest={tmp_path / 'images'}")["data.manifest"]
    (tmp_path / "folder.csv").mkdir()
    folder_named_csv = _problems("data.source=manifest", f"data.manifest={tmp_path / 'folder.csv'}")
    assert "is not a file" in folder_named_csv["data.manifest"]
    assert "not a folder" in _problems("data.source=folder", f"data.path={manifest}")["data.path"]
    assert "no such image folder" in _problems("data.source=folder", f"data.path={tmp_path / 'gone'}")["data.path"]
    assert "no .parquet files" in _problems("data.source=parquet", f"data.path={tmp_path / 'no_parquet'}")["data.path"]
    no_file = _problems("data.source=parquet", f"data.path={tmp_path / 'x.parquet'}")
    assert "no such parquet file" in no_file["data.path"]
    assert "s3://" in _problems("data.source=manifest", "data.manifest=s3://bucket/m.csv")["data.manifest"]


def test_several_sources_weights_and_pool_are_checked_per_selected_phase(tmp_path):
    sources = (
        f"data.sources=[{{kind: manifest, path: {tmp_path}/a.csv, name: a}}, "
        f"{{kind: folder, path: {tmp_path}, name: b}}, {{kind: parquet, path: {tmp_path}/c.parquet, name: c}}]"
    )
    found = _problems("data.source=sources", sources)
    assert set(found) == {"data.sources[0].path", "data.sources[2].path"}
    weights = f"model.weights={tmp_path / 'w.safetensors'}"
    assert "no such weights file" in _problems(weights)["model.weights"]
    assert _problems(weights, "pipeline.phases=[ingest]") == {}  # phase 1 (the reader) is not selected
    assert _problems("model.weights=hub") == _problems(f"model.weights={tmp_path}") == {}
    pool = f"explora.pool_source={tmp_path / 'pool'}"
    assert "explora.pool_source" in _problems(pool, "pipeline.phases=[phase4, phase1]", "model=vit_tiny")
    with pytest.raises(ConfigError, match="not a ViT"):  # phase 4 on the default CNN: refused before any run
        load_config(["pipeline.phases=[phase4, phase1]"])
    assert _problems(pool) == {}  # phase 4 not selected


def test_remote_uris_are_left_to_the_tasks():
    assert (
        _problems(
            "data.source=manifest",
            "data.manifest=gs://bucket/roadwork/manifest.csv",
            "model.weights=gs://bucket/w.safetensors",
        )
        == {}
    )


def test_unreadable_inputs_are_refused(tmp_path, monkeypatch):
    manifest, folder = tmp_path / "m.csv", tmp_path / "images"
    manifest.write_text("path,label\n")
    folder.mkdir()
    manifest.chmod(0)
    folder.chmod(0)
    try:
        if os.access(manifest, os.R_OK):  # root reads anything: let the check see what another user would
            monkeypatch.setattr(os, "access", lambda path, mode: False)
        assert "not readable" in _problems("data.source=manifest", f"data.manifest={manifest}")["data.manifest"]
        assert "cannot be listed" in _problems("data.source=folder", f"data.path={folder}")["data.path"]
    finally:
        folder.chmod(0o755)


def test_run_with_a_missing_manifest_fails_at_once_without_a_run_folder(tmp_path, capsys):
    started = time.time()
    code = main(["run", "data.source=manifest", "data.manifest=/nonexistent.csv", "--output-dir", str(tmp_path / "o")])
    seconds = time.time() - started
    err = capsys.readouterr().err
    assert code == 4 and seconds < 10, (code, seconds)  # a data error
    assert "data.manifest=/nonexistent.csv: no such manifest: /nonexistent.csv" in err
    assert "where:" in err and "fix:" in err
    assert not (tmp_path / "o").exists()  # nothing was started, nothing to clean up


def test_plan_compile_and_submit_leave_cluster_paths_alone(tmp_path, capsys):
    # A cluster's pods read these paths (a PVC mount, a path in the image): this machine cannot judge them.
    missing = ["data.source=manifest", "data.manifest=/data/on/the/pvc/manifest.csv"]
    assert main(["plan", *missing]) == 0
    assert main(["compile", *missing, "-o", str(tmp_path / "p.yaml")]) == 0
    assert main(["submit", *missing, "--dry-run"]) == 0
    capsys.readouterr()


def test_local_retries_change_only_the_retry_policy(tmp_path):
    """The cluster YAML keeps cluster.retries/retry_backoff; a local run's tasks are retried N times at once.
    Nothing the local cache keys on (image, command, arguments, env) changes with the retry setting, so a
    resumed run with another --retries still reuses its finished phases."""
    cfg = load_config()
    docs = {
        name: load_documents(compile_pipeline(cfg, tmp_path / f"{name}.yaml", retry).read_text())
        for name, retry in {"cluster": None, "none": RetryPolicy(0), "two": RetryPolicy(2)}.items()
    }
    tasks = {name: d[0]["root"]["dag"]["tasks"] for name, d in docs.items()}
    for task in tasks["cluster"].values():
        assert task["retryPolicy"]["maxRetryCount"] == cfg.cluster.retries
        assert task["retryPolicy"]["backoffDuration"] == cfg.cluster.retry_backoff
    assert all("retryPolicy" not in task for task in tasks["none"].values())
    for task in tasks["two"].values():
        assert task["retryPolicy"]["maxRetryCount"] == 2 and task["retryPolicy"]["backoffDuration"] == "0s"
    for name in ("none", "two"):
        assert docs[name][0]["deploymentSpec"] == docs["cluster"][0]["deploymentSpec"]
        assert docs[name][0]["components"] == docs["cluster"][0]["components"]
        assert docs[name][0]["root"]["inputDefinitions"] == docs["cluster"][0]["root"]["inputDefinitions"]
        for key, task in tasks[name].items():
            assert {k: v for k, v in task.items() if k != "retryPolicy"} == {
                k: v for k, v in tasks["cluster"][key].items() if k != "retryPolicy"
            }


def _streetvision(*args):
    return subprocess.run([sys.executable, "-m", "streetvision", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_a_failing_task_is_tried_once_unless_retries_are_asked_for(tmp_path):
    """Phase 1 fails on weights that do not fit the model (knowable only by loading them): once by default,
    twice with --retries 1, each retry said on the console and in run.log. A resume with other --retries
    reuses the finished ingest from the local cache."""
    from safetensors.torch import save_file

    from streetvision.models import create_model

    weights = tmp_path / "weights.safetensors"
    save_file({"not_a_vit.weight": __import__("torch").zeros(2)}, str(weights))
    args = [*TINY, f"model.weights={weights}", "--phases", "ingest", "phase1"]

    first = _streetvision("run", *args, "--output-dir", str(tmp_path / "once"))
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-2000:]
    (run_dir,) = (tmp_path / "once").iterdir()
    log = (run_dir / "run.log").read_text()
    assert log.count("Executing task \x1b[96m'phase1-train'") == 1 and "Retrying" not in log
    assert log.count("weights do not match") == 1
    assert "not retried locally unless --retries N" in first.stderr

    started = time.time()
    second = _streetvision("run", *args, "--retries", "1", "--output-dir", str(tmp_path / "twice"))
    assert second.returncode == 1
    (run_dir,) = (tmp_path / "twice").iterdir()
    log = (run_dir / "run.log").read_text()
    assert log.count("Executing task \x1b[96m'phase1-train'") == 2 and log.count("weights do not match") == 2
    retried = "Task phase1-train failed (attempt 1/2). Retrying in 0.0s"
    assert retried in log and retried in second.stdout
    assert json.loads((run_dir / "run.json").read_text())["retries"] == 1
    assert time.time() - started < 120  # no backoff waited out

    # Fix the weights in place and resume with another retry setting: ingest comes from the cache.
    cfg = load_config(TINY)
    save_file({k: v.contiguous() for k, v in create_model(cfg.model).state_dict().items()}, str(weights))
    resumed = _streetvision("run", "--resume", str(run_dir), "--retries", "0")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    log = (run_dir / "run.log").read_text()
    assert "Task ingest cache hit" in log
    assert json.loads((run_dir / "run.json").read_text())["status"] == "succeeded"
    # Subprocess tasks name a fixed stand-in image, not the checkout's (whose tag hashes the library): the
    # image is part of the cache key, so a code fix before a resume must not invalidate the finished phases.
    from streetvision_pipelines.local_run import SUBPROCESS_IMAGE

    executors = load_documents((run_dir / "pipeline.yaml").read_text())[0]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {SUBPROCESS_IMAGE}
