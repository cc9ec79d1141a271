"""The policy is fitted on the numbers deployment computes: VAL_CALIB logits written by phase 1 equal
`Bundle.predict`'s logits on the same images, also when training ran under bf16 autocast."""

import numpy as np
import torch
from conftest import TINY, build_bundle

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
    out = {name: tmp_path / name for name in ("checkpoint", "val_select_logits", "val_calib_logits")}
    run_phase1(
        cfg,
        dirs[Split.TRAIN],
        dirs[Split.VAL_SELECT],
        dirs[Split.VAL_CALIB],
        out["checkpoint"],
        out["val_select_logits"],
        out["val_calib_logits"],
    )
    bundle = Bundle.load(build_bundle(cfg, dirs, out, tmp_path))
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
