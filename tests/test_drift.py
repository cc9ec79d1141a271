"""Drift reference and tests: same distribution passes, a shifted one is flagged; distances checked."""

import numpy as np
import pytest
import timm
from conftest import PUBLIC_KEY, build_bundle

from streetvision.contracts.errors import DataError
from streetvision.drift import (
    build_reference,
    compare,
    embeddings,
    frechet_distance,
    load_reference,
    save_reference,
)


def _features(rng, n, shift=0.0, dim=8):
    return rng.normal(shift, 1.0, (n, dim))


def test_same_distribution_is_not_flagged_and_a_shift_is(tmp_path):
    rng = np.random.default_rng(0)
    reference = build_reference(rng.uniform(0.6, 1.0, 300), _features(rng, 300))
    save_reference(tmp_path, reference)
    loaded = load_reference(tmp_path)
    assert set(loaded) == set(reference) and np.allclose(loaded["embedding_cov"], reference["embedding_cov"])

    same = compare(loaded, rng.uniform(0.6, 1.0, 120), _features(rng, 120), permutations=200)
    assert not same.drifted and same.ks_pvalue > 0.025 and same.mmd_pvalue > 0.025
    assert "no drift" in same.verdict()

    # Night-time images: embeddings move, and the model grows unsure.
    shifted = compare(loaded, rng.uniform(0.5, 0.8, 120), _features(rng, 120, shift=0.8), permutations=200)
    assert shifted.drifted and shifted.mmd_pvalue < 0.01 and shifted.ks_pvalue < 0.01
    assert shifted.frechet > same.frechet
    assert "DRIFT" in shifted.verdict()


def test_frechet_distance_closed_form():
    mean_a, mean_b = np.zeros(3), np.array([1.0, 2.0, 0.0])
    cov_a, cov_b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    # Diagonal covariances: sum (sqrt(a) - sqrt(b))^2 per axis, plus the squared mean distance.
    assert frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(5.0 + 1.0 + 1.0 + 0.0)
    assert frechet_distance(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0.0, abs=1e-9)


def test_embeddings_are_the_pooled_features_the_head_reads():
    model = timm.create_model(
        "vit_small_patch14_dinov2",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=48,
        num_heads=2,
        num_classes=2,
    )
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    features = embeddings(model, images, [0.5] * 3, [0.25] * 3, batch_size=2)
    assert features.shape == (5, 48)
    import torch

    logits = model.get_classifier()(torch.from_numpy(features)).detach().numpy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert np.allclose(logits, model((x - 0.5) / 0.25).detach().numpy(), atol=1e-5)


def test_missing_reference_and_tiny_samples_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="drift_reference.npz is missing"):
        load_reference(tmp_path)
    rng = np.random.default_rng(2)
    reference = build_reference(rng.uniform(0.6, 1.0, 50), _features(rng, 50))
    with pytest.raises(DataError, match="at least a few dozen"):
        compare(reference, np.array([0.9]), _features(rng, 1))


def test_drift_command_on_a_real_bundle(trained, tmp_path, capsys):
    """The bundle carries its VAL_CALIB reference; its own calibration images show no drift, inverted ones do."""
    import json

    from PIL import Image

    from streetvision.cli import main
    from streetvision.contracts import Role, Split
    from streetvision.data.shards import load_split

    cfg, dirs, out = trained
    build_bundle(cfg, dirs, out, tmp_path)
    calib = load_split(dirs[Split.VAL_CALIB], split=Split.VAL_CALIB, role=Role.PREDICTION, phase="t", input_name="x")
    for name, transform in (("same", lambda a: a), ("inverted", lambda a: 255 - a)):
        (tmp_path / name).mkdir()
        for i, image in enumerate(np.asarray(calib.images)):
            Image.fromarray(transform(image)).save(tmp_path / name / f"{i}.png")
    capsys.readouterr()  # drop the phases' log lines
    assert (
        main(
            [
                "drift",
                str(tmp_path / "bundle"),
                str(tmp_path / "same"),
                "--json",
                "--permutations",
                "200",
                "--public-key",
                str(PUBLIC_KEY),
            ]
        )
        == 0
    )
    same = json.loads(capsys.readouterr().out)
    assert not same["drifted"] and same["ks_pvalue"] > 0.5 and same["n_new"] == same["n_reference"]
    assert (
        main(
            [
                "drift",
                str(tmp_path / "bundle"),
                str(tmp_path / "inverted"),
                "--permutations",
                "200",
                "--public-key",
                str(PUBLIC_KEY),
            ]
        )
        == 3
    )
    assert "DRIFT" in capsys.readouterr().out


def test_drift_names_a_bad_file_and_carries_on(trained, tmp_path, capsys):
    import json

    from PIL import Image

    from streetvision.cli import main
    from streetvision.contracts import Role, Split
    from streetvision.data.shards import load_split

    cfg, dirs, out = trained
    bundle = build_bundle(cfg, dirs, out, tmp_path)
    calib = load_split(dirs[Split.VAL_CALIB], split=Split.VAL_CALIB, role=Role.PREDICTION, phase="t", input_name="x")
    folder = tmp_path / "new"
    folder.mkdir()
    images = np.asarray(calib.images)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = ["drift", str(bundle), str(folder), "--permutations", "50", "--public-key", str(PUBLIC_KEY)]
    capsys.readouterr()
    assert main([*args, "--json"]) == 1  # no drift verdict, but a file was left out
    result = json.loads(capsys.readouterr().out)
    assert result["n_new"] == len(images) and [e["path"] for e in result["errors"]] == [str(folder / "broken.jpg")]
    assert result["errors"][0]["error"].startswith("not_an_image") and result["errors"][0]["fix"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "left out" in captured.out and "broken.jpg" in captured.out and "could not be used" in captured.err
    # Nothing to compare at all: an error that says so.
    (tmp_path / "empty").mkdir()
    assert main(["drift", str(bundle), str(tmp_path / "empty"), "--public-key", str(PUBLIC_KEY)]) == 4
    assert "no image files in" in capsys.readouterr().err
