"""The policy is fitted on the numbers deployment computes: VAL_CALIB logits written by phase 1 equal
`Bundle.predict`'s logits on the same images, also when training ran under bf16 autocast."""

import json

import numpy as np
import torch
from conftest import PHASE1_OUTPUTS, TINY, TRUST, build_bundle, phase1_paths

from streetvision.config import load_config
from streetvision.contracts import Role, Split
from streetvision.data.shards import load_logits, load_split
from streetvision.inference import Bundle
from streetvision.models import load_model_dir, predict_logits
from streetvision.phases.phase1 import run_phase1

# Both sides run the same fp32 function on the same device; what is left is the float32 storage of the logits.
TOLERANCE = 1e-5


def test_val_calib_logits_equal_the_bundles_logits_under_bf16_training(ingested, tmp_path):
    _, dirs, _, _ = ingested
    cfg = load_config(TINY + ["training.precision=bf16"])  # CPU autocast runs bf16 too: the mismatch would show
    paths = phase1_paths(dirs, tmp_path)
    run_phase1(cfg, paths)
    out = {name: paths.output(name) for name in PHASE1_OUTPUTS}
    bundle = Bundle.load(build_bundle(cfg, dirs, out, tmp_path), TRUST)
    calib = load_split(dirs[Split.VAL_CALIB], split=Split.VAL_CALIB, role=Role.PREDICTION, phase="t", input_name="x")
    written = load_logits(
        out["val_calib_logits"], split=Split.VAL_CALIB, role=Role.POLICY_FITTING, phase="t", input_name="x"
    )
    deployed = bundle.predict(np.asarray(calib.images)).logits
    np.testing.assert_allclose(written.logits, deployed, rtol=0, atol=TOLERANCE)
    # The check can fail: the same weights under bf16 autocast give other logits than this tolerance allows.
    model = load_model_dir(out["checkpoint"])
    prep = bundle.preprocessing
    bf16 = predict_logits(model, np.asarray(calib.images), prep["mean"], prep["std"], autocast_dtype=torch.bfloat16)
    assert np.abs(bf16 - deployed).max() > 10 * TOLERANCE


def test_deployment_renders_follow_the_configured_mix_and_score_as_the_bundle_does():
    from streetvision.challenge import deployment_render_logits, render_as_deployed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 3, 2)).eval()
    images = np.random.default_rng(0).integers(0, 255, (40, 24, 24, 3), dtype=np.uint8)
    mean, std = [0.5] * 3, [0.25] * 3
    logits, levels = deployment_render_logits(model, images, mean, std, [0, 3], 3, 32, 16, seed=5)
    assert logits.shape == (40, 3, 2) and levels.shape == (40, 3)
    assert set(np.unique(levels)) == {0, 3} and 0.3 < (levels == 3).mean() < 0.7  # each level equally likely
    again, _ = deployment_render_logits(model, images, mean, std, [0, 3], 3, 32, 16, seed=5)
    np.testing.assert_array_equal(logits, again)  # seeded: a rerun of phase 1 fits the same policy
    # Render 0 of the level-3 images, rebuilt through the deployment decode path, gives the same logits.
    rows = np.flatnonzero(levels[:, 0] == 3)
    pixels = render_as_deployed(images[rows], 3, 32, 16, seed=5 * 7919)
    np.testing.assert_allclose(logits[rows, 0], predict_logits(model, pixels, mean, std), rtol=0, atol=TOLERANCE)
    assert not np.allclose(logits[:, 0], logits[:, 1])  # renders differ


def test_policy_phases_certify_one_render_per_image_and_name_the_distribution(trained, tmp_path):
    import pytest

    from streetvision.config import load_config
    from streetvision.contracts.errors import PolicyError
    from streetvision.phases.phase2 import calibration_inputs

    cfg, dirs, out = trained
    data = load_logits(
        out["val_calib_logits"], split=Split.VAL_CALIB, role=Role.POLICY_FITTING, phase="t", input_name="x"
    )
    assert data.renders is not None  # TINY lists challenge levels [0, 3]: the default fits on deployment inputs
    render_logits, levels = data.renders
    assert render_logits.shape == (len(data.labels), cfg.calibration.renders_per_image, 2)
    assert set(np.unique(levels)) <= {0, 3}
    inputs = calibration_inputs(cfg, data.logits, data.labels, data.renders, "t")
    np.testing.assert_array_equal(inputs.certify_logits, render_logits[:, 0])
    assert len(inputs.fit_logits) == render_logits.shape[0] * render_logits.shape[1]
    assert "deployment inputs" in inputs.distribution and "[0, 3]" in inputs.distribution
    plain = calibration_inputs(load_config(TINY + ["calibration.fit_on=plain"]), data.logits, data.labels, None, "t")
    assert plain.certify_logits is data.logits and "not deployment" in plain.distribution
    with pytest.raises(PolicyError, match="hold no deployment renders"):
        calibration_inputs(cfg, data.logits, data.labels, None, "t")
    other = load_config(TINY + ["evaluation.challenge_levels=[1, 2]"])
    with pytest.raises(PolicyError, match="deployment mix is"):
        calibration_inputs(other, data.logits, data.labels, data.renders, "t")
    bundle = Bundle.load(build_bundle(cfg, dirs, out, tmp_path), TRUST)
    assert "deployment inputs" in bundle.policy["guarantee"] and bundle.policy["calibration_levels"] == [0, 3]


def test_the_epoch_is_selected_on_plain_val_select_and_its_deployment_renders(ingested, tmp_path):
    from streetvision.challenge import deployment_levels, render_as_deployed, val_select_for_selection

    _, dirs, _, _ = ingested
    select = load_split(
        dirs[Split.VAL_SELECT], split=Split.VAL_SELECT, role=Role.MODEL_SELECTION, phase="t", input_name="x"
    )
    images, n = np.asarray(select.images), len(select.labels)
    cfg = load_config(TINY + ["evaluation.challenge_levels=[0,2]"])
    chosen_on, labels, described = val_select_for_selection(cfg, images, select.labels)
    assert chosen_on.shape == (2 * n, cfg.model.img_size, cfg.model.img_size, 3) and chosen_on.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.concatenate([select.labels, select.labels]))
    np.testing.assert_array_equal(chosen_on[:n], images)  # the plain images first
    again, _, _ = val_select_for_selection(cfg, images, select.labels)
    np.testing.assert_array_equal(chosen_on, again)  # seeded: a rerun picks the same epoch
    # Then one render of each image at the level deployment_levels drew for it, decoded as deployment decodes it.
    rendered, size, seed = chosen_on[n:], cfg.evaluation.challenge_size, cfg.calibration.seed + 1
    levels = deployment_levels(n, [0, 2], 1, seed)[:, 0]
    assert set(levels) == {0, 2}
    for level in (0, 2):
        rows = np.flatnonzero(levels == level)
        expected = render_as_deployed(images[rows], level, size, cfg.model.img_size, seed * 7919)
        np.testing.assert_array_equal(rendered[rows], expected)
    level0 = render_as_deployed(images, 0, size, cfg.model.img_size, seed * 7919)
    assert not np.array_equal(rendered[levels == 2], level0[levels == 2])  # level 2 is not the plain JPEG
    plain = load_config(TINY + ["evaluation.challenge_levels=[]"])
    only_plain = val_select_for_selection(plain, select.images, select.labels)
    assert only_plain[0] is select.images and only_plain[2] == "plain VAL_SELECT"  # fitted on plain: chosen on plain
    paths = phase1_paths(dirs, tmp_path)
    run_phase1(cfg, paths)
    summary = json.loads((paths.output("checkpoint") / "training_summary.json").read_text())
    assert summary["selected_on"] == described and "challenge levels [0, 2]" in described
