"""Kubernetes manifests: every resource passes `kubernetes-validate --strict` (the installed validator, against
its bundled Kubernetes schemas, offline), every kustomization points only at files that exist and leaves none
out, and names agree with the pipeline config.

`kubectl`/`kustomize` are not available here and no maintained Python implementation of kustomize exists, so
the kustomizations are kept to what needs no rendering engine (resources, namespace, labels — no patches or
generators; checked below) and "rendering" is the union of the listed files with the namespace applied."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from streetvision_pipelines.inspect_spec import compile_to_documents, describe

from streetvision.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ["h100", "a100"]
# Files in manifests/ that are not Kubernetes resources.
KUSTOMIZATION = "kustomization.yaml"
PIPELINE_CONFIG = "streetvision.yaml"
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources"}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding"}


def _resource_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name not in (KUSTOMIZATION, PIPELINE_CONFIG))


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _validate(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, paths)], capture_output=True, text=True
    )


def _kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / KUSTOMIZATION).read_text())


def _render(directory: Path) -> list[dict]:
    """The resources `kubectl apply -k directory` creates (valid for kustomizations without patches)."""
    kust = _kustomization(directory)
    resources = []
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        resources += _render(target) if target.is_dir() else _documents(target)
    for resource in resources:
        if "namespace" in kust and resource["kind"] not in CLUSTER_SCOPED:
            resource.setdefault("metadata", {})["namespace"] = kust["namespace"]
        for group in kust.get("labels", []):
            resource["metadata"].setdefault("labels", {}).update(group["pairs"])
    return resources


def test_every_resource_passes_strict_schema_validation():
    files = _resource_files()
    result = _validate(files)
    assert result.returncode == 0, result.stdout + result.stderr
    # A kind without a schema only warns: require that every document was actually checked.
    expected = sum(len(_documents(p)) for p in files)
    passed = [line for line in result.stdout.splitlines() if line.startswith("INFO") and " passed " in line]
    assert len(passed) == expected and "WARN" not in result.stdout, result.stdout


def test_strict_validation_rejects_a_hand_broken_manifest(tmp_path):
    pvc = _documents(MANIFESTS / "base" / "checkpoints-pvc.yaml")[0]
    pvc["spec"]["accessMode"] = pvc["spec"].pop("accessModes")  # a typo a cluster would reject
    broken = tmp_path / "pvc.yaml"
    broken.write_text(yaml.safe_dump(pvc))
    result = _validate([broken])
    assert result.returncode != 0 and "accessMode" in result.stdout


@pytest.mark.parametrize("directory", ["base"] + [f"overlays/{o}" for o in OVERLAYS])
def test_kustomization_lists_existing_files_and_needs_no_renderer(directory):
    path = MANIFESTS / directory
    kust = _kustomization(path)
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    assert set(kust) <= KUSTOMIZATION_KEYS, f"{directory}: {set(kust) - KUSTOMIZATION_KEYS} needs a kustomize engine"
    listed = set()
    for entry in kust["resources"]:
        target = (path / entry).resolve()
        assert target.exists(), f"{directory}/{KUSTOMIZATION} lists {entry}, which does not exist"
        if target.is_dir():
            assert (target / KUSTOMIZATION).is_file(), f"{entry} is a folder without a {KUSTOMIZATION}"
        listed.add(target)
    local = {p.resolve() for p in path.glob("*.yaml") if p.name not in (KUSTOMIZATION, PIPELINE_CONFIG)}
    assert local <= listed, f"{directory}: resource files not in the kustomization: {sorted(local - listed)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_what_the_pipeline_expects(overlay, tmp_path):
    resources = _render(MANIFESTS / "overlays" / overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(resources, sort_keys=False))
    result = _validate([rendered])  # the applied set, namespace and labels in place, validated as a whole
    assert result.returncode == 0 and result.stdout.count(" passed ") == len(resources), result.stdout
    keys = [(r["kind"], r["metadata"]["name"]) for r in resources]
    assert len(keys) == len(set(keys)), "duplicate resources"
    by_kind = {}
    for resource in resources:
        by_kind.setdefault(resource["kind"], []).append(resource)
    cluster = load_config(config_file=MANIFESTS / "overlays" / overlay / PIPELINE_CONFIG).cluster
    namespace = _kustomization(MANIFESTS / "overlays" / overlay)["namespace"]

    assert [n["metadata"]["name"] for n in by_kind["Namespace"]] == [namespace]
    (account,) = by_kind["ServiceAccount"]
    assert account["metadata"]["name"] == cluster.service_account
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]  # Workload Identity
    (binding,) = by_kind["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": cluster.service_account, "namespace": namespace}]
    assert binding["roleRef"]["name"] == by_kind["Role"][0]["metadata"]["name"]
    (pvc,) = by_kind["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == cluster.checkpoint_pvc
    (priority,) = by_kind["PriorityClass"]
    assert priority["value"] < 0 and priority["preemptionPolicy"] == "Never"
    (quota,) = by_kind["ResourceQuota"]
    assert (
        int(quota["spec"]["hard"]["requests.nvidia.com/gpu"])
        >= cluster.resources_for("phase1").gpus + cluster.resources_for("evaluate").gpus
    )
    for resource in resources:
        if resource["kind"] not in CLUSTER_SCOPED:
            assert resource["metadata"]["namespace"] == namespace, resource["metadata"]["name"]
    # No credentials in the manifests: identity comes from Workload Identity (or a secret made out of band).
    assert "Secret" not in by_kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_pipeline_config_compiles_for_its_accelerator(overlay):
    cfg = load_config(config_file=MANIFESTS / "overlays" / overlay / PIPELINE_CONFIG)
    assert cfg.cluster.accelerator == overlay
    plans = {p.display_name: p for p in describe(compile_to_documents(cfg))}
    label = {"h100": "nvidia-h100-80gb", "a100": "nvidia-a100-80gb"}[overlay]
    assert plans["phase1"].node_selector == {"cloud.google.com/gke-accelerator": label}
    assert plans["phase1"].resources["resourceMemoryLimit"] == cfg.cluster.resources_for("phase1").memory


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_mounts_the_signing_key_into_phase6_only(overlay):
    """The key comes from a Kubernetes secret made out of band, mounted where signing.private_key points, into
    the task that signs; the public key (a ConfigMap) into the tasks that verify. The YAML holds only names."""
    cfg = load_config(config_file=MANIFESTS / "overlays" / overlay / PIPELINE_CONFIG)
    signing = cfg.signing
    assert signing.method == "key" and signing.key_secret and signing.trust_config_map
    documents = compile_to_documents(cfg)
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = documents[0]["root"]["dag"]["tasks"]
    mounts = {}
    for name, task in tasks.items():
        executor = documents[0]["components"][task["componentRef"]["name"]]["executorLabel"]
        spec = executors.get(executor, {})
        mounts[name] = (
            [(v["secretName"], v["mountPath"]) for v in spec.get("secretAsVolume", [])],
            [(v["configMapName"], v["mountPath"]) for v in spec.get("configMapAsVolume", [])],
        )
    key_dir, trust_dir = signing.private_key.rpartition("/")[0], signing.public_key.rpartition("/")[0]
    trust = [(signing.trust_config_map, trust_dir)]
    assert mounts.pop("phase6-export") == ([(signing.key_secret, key_dir)], trust)
    assert mounts.pop("evaluate") == ([], trust)
    assert all(secrets == [] and maps == [] for secrets, maps in mounts.values()), mounts
    text = yaml.safe_dump_all(documents)
    assert "PRIVATE KEY" not in text
