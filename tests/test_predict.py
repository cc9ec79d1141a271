"""Deployment entry point: `streetvision predict BUNDLE IMAGE_OR_FOLDER...` and its Python API."""

import json

import numpy as np
import pytest
from conftest import PUBLIC_KEY, TRUST, build_bundle, png_rgb16
from PIL import Image

from streetvision.cli import main
from streetvision.config import load_config
from streetvision.contracts import Role, Split
from streetvision.data.shards import load_split
from streetvision.inference import Bundle, predict


@pytest.fixture(scope="module")
def bundle_and_images(trained, tmp_path_factory):
    cfg, dirs, out = trained
    root = tmp_path_factory.mktemp("predict")
    build_bundle(cfg, dirs, out, root)
    calib = load_split(dirs[Split.VAL_CALIB], split=Split.VAL_CALIB, role=Role.PREDICTION, phase="test", input_name="x")
    pixels = np.asarray(calib.images[:6])
    folder = root / "images" / "nested"
    folder.mkdir(parents=True)
    for i, img in enumerate(pixels[:4]):
        Image.fromarray(img).save(folder / f"frame{i}.png")  # lossless: decoded pixels equal the arrays
    Image.fromarray(pixels[4]).save(root / "single.png")
    (root / "images" / "notes.txt").write_text("not an image; folders yield only image files")
    return root / "bundle", root / "images", root / "single.png", pixels


def test_cli_prints_one_json_line_per_image(bundle_and_images, capsys):
    bundle, folder, single, pixels = bundle_and_images
    assert main(["predict", str(bundle), "--public-key", str(PUBLIC_KEY), str(single), str(folder)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and lines[0]["path"] == str(single)
    assert [line["path"].rsplit("/", 1)[1] for line in lines[1:]] == [f"frame{i}.png" for i in range(4)]
    expected = Bundle.load(bundle, TRUST).predict(np.stack([pixels[4], *pixels[:4]]))
    for line, p, accept in zip(lines, expected.prob_roadwork, expected.accept):
        assert 0.0 <= line["prob_roadwork"] <= 1.0
        assert line["prob_roadwork"] == pytest.approx(p, abs=1e-6)
        assert line["decision"] == ("accept" if accept else "defer")


def test_python_api_matches_cli_and_reports_unreadable_files(bundle_and_images, tmp_path, capsys):
    bundle, _, single, _ = bundle_and_images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    records = predict(bundle, [single, broken], trust=TRUST)
    assert "decision" in records[0] and "error" in records[1] and "fix" in records[1]
    assert main(["predict", str(bundle), "--public-key", str(PUBLIC_KEY), str(single), str(broken)]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 image(s) could not be read" in captured.err
    assert json.loads(captured.out.splitlines()[0]) == records[0]


def test_predict_refuses_a_tampered_bundle(bundle_and_images, tmp_path, capsys):
    import shutil

    bundle, _, single, _ = bundle_and_images
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "calibrator.json").write_text("{}")
    assert main(["predict", str(copy), "--public-key", str(PUBLIC_KEY), str(single)]) == 6
    assert "calibrator.json does not match its sha256" in capsys.readouterr().err


def _predict(bundle, *paths) -> int:
    return main(["predict", str(bundle), "--public-key", str(PUBLIC_KEY), *map(str, paths)])


def test_a_missing_file_costs_only_its_own_record(bundle_and_images, tmp_path, capsys):
    bundle, _, single, _ = bundle_and_images
    capsys.readouterr()
    assert _predict(bundle, single, tmp_path / "missing.jpg") == 1  # some failed: not 0, not the error code 2
    good, missing = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert good["path"] == str(single) and good["decision"] in ("accept", "defer")
    assert missing["path"].endswith("missing.jpg") and "no such file" in missing["error"] and missing["fix"]


def test_predict_refuses_what_ingest_quarantines(bundle_and_images, tmp_path, capsys):
    """The bundle validates as ingest did (data.min_image_size, 16-bit): such files are not scored."""
    bundle, _, single, _ = bundle_and_images
    loaded = Bundle.load(bundle, TRUST)
    validation = loaded.preprocessing["validation"]
    min_size = validation["min_image_size"]
    assert min_size > 4 and validation["max_record_bytes"] == load_config().data.max_record_bytes
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "tiny.png")
    (tmp_path / "deep.png").write_bytes(png_rgb16())
    records = loaded.predict_paths([single, tmp_path / "tiny.png", tmp_path / "deep.png"])
    assert "decision" in records[0]
    assert records[1]["error"].startswith("too_small") and f"min_image_size={min_size}" in records[1]["error"]
    assert records[2]["error"].startswith("unsupported_mode") and "16 bits" in records[2]["error"]
    assert all("prob_roadwork" not in r for r in records[1:])
    capsys.readouterr()
    assert _predict(bundle, tmp_path / "tiny.png") == 1


def test_nothing_to_score_is_an_error(bundle_and_images, tmp_path, capsys):
    bundle = bundle_and_images[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "notes.txt").write_text("no images here")
    capsys.readouterr()
    for folder in ("empty", "only_text"):
        assert _predict(bundle, tmp_path / folder) == 4
        captured = capsys.readouterr()
        assert "no image files in" in captured.err and "fix:" in captured.err and captured.out == ""


def test_a_fifo_is_refused_without_blocking(bundle_and_images, tmp_path):
    import os

    bundle, _, single, _ = bundle_and_images
    os.mkfifo(tmp_path / "pipe.jpg")
    records = Bundle.load(bundle, TRUST).predict_paths([tmp_path / "pipe.jpg", single])
    assert "not a regular file" in records[0]["error"] and "decision" in records[1]
