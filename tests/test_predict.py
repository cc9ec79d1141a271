"""Deployment entry point: `streetvision predict BUNDLE IMAGE_OR_FOLDER...` and its Python API."""

import json

import numpy as np
import pytest
from conftest import build_bundle
from PIL import Image

from streetvision.cli import main
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
    assert main(["predict", str(bundle), str(single), str(folder)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and lines[0]["path"] == str(single)
    assert [line["path"].rsplit("/", 1)[1] for line in lines[1:]] == [f"frame{i}.png" for i in range(4)]
    expected = Bundle.load(bundle).predict(np.stack([pixels[4], *pixels[:4]]))
    for line, p, accept in zip(lines, expected.prob_roadwork, expected.accept):
        assert 0.0 <= line["prob_roadwork"] <= 1.0
        assert line["prob_roadwork"] == pytest.approx(p, abs=1e-6)
        assert line["decision"] == ("accept" if accept else "defer")


def test_python_api_matches_cli_and_reports_unreadable_files(bundle_and_images, tmp_path, capsys):
    bundle, _, single, _ = bundle_and_images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    records = predict(bundle, [single, broken])
    assert "decision" in records[0] and "error" in records[1] and "fix" in records[1]
    assert main(["predict", str(bundle), str(single), str(broken)]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 image(s) could not be read" in captured.err
    assert json.loads(captured.out.splitlines()[0]) == records[0]


def test_predict_refuses_a_tampered_bundle_and_a_missing_path(bundle_and_images, tmp_path, capsys):
    import shutil

    bundle, _, single, _ = bundle_and_images
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "calibrator.json").write_text("{}")
    assert main(["predict", str(copy), str(single)]) == 2
    assert "calibrator.json does not match its sha256" in capsys.readouterr().err
    assert main(["predict", str(bundle), str(tmp_path / "nope.jpg")]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err
