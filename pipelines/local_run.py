"""Run the pipeline with the KFP local runner, in a run folder of its own, resumable after a failure.

Layout of a run folder (under --output-dir):
  config.yaml   the resolved config (a resumed run reads it back, so it reruns the same pipeline)
  pipeline.yaml the compiled pipeline that ran
  run.json      status, timings, and where the bundle and report are
  run.log       the complete log of every task (the console shows the readable part)
  run.lock      held (fcntl.flock) while a run or resume works in the folder: a second one is refused
  kfp/          the KFP pipeline root: task outputs and the local cache (.kfp_cache) that makes resume work
  kfp/signing/  the run's own signing key pair, when the config names no key
  damaged/      outputs of an earlier attempt that failed verification on resume, moved aside (kept, not deleted)

A resume first verifies every output the local cache would reuse (completion record, file list, every
file's digest). An output that fails is moved to damaged/ and its cache entry removed, so the task that wrote
it runs again, and so does everything downstream of it (their cache keys name its new output).

A failed task is reported at its first attempt unless retries are asked for (`--retries N`: N more attempts,
at once). The cluster's policy (cluster.retries, waiting cluster.retry_backoff, doubling) stays in the YAML
compiled for a cluster: it is there to ride out preemptions, which a local run does not have. The retry setting
is not part of any task's cache key (the local cache keys on image, command, arguments and env), so
`--resume` reuses finished phases whatever `--retries` either run had.
"""

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kfp import local
from kfp.local.cache import LocalCache
from streetvision_pipelines.factory import RetryPolicy, build_pipeline, compile_pipeline

from streetvision import io as storage
from streetvision.config import Config, ConfigError, config_from_yaml_file, config_to_json, config_to_yaml
from streetvision.contracts import ContractError, StreetVisionError
from streetvision.contracts.metadata import SCHEMA, verify_artifact
from streetvision.phase_graph import resolve_phases
from streetvision.phases.ingest import remove_stale_staging
from streetvision.run_summary import PIPELINE_ROOT, RUN_CONFIG, RUN_RECORD, RunSummary, summarize_run
from streetvision.signing import public_key_fingerprint, with_own_signing_key

RUN_LOG = "run.log"
RUN_LOCK = "run.lock"
DAMAGED = "damaged"
# Where kfp 2.17.3's local runner keeps its task cache when local.init gets no cache_root.
CACHE_DIR = ".kfp_cache"
# run.json is always written this large (padded with spaces, which JSON ignores): if the disk fills during a
# run or before a resume, the final record still fits in blocks the file already has.
RECORD_RESERVE_BYTES = 16 * 1024
# What the local runner's own log lines say when it reuses a cached task or retries a failed one
# (kfp.local.orchestrator.task_executor: "Task X cache hit ...", "Task X failed (attempt i/n). Retrying in ...").
TASK_EVENTS = ("cache hit", "Retrying in")
# The local runner's bookkeeping records in this process (kfp.local.task_dispatcher logs them on the root
# logger), told apart by their first line: each whole record, however many lines of artifact repr it holds,
# goes to run.log only.
RUNNER_BOOKKEEPING = ("Streamed logs:", " outputs:", " has no outputs")
# A task's own output reaches this process as text (the subprocess's stdout), so its executor's bookkeeping
# lines are told apart by their text: kept in run.log, left off the console (with the input JSON dump).
_QUIET = re.compile(r"\[KFP Executor [^]]*INFO\]: (Looking for|Loading KFP|Wrote executor)")


class ConsoleFilter(io.TextIOBase):
    """Tee for the local run: everything to run.log, the readable part to the console."""

    def __init__(self, console, log_file):
        self.console, self.log_file = console, log_file
        self.pending = ""
        self.in_dump = False

    def _to_log(self, action) -> None:
        """A log that cannot be written (a full disk) stops the log, never the run; the console says so once."""
        if self.log_file is None:
            return
        try:
            action(self.log_file)
        except OSError as exc:
            self.log_file = None
            self.console.write(f"[streetvision] {RUN_LOG} is no longer written: {exc}\n")

    def write(self, text: str) -> int:
        self._to_log(lambda log: log.write(text))
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._route(line)
        return len(text)

    def _route(self, line: str) -> None:
        if "Got executor_input:" in line:
            self.in_dump = True
            return
        if self.in_dump:
            # The dump is indented JSON; it ends with a closing brace at the dump's own indentation.
            self.in_dump = line.strip() != "}" or line.startswith("        ")
            return
        if not _QUIET.search(line):
            self.console.write(line + "\n")

    def flush(self) -> None:
        self._to_log(lambda log: log.flush())
        self.console.flush()


@dataclass
class LocalRun:
    run_dir: Path
    succeeded: bool
    error: str | None
    seconds: float
    summary: RunSummary


class _RunLogOnly(logging.Filter):
    """On the root logger (which keeps its filters while the local runner swaps its handlers per task): the
    runner's bookkeeping records are written to run.log and not passed on to the console."""

    def __init__(self, log_file):
        super().__init__()
        self.log_file = log_file
        self.formatter = logging.Formatter("%(asctime)s - %(levelname)s - %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().split("\n", 1)[0].rstrip().endswith(RUNNER_BOOKKEEPING):
            return True
        self.log_file.write(self.formatter.format(record) + "\n")
        return False


@contextlib.contextmanager
def _route_runner_records(log_file):
    """The local runner's own records, by record: bookkeeping to run.log only (`_RunLogOnly`), and a reused
    (cached) or retried task said on the console too. Those two are logged at INFO outside the runner's own
    log setup, where they would be dropped; a resumed run should say which phases it reused, and any run which
    task it retried."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)  # the console filter: console and run.log
    handler.addFilter(lambda record: any(event in record.getMessage() for event in TASK_EVENTS))
    handler.setFormatter(logging.Formatter("%(message)s"))
    bookkeeping = _RunLogOnly(log_file)
    level = root.level
    root.addHandler(handler)
    root.addFilter(bookkeeping)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.removeFilter(bookkeeping)
        root.setLevel(level)


class RunFolderInUseError(StreetVisionError):
    """Another run or resume holds the run folder."""


@contextlib.contextmanager
def hold_run_folder(run_dir: Path):
    """Hold the run folder's lock (an exclusive, non-blocking flock on run.lock) for a run or a resume. The
    kernel drops it when the holder exits, however it exits, so a killed run never leaves the folder locked."""
    with open(run_dir / RUN_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            raise RunFolderInUseError(
                f"run folder {run_dir} is in use by another run or resume ({holder})",
                f"{run_dir / RUN_LOCK}",
                "wait for that run to finish (or stop it), then resume; two runs in one folder would overwrite "
                "each other's outputs and records",
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reverify_cached_outputs(run_dir: Path) -> list[str]:
    """Verify every streetvision artifact the local cache of `run_dir` would reuse; for a cache entry with an
    output that fails, move that output to damaged/ and remove the entry, so its task reruns. Returns one line
    per output moved aside. Artifacts of other kinds (KFP metrics, HTML) carry no record and are not checked."""
    pipeline_root = (run_dir / PIPELINE_ROOT).resolve()
    cache_root = pipeline_root / CACHE_DIR
    if not cache_root.is_dir():
        return []
    cache = LocalCache(str(cache_root))  # kfp's own reader: an entry whose outputs are missing is a miss
    said = []
    for entry in sorted(cache_root.glob("*.json")):
        outputs = cache.get(entry.stem) or {}
        artifacts = [a for v in outputs.values() for a in (v if isinstance(v, list) else [v]) if hasattr(a, "uri")]
        damaged = []
        for artifact in artifacts:
            # Records of this version and of older ones (which readers refuse, so their task must rerun too).
            if not str((artifact.metadata or {}).get("schema", "")).startswith(SCHEMA.rsplit("/", 1)[0] + "/"):
                continue
            try:
                verify_artifact(artifact.uri, f"resume of {run_dir}: cached output {artifact.uri}")
            except ContractError as exc:
                damaged.append((Path(artifact.uri), exc.what))
        if not damaged:
            continue
        entry.unlink()
        for path, what in damaged:
            relative = path.relative_to(pipeline_root) if path.is_relative_to(pipeline_root) else Path(path.name)
            aside = run_dir / DAMAGED / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") / relative
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, aside)
            said.append(f"{relative} failed verification ({what}); moved to {aside}, and the task that wrote it reruns")
    return said


def new_run_dir(output_dir: str | Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / f"{stamp}-{secrets.token_hex(3)}"
    run_dir.mkdir(parents=True)
    return run_dir


SIGNING_DIR = "signing"  # under the pipeline root, which every runner shares with its tasks


def prepare_run(
    cfg: Config | None, output_dir: str | Path, resume: str | Path | None, group_readable_key: bool = False
) -> tuple[Path, Config]:
    """A fresh run folder with the config saved in it, or an existing one (resume) with its saved config.
    A fresh run whose config names no signing key gets a key pair of its own, in <run>/kfp/signing."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / RUN_CONFIG).is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a run folder (no {RUN_CONFIG}); pass a folder that `streetvision run` created"
            )
        cfg = config_from_yaml_file(run_dir / RUN_CONFIG)
        if (run_dir / PIPELINE_ROOT).is_dir():
            remove_stale_staging(run_dir / PIPELINE_ROOT)
        return run_dir, cfg
    if cfg is None:
        raise ValueError("a new run needs a config (cfg=None only with resume)")
    run_dir = new_run_dir(output_dir)
    # The key lives under the pipeline root, the one folder docker-run tasks see; `group_readable_key` lets them
    # read it (they run as another user, with this user's group added: make_runner).
    cfg = with_own_signing_key(cfg, run_dir / PIPELINE_ROOT / SIGNING_DIR, group_readable_key)
    storage.write_text(run_dir / RUN_CONFIG, config_to_yaml(cfg))
    return run_dir, cfg


# How tasks run locally: in this Python environment, or each in its phase's image (cluster.gpu_image /
# cluster.cpu_image, which must exist in the local Docker engine) with no network, as on a cluster node.
RUNNERS = ("subprocess", "docker")


def make_runner(runner: str, pipeline_root: Path):
    if runner == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if runner == "docker":
        # The images run as UID 1000, which must be able to write task outputs under the pipeline root that
        # the runner mounts into each container at the same path.
        pipeline_root.mkdir(parents=True, exist_ok=True)
        pipeline_root.chmod(0o777)
        # The same goes for the run's signing key, readable by this user's group (prepare_run).
        return local.DockerRunner(network_mode="none", group_add=[str(os.getgid())])
    raise ValueError(f"unknown runner {runner!r}; choose one of {RUNNERS}")


# The image a subprocess-run task names. Such tasks run in this environment, never in an image, and the image
# is part of the local cache key: naming the checkout's image (whose tag hashes the library source) would make a
# code fix invalidate every finished phase, so `--resume` could not reuse them.
SUBPROCESS_IMAGE = "streetvision-local-environment:subprocess"


def runner_config(cfg: Config, runner: str) -> Config:
    if runner != "subprocess":
        return cfg
    cluster = cfg.cluster.model_copy(update={"gpu_image": SUBPROCESS_IMAGE, "cpu_image": SUBPROCESS_IMAGE})
    return cfg.model_copy(update={"cluster": cluster})


# Demo scenes rendered for earlier runs, one folder per demo config: the user's cache, not the output folder,
# which holds only run folders.
DEMO_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streetvision-demo"
# Where a run's copy of the rendered scenes goes: inside the pipeline root, the one folder that the docker runner
# mounts into every task's container.
DEMO_DATA = "demo-data"


def with_rendered_demo(cfg: Config, run_dir: Path, pipeline_root: Path) -> Config:
    """The demo source as a folder the tasks read (the images do not carry the renderer): see streetvision_demo."""
    if not cfg.data.uses_demo():
        return cfg
    try:
        from streetvision_demo import with_demo_data
    except ImportError:
        raise ConfigError(
            [
                "data.source=demo: the demo scenes are rendered by the streetvision-demo package, which is not "
                "installed here; install it with `pip install -e demo` (make demo does), or choose another source"
            ],
            "data.source",
        ) from None
    return with_demo_data(cfg, DEMO_CACHE, pipeline_root / DEMO_DATA)


def signing_summary(cfg: Config) -> dict:
    """How the run signs its bundle, and the key to verify it with (and its fingerprint, to pin it)."""
    summary: dict = {"method": cfg.signing.method}
    if cfg.signing.public_key and Path(cfg.signing.public_key).is_file():
        summary.update(public_key=cfg.signing.public_key, fingerprint=public_key_fingerprint(cfg.signing.public_key))
    return summary


def run_local(cfg: Config, run_dir: Path, runner: str = "subprocess", retries: int = 0) -> LocalRun:
    """Run every selected phase locally; a rerun on the same folder resumes from the first unfinished phase,
    after verifying the outputs it would reuse. A failed task is tried `retries` more times, at once. The run
    folder is locked for the whole run (RunFolderInUseError when another run holds it)."""
    with hold_run_folder(run_dir):
        return _run_locked(cfg, run_dir, runner, retries)


def write_run_record(run_dir: Path, record: dict) -> None:
    """run.json, atomically and padded to RECORD_RESERVE_BYTES. On a full disk, overwrite the existing record
    in place (its blocks are allocated already); if even that fails, print the record, so it is never lost."""
    path, text = run_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n"
    data = text.encode() + b" " * max(0, RECORD_RESERVE_BYTES - len(text.encode()))
    try:
        storage.write_bytes(path, data)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        failure = exc
    try:
        with open(path, "r+b") as handle:
            room = os.fstat(handle.fileno()).st_size
            if len(text.encode()) > room:
                raise OSError(errno.ENOSPC, f"the record needs {len(text.encode())} bytes, {room} are reserved")
            handle.write(data[:room].ljust(room))  # no truncate: the padding keeps the reservation
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        print(f"error: {path} could not be written ({failure}; {exc}); the record is:\n{text}", file=sys.stderr)


def _run_locked(cfg: Config, run_dir: Path, runner: str, retries: int) -> LocalRun:
    cfg = runner_config(cfg, runner)
    phases, _ = resolve_phases(cfg.pipeline.phases)
    retry = RetryPolicy(retries)  # no backoff: nothing local is worth waiting out
    started = time.time()
    error = None
    # Written first, so that the record's space is held before the run can fill the disk.
    write_run_record(
        run_dir, {"status": "running", "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    )
    try:
        with open(run_dir / RUN_LOG, "a") as log_file, warnings.catch_warnings():
            # Resource requests and node selectors are for the cluster; the local runner says so once per task.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            # The local runner uses this environment, not the image; it warns that the image is not "python".
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            with contextlib.redirect_stdout(ConsoleFilter(sys.stdout, log_file)), _route_runner_records(log_file):
                pipeline_root = (run_dir / PIPELINE_ROOT).resolve()
                cfg = with_rendered_demo(cfg, run_dir, pipeline_root)
                compile_pipeline(cfg, run_dir / "pipeline.yaml", retry)
                local.init(
                    runner=make_runner(runner, pipeline_root), pipeline_root=str(pipeline_root), enable_caching=True
                )
                for line in reverify_cached_outputs(run_dir):
                    print(f"resume: {line}", flush=True)
                try:
                    build_pipeline(cfg, retry)(config=config_to_json(cfg))
                except RuntimeError as exc:  # the local runner reports a failed task this way
                    error = str(exc)
    except (OSError, ConfigError) as exc:  # a full disk, or no demo renderer: the run's failure, not a crash
        error = f"{type(exc).__name__}: {exc}"
        print(f"error: {error}", file=sys.stderr)
    seconds = time.time() - started
    summary = summarize_run(run_dir, phases)
    succeeded = error is None and all(summary.status(p) == "done" for p in phases)
    record = {
        "status": "succeeded" if succeeded else "failed",
        "error": error,
        "phases": {p: summary.status(p) for p in phases},
        "seconds": round(seconds, 1),
        "retries": retries,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(summary.bundle) if summary.bundle else None,
        "report": str(summary.report) if summary.report else None,
        "evaluation": summary.evaluation,
        "signing": signing_summary(cfg),
    }
    write_run_record(run_dir, record)
    return LocalRun(run_dir, succeeded, error, seconds, summary)
