"""ONNX export: parity with PyTorch under onnxruntime (CPU), the Triton repository layout, refusals."""

import json
import shutil

import numpy as np
import pytest
from conftest import PUBLIC_KEY, TRUST, build_bundle

from streetvision.calibration import prob_roadwork
from streetvision.cli import main
from streetvision.contracts.errors import BundleError
from streetvision.contracts.validators import sha256_file
from streetvision.export import export_onnx, export_triton, onnx_logits
from streetvision.inference import Bundle


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    cfg, dirs, out = trained
    root = tmp_path_factory.mktemp("onnx")
    return build_bundle(cfg, dirs, out, root, policy_phase="phase5")


@pytest.fixture(scope="module")
def triton_repo(bundle, tmp_path_factory):
    """One export (the exporter takes ~10 s even for the tiny model); the tests read it."""
    root = tmp_path_factory.mktemp("repo")
    return export_triton(bundle, root / "repo", name="sv", max_batch_size=32, gpu=True, trust=TRUST)


def test_onnx_logits_match_pytorch_for_any_batch_size(bundle, triton_repo):
    path = triton_repo / "1" / "model.onnx"
    loaded = Bundle.load(bundle, TRUST)
    size = loaded.preprocessing["img_size"]
    images = np.random.default_rng(0).integers(0, 256, (7, size, size, 3), dtype=np.uint8)  # not the export batch
    ours = loaded.predict(images)
    theirs = onnx_logits(path, images)
    assert theirs.shape == (7, 2)
    np.testing.assert_allclose(theirs, ours.logits, atol=1e-4, rtol=1e-4)
    # Downstream of the logits the calibrator is plain JSON: the same probabilities follow.
    np.testing.assert_allclose(prob_roadwork(loaded.calibrator, theirs), ours.prob_roadwork, atol=1e-4)


def test_triton_repository_layout(bundle, triton_repo):
    import onnx

    model_dir = triton_repo
    assert model_dir.name == "sv" and model_dir.parent.name == "repo"
    config = (model_dir / "config.pbtxt").read_text()
    size = json.loads((bundle / "preprocessing.json").read_text())["img_size"]
    for expected in (
        'name: "sv"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 32",
        "TYPE_UINT8",
        f"dims: [ {size}, {size}, 3 ]",
        "TYPE_FP32",
        "dims: [ 2 ]",
        "KIND_GPU",
    ):
        assert expected in config
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    record = json.loads((model_dir / "export.json").read_text())
    assert record["files"]["1/model.onnx"] == sha256_file(model_dir / "1" / "model.onnx")
    assert json.loads((model_dir / "policy.json").read_text()) == Bundle.load(bundle, TRUST).policy
    with pytest.raises(BundleError, match="already exists"):
        export_triton(bundle, model_dir.parent, name="sv", trust=TRUST)


def test_export_refuses_a_policy_fitted_on_other_weights(bundle, tmp_path, capsys):
    """Weights replaced after the policy was fitted (manifest patched too): export must refuse."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    state = {k: v * 1.01 for k, v in load_file(str(copy / "model.safetensors")).items()}
    save_file(state, str(copy / "model.safetensors"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256_file(copy / "model.safetensors")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="policy was fitted on logits of weights"):
        export_onnx(copy, tmp_path / "m.onnx", trust=TRUST)
    assert not (tmp_path / "m.onnx").exists()
    assert main(["export", str(copy), "--public-key", str(PUBLIC_KEY), "-o", str(tmp_path / "repo")]) == 6
    assert "fitted on logits of weights" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("onnx_only", [False, True])
def test_export_to_an_existing_file_is_a_clear_error(bundle, tmp_path, capsys, onnx_only):
    target = tmp_path / "taken"
    target.write_text("an existing file")
    args = ["export", str(bundle), "--public-key", str(PUBLIC_KEY), "-o", str(target)]
    capsys.readouterr()
    assert main(args + (["--onnx-only"] if onnx_only else [])) == 2
    err = capsys.readouterr().err
    assert f"{target} is a file, not a folder" in err and "fix:" in err and "Traceback" not in err
    assert target.read_text() == "an existing file"
