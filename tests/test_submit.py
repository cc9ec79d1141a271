"""`streetvision submit` through the real `kfp.Client`, against a local HTTP server that records every request.

No Kubeflow cluster can run here, so the request the client puts on the wire is the only offline evidence
that a submission is right: these tests check its method, path, headers and JSON body (experiment, run name,
pipeline spec with its Kubernetes platform spec, parameters, pipeline root, service account, auth header).
The server answers like the KFP v2beta1 API does for these calls, and nothing more.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from streetvision_pipelines.factory import DEFAULT_PIPELINE_FILE
from streetvision_pipelines.inspect_spec import compile_to_documents, load_documents

from streetvision.cli import main
from streetvision.config import config_to_json, load_config

TOKEN = "test-token-0123456789"
# kfp.Client warns on every construction that it needs a KFP 2.x server; that is what is emulated here.
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


class RecordingKfpServer:
    """A loopback server speaking just enough of the KFP v2beta1 REST API: experiments and runs."""

    def __init__(self, require_token: str | None = None):
        self.requests: list[dict] = []
        self.require_token = require_token
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _record(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                request = {
                    "method": self.command,
                    "path": url.path,
                    "query": parse_qs(url.query),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": json.loads(body) if body else None,
                }
                server.requests.append(request)
                return request

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self, request) -> bool:
                if server.require_token and request["headers"].get("authorization") != f"Bearer {server.require_token}":
                    self._reply(401, {"error": "unauthenticated", "code": 16, "message": "missing or bad token"})
                    return False
                return True

            def do_GET(self):
                request = self._record()
                if not self._authorized(request):
                    return
                if request["path"] == "/apis/v2beta1/experiments":
                    self._reply(200, {})  # no experiment of that name yet
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self):
                request = self._record()
                if not self._authorized(request):
                    return
                body = request["body"] or {}
                if request["path"] == "/apis/v2beta1/experiments":
                    self._reply(
                        200,
                        {
                            "experiment_id": "exp-1",
                            "display_name": body.get("display_name"),
                            "namespace": body.get("namespace"),
                        },
                    )
                elif request["path"] == "/apis/v2beta1/runs":
                    self._reply(
                        200,
                        {
                            "run_id": "run-42",
                            "display_name": body.get("display_name"),
                            "experiment_id": body.get("experiment_id"),
                            "state": "PENDING",
                        },
                    )
                else:
                    self._reply(404, {"error": "not found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def find(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


@pytest.fixture(autouse=True)
def _no_user_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads ~/.config/kfp and $KF_PIPELINES_* variables: keep the developer's own out of the test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in (
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "KFP_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


def test_submit_compiles_and_sends_the_run_the_cluster_needs(monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    overrides = ["cluster.accelerator=a100", "training.epochs=3", "cluster.pipeline_root=gs://sv-bucket/root"]
    with RecordingKfpServer(require_token=TOKEN) as server:
        code = main(
            [
                "submit",
                *overrides,
                "--host",
                server.url,
                "--namespace",
                "team-a",
                "--experiment",
                "nightly",
                "--run-name",
                "a100 try 1",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "run-42" in out and f"{server.url}/#/runs/details/run-42" in out

    # Every request carried the bearer token from $KFP_TOKEN.
    assert server.requests and all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    # The experiment is looked up in the namespace, then created there.
    (lookup,) = server.find("GET", "/apis/v2beta1/experiments")
    assert lookup["query"]["namespace"] == ["team-a"] and "nightly" in lookup["query"]["filter"][0]
    (created,) = server.find("POST", "/apis/v2beta1/experiments")
    assert created["body"] == {"display_name": "nightly", "namespace": "team-a"}

    (run,) = server.find("POST", "/apis/v2beta1/runs")
    body = run["body"]
    cfg = load_config(overrides)
    assert body["display_name"] == "a100 try 1" and body["experiment_id"] == "exp-1"
    assert body["service_account"] == cfg.cluster.service_account == "streetvision-pipeline"
    assert body["runtime_config"]["pipeline_root"] == "gs://sv-bucket/root"
    assert json.loads(body["runtime_config"]["parameters"]["config"]) == json.loads(config_to_json(cfg))
    # The pipeline spec is what `streetvision compile` produces for this config, platform spec included.
    expected = compile_to_documents(cfg)
    sent = body["pipeline_spec"]
    assert sent["pipeline_spec"]["root"] == expected[0]["root"]
    assert sent["pipeline_spec"]["deploymentSpec"] == expected[0]["deploymentSpec"]
    phase1 = sent["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-phase1-train"]
    assert phase1["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}
    assert phase1["pvcMount"][0]["mountPath"] == cfg.cluster.checkpoint_root
    # The token never travels inside the run.
    assert TOKEN not in json.dumps(body)


def test_submit_a_committed_yaml_in_cluster_with_a_parameter(tmp_path, monkeypatch, capsys):
    token_file = tmp_path / "token"
    token_file.write_text("projected-sa-token\n")
    monkeypatch.setattr("streetvision_pipelines.submit.IN_CLUSTER_TOKEN_PATH", str(token_file))
    cfg = load_config(["training.epochs=2"])
    with RecordingKfpServer(require_token="projected-sa-token") as server:
        code = main(
            [
                "submit",
                "--pipeline-file",
                str(DEFAULT_PIPELINE_FILE),
                "--in-cluster",
                "--host",
                server.url,
                "--param",
                f"config={config_to_json(cfg)}",
                "--no-cache",
                "--service-account",
                "runner",
            ]
        )
    assert code == 0, capsys.readouterr()
    (run,) = server.find("POST", "/apis/v2beta1/runs")
    body = run["body"]
    committed = load_documents(DEFAULT_PIPELINE_FILE.read_text())
    sent_tasks = body["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    committed_tasks = committed[0]["root"]["dag"]["tasks"]
    assert sent_tasks.keys() == committed_tasks.keys()
    for name, task in committed_tasks.items():  # the same tasks; only caching is changed by --no-cache
        assert {k: v for k, v in sent_tasks[name].items() if k != "cachingOptions"} == {
            k: v for k, v in task.items() if k != "cachingOptions"
        }
    assert json.loads(body["runtime_config"]["parameters"]["config"])["training"]["epochs"] == 2
    assert body["service_account"] == "runner"
    # --no-cache reaches the server as caching disabled on every task of the sent spec.
    assert all(task["cachingOptions"].get("enableCache") is True for task in committed_tasks.values())
    assert all(task["cachingOptions"].get("enableCache") is not True for task in sent_tasks.values())
    assert run["headers"]["authorization"] == "Bearer projected-sa-token"


def test_dry_run_prints_the_request_and_sends_nothing(monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with RecordingKfpServer() as server:
        code = main(["submit", "--phases", "ingest", "--host", server.url, "--run-name", "r", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and server.requests == []
    shown = json.loads(out[: out.rindex("}") + 1])
    assert shown["host"] == server.url and shown["run_name"] == "r" and shown["namespace"] == "streetvision"
    assert shown["parameters"]["config"]["pipeline"]["phases"] == ["ingest"]
    assert shown["service_account"] == "streetvision-pipeline"
    assert TOKEN not in out and "not shown" in shown["auth"]
    assert "nothing was sent" in out


def test_rejected_token_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "wrong")
    with RecordingKfpServer(require_token=TOKEN) as server:
        code = main(["submit", "--phases", "ingest", "--host", server.url])
    err = capsys.readouterr().err
    assert code == 8 and "the server refused the request" in err and "401" in err  # a cluster error
    assert "Traceback" not in err and "\n  where: http://" in err and "\n  fix:" in err
    assert server.find("POST", "/apis/v2beta1/runs") == []


def test_unreachable_server_is_a_cluster_error_of_its_own(monkeypatch, capsys):
    import socket

    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with socket.socket() as probe:  # a port that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["submit", "--phases", "ingest", "--host", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 8 and "the server could not be reached" in err and "check --host" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pipeline-file", str(DEFAULT_PIPELINE_FILE), "--param", "epochs=3"], "no such parameter"),
        (["--pipeline-file", str(DEFAULT_PIPELINE_FILE), "--param", 'config={"training": {"epochz": 1}}'], "epochz"),
        (["--pipeline-file", str(DEFAULT_PIPELINE_FILE), "training.epochs=3"], "drop the overrides"),
        ([], "no Kubeflow Pipelines host"),
    ],
)
def test_bad_submissions_fail_before_sending(argv, message, capsys):
    assert (
        main(
            ["submit", "--phases", "ingest", *argv] if not argv or "--pipeline-file" not in argv else ["submit", *argv]
        )
        == 2
    )
    assert message in capsys.readouterr().err


def test_submit_and_lint_are_on_the_command_line(capsys):
    for argv in (["--help"], ["submit", "--help"], ["lint", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "submit" in out and "lint" in out
    for flag in (
        "--dry-run",
        "--host",
        "--namespace",
        "--experiment",
        "--run-name",
        "--param",
        "--in-cluster",
        "--token-env",
        "--pipeline-file",
        "KFP_TOKEN",
    ):
        assert flag in out


# --- a runtime config against the compile-time settings of the YAML it is submitted with

# Pinned images keep these tests apart from the tags derived from the checkout (which change with every edit).
PINNED = ["cluster.gpu_image=registry.test/stage1:1.0.0", "cluster.cpu_image=registry.test/stage1-cpu:1.0.0"]


@pytest.fixture(scope="module")
def compiled_default(tmp_path_factory):
    """A YAML compiled from the default config, and what its executors and platform spec say, read plainly."""
    path = tmp_path_factory.mktemp("compiled") / "stage1.yaml"
    assert main(["compile", *PINNED, "-o", str(path)]) == 0
    docs = load_documents(path.read_text())
    images = {name: ex["container"]["image"] for name, ex in docs[0]["deploymentSpec"]["executors"].items()}
    mount = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-phase1-train"]["pvcMount"][0]
    return path, {
        "gpu": images["exec-phase1-train"],
        "cpu": images["exec-ingest"],
        "pvc": mount["constant"],
        "root": mount["mountPath"],
    }


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["pipeline.phases=[phase1, phase3, phase6, evaluate]"],
            [
                "pipeline.phases: the YAML has [ingest, phase1, phase2, phase6, evaluate], "
                "the config says [ingest, phase1, phase3, phase6, evaluate]"
            ],
        ),
        (
            ["cluster.checkpoint_root=/mnt/elsewhere"],
            [
                "cluster.checkpoint_root: the YAML has {root} (the PVC's mount path in phase1), "
                "the config says /mnt/elsewhere"
            ],
        ),
        (
            ["cluster.checkpoint_pvc=other-claim"],
            ["cluster.checkpoint_pvc: the YAML has {pvc} (phase1), the config says other-claim"],
        ),
        (
            ["cluster.checkpoint_pvc=", "cluster.checkpoint_root=gs://sv/ckpt"],
            [
                'cluster.checkpoint_pvc: the YAML has {pvc} (phase1), the config says "" (none)',
                "cluster.checkpoint_root: the YAML has {root} (the PVC's mount path in phase1), the config says gs://sv/ckpt",
            ],
        ),
        (
            ["cluster.gpu_image=ghcr.io/other/stage1:9.9.9"],
            ["cluster.gpu_image: the YAML has {gpu} (phase1, evaluate), the config says ghcr.io/other/stage1:9.9.9"],
        ),
        (
            ["cluster.cpu_image=ghcr.io/other/stage1-cpu:9.9.9"],
            [
                "cluster.cpu_image: the YAML has {cpu} (ingest, phase2, phase6), "
                "the config says ghcr.io/other/stage1-cpu:9.9.9"
            ],
        ),
        # phase 2 on a GPU node takes the GPU image: images are compared per task, as the factory resolves them
        (["cluster.phase2.gpus=1"], ["cluster.gpu_image: the YAML has {cpu} (phase2), the config says {gpu}"]),
    ],
)
def test_submit_refuses_a_runtime_config_that_contradicts_the_yaml(
    compiled_default, overrides, expected, capsys, monkeypatch
):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    path, compiled = compiled_default
    runtime = config_to_json(load_config([*PINNED, "training.epochs=2", *overrides]))
    for extra in ([], ["--dry-run"]):
        with RecordingKfpServer() as server:
            code = main(
                ["submit", "--pipeline-file", str(path), "--param", f"config={runtime}", "--host", server.url, *extra]
            )
        err = capsys.readouterr().err
        assert code == 2 and server.requests == [], err  # refused before any request
        assert f"({len(expected)} setting(s))" in err
        for line in expected:
            assert f"  - {line.format(**compiled)}" in err
        assert f"streetvision compile --config FILE -o {path}" in err


def test_submit_accepts_a_runtime_config_that_changes_only_run_time_settings(compiled_default, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    path, _ = compiled_default
    runtime = load_config(
        [*PINNED, "training.epochs=2", "data.source=manifest", "data.manifest=gs://sv/m.csv", "pipeline.phases=[all]"]
    )  # the same phases, once resolved
    with RecordingKfpServer(require_token=TOKEN) as server:
        code = main(
            [
                "submit",
                "--pipeline-file",
                str(path),
                "--param",
                f"config={config_to_json(runtime)}",
                "--host",
                server.url,
            ]
        )
    assert code == 0, capsys.readouterr().err
    (run,) = server.find("POST", "/apis/v2beta1/runs")
    assert json.loads(run["body"]["runtime_config"]["parameters"]["config"])["data"]["manifest"] == "gs://sv/m.csv"


def test_a_yaml_without_the_pvc_takes_any_bucket_checkpoint_root_but_no_pvc(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    bucket = [*PINNED, "cluster.checkpoint_pvc=", "cluster.checkpoint_root=gs://sv/ckpt"]
    path = tmp_path / "bucket.yaml"
    assert main(["compile", *bucket, "-o", str(path)]) == 0
    # The root is read only at run time when no volume is mounted: another bucket prefix is the run's choice.
    elsewhere = config_to_json(
        load_config([*PINNED, "cluster.checkpoint_pvc=", "cluster.checkpoint_root=gs://sv/other"])
    )
    assert main(["submit", "--pipeline-file", str(path), "--param", f"config={elsewhere}", "--dry-run"]) == 0
    # A PVC the YAML does not mount: the checkpoints would land on the container's own disk.
    with RecordingKfpServer() as server:
        code = main(
            [
                "submit",
                "--pipeline-file",
                str(path),
                "--param",
                f"config={config_to_json(load_config(PINNED))}",
                "--host",
                server.url,
            ]
        )
    err = capsys.readouterr().err
    assert code == 2 and server.requests == [] and "(1 setting(s))" in err
    pvc = load_config().cluster.checkpoint_pvc
    assert f'cluster.checkpoint_pvc: the YAML has "" (none) (phase1), the config says {pvc}' in err


def test_images_are_compared_with_what_the_config_resolves_to(compiled_default, capsys):
    from streetvision_pipelines.factory import make_component

    path, compiled = compiled_default
    default = load_config()  # the default images, as the factory names them
    resolved = {
        kind: make_component(phase, default).component_spec.implementation.container.image
        for kind, phase in (("gpu", "phase1"), ("cpu", "ingest"))
    }
    argv = ["submit", "--pipeline-file", str(path), "--param", f"config={config_to_json(default)}", "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"cluster.gpu_image: the YAML has {compiled['gpu']} (phase1, evaluate), the config says {resolved['gpu']}"
    ) in err
    assert (
        f"cluster.cpu_image: the YAML has {compiled['cpu']} (ingest, phase2, phase6), the config says {resolved['cpu']}"
    ) in err


def test_a_runtime_config_against_the_pipeline_compiled_from_the_overrides(monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    other = config_to_json(load_config(["pipeline.phases=[ingest]"]))
    with RecordingKfpServer() as server:
        code = main(["submit", "--phases", "phase1", "--param", f"config={other}", "--host", server.url])
    err = capsys.readouterr().err
    assert code == 2 and server.requests == []
    assert "pipeline.phases: the YAML has [ingest, phase1], the config says [ingest]" in err
    assert "leave out --param config" in err


def test_retries_are_compile_time_too(compiled_default, tmp_path, capsys):
    path, _ = compiled_default
    compiled = load_config(PINNED).cluster
    for overrides, line in [
        (
            ["cluster.retries=0"],
            f"cluster.retries: the YAML has {compiled.retries} (ingest, phase1, phase2, phase6, "
            "evaluate), the config says 0",
        ),
        (
            ["cluster.retry_backoff=5s"],
            f"cluster.retry_backoff: the YAML has {compiled.retry_backoff} (ingest, "
            "phase1, phase2, phase6, evaluate), the config says 5s",
        ),
    ]:
        runtime = config_to_json(load_config([*PINNED, *overrides]))
        assert main(["submit", "--pipeline-file", str(path), "--param", f"config={runtime}", "--dry-run"]) == 2
        assert line in capsys.readouterr().err
    # The compiler writes durations in seconds: a YAML compiled with 2m says 120s, and 2m is no contradiction.
    minutes = tmp_path / "minutes.yaml"
    assert main(["compile", *PINNED, "cluster.retry_backoff=2m", "--phases", "ingest", "-o", str(minutes)]) == 0
    assert "backoffDuration: 120s" in minutes.read_text()
    same = config_to_json(load_config([*PINNED, "cluster.retry_backoff=2m", "pipeline.phases=[ingest]"]))
    assert main(["submit", "--pipeline-file", str(minutes), "--param", f"config={same}", "--dry-run"]) == 0
