import dataclasses

import pytest
import yaml

from streetvision.cli import main
from streetvision.config import Config, ConfigError, config_from_json, config_to_json, load_config
from streetvision.config.loader import preset_groups, selected_presets

OVERLAYS = ["manifests/overlays/h100/streetvision.yaml", "manifests/overlays/a100/streetvision.yaml"]


def test_defaults_live_once_the_schema_equals_the_loaded_defaults():
    assert dataclasses.asdict(Config()) == dataclasses.asdict(load_config())
    cfg = load_config()
    assert cfg.model.img_size == 64 and cfg.model.depth == 4  # the demo_tiny preset is the default
    assert selected_presets() == {"model": "demo_tiny", "training": "cpu"}
    # ... and those default presets change nothing.
    assert load_config(["model=demo_tiny", "training=cpu"]) == Config()


def _gpu_file(tmp_path, text):
    path = tmp_path / "gpu.yaml"
    path.write_text(text)
    return path


def test_a_config_file_picks_presets_in_the_documented_order(tmp_path):
    path = _gpu_file(tmp_path, "defaults: {training: gpu}\ntraining: {ema_decay: 0.5}\n")
    cfg = load_config(config_file=path)
    assert cfg.training.precision == "bf16" and cfg.training.augment.rotation_degrees == 20.0  # the file's preset
    assert cfg.training.ema_decay == 0.5  # the file's own keys over its presets
    assert selected_presets(config_file=path)["training"] == "gpu"

    cpu = load_config(["training=cpu"], path)  # a command-line preset replaces the file's choice ...
    assert selected_presets(["training=cpu"], path)["training"] == "cpu"
    assert cpu.training.precision == "fp32" and not cpu.training.compile and cpu.training.layer_decay == 1.0
    assert cpu.training.augment == Config().training.augment
    assert cpu.training.ema_decay == 0.5  # ... and the file's own keys still apply over it
    assert load_config(["training=cpu", "training.ema_decay=0.25"], path).training.ema_decay == 0.25  # dotted last


def test_a_config_file_may_list_presets_as_hydra_does(tmp_path):
    path = _gpu_file(
        tmp_path, "defaults:\n  - training: gpu\n  - model: vit_small\n  - _self_\nmodel: {img_size: 112}\n"
    )
    cfg = load_config(config_file=path)
    assert cfg.training.compile and cfg.model.weights == "hub" and cfg.model.depth is None
    assert cfg.model.img_size == 112
    assert load_config(["model=vit_base"], path).model.name == "vit_base_patch14_dinov2"


@pytest.mark.parametrize(
    "defaults, message",
    [
        ("{training: gpux}", "defaults: unknown training preset 'gpux'; available: ['cpu', 'gpu']"),
        ("{data: big}", "defaults: 'data' has no presets; groups with presets: ['model', 'training']"),
        ("gpu", "defaults: expected a mapping like {training: gpu}"),
        ("[_self_, {training: gpu}]", "with _self_ only last"),
    ],
)
def test_a_config_files_bad_preset_choice_is_a_clear_error(tmp_path, defaults, message):
    path = _gpu_file(tmp_path, f"defaults: {defaults}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path)
    assert message in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_cluster_overlays_get_the_gpu_recipe(overlay, capsys):
    training = load_config(config_file=overlay).training
    assert training.precision == "bf16" and training.compile
    assert training.layer_decay < 1.0 and training.ema_decay > 0.0 and training.freeze_backbone_epochs > 0
    augment = training.augment
    assert augment.rotation_degrees == 20.0 and augment.jpeg_p > 0 and augment.blur_p > 0 and augment.noise_p > 0
    assert training.device == "auto"  # GPU tasks find their GPU; tasks without GPUs run on CPU
    assert main(["config", "--config", overlay]) == 0  # what `streetvision config --config OVERLAY` shows
    shown = capsys.readouterr().out
    assert shown.startswith("# presets: model=demo_tiny, training=gpu\n")
    assert yaml.safe_load(shown)["training"] == dataclasses.asdict(training)


def test_dotted_overrides_and_presets():
    cfg = load_config(["training.epochs=1", "model=vit_small", "data.label_names=[neg, pos]", "model.depth=null"])
    assert cfg.training.epochs == 1
    assert cfg.model.img_size == 224 and cfg.model.weights == "hub"
    assert cfg.data.label_names == ["neg", "pos"]
    assert cfg.model.depth is None
    assert "vit_base" in preset_groups()["model"]


def test_one_error_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        load_config(
            [
                "training.epohcs=1",  # unknown key, with a suggestion
                "model=nope",  # unknown preset
                "data.demo.width=wide",  # wrong type
                "training.precision=fp16",  # refused value
                "data.split.train=0.5",  # fractions no longer sum to 1
                "nosuchgroup.x=1",
            ]
        )
    problems = info.value.problems
    assert len(problems) == 6, problems
    text = str(info.value)
    assert "did you mean 'epochs'" in text
    assert "data.demo.width: expected int, got str 'wide'" in text
    assert "fp16 is refused" in text
    assert "data.split" in text and "sum to 1" in text
    assert "unknown model preset 'nope'" in text


def test_yaml_file_unknown_keys_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"lr": "fast", "momentum": 0.9}, "model": {"depth": 2.5}}))
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path)
    text = str(info.value)
    assert "training.lr: expected float" in text
    assert "training.momentum: unknown key" in text
    assert "model.depth: expected int, got float 2.5" in text


def test_bool_is_not_an_int_and_int_is_a_float():
    with pytest.raises(ConfigError, match="training.epochs: expected int, got bool"):
        load_config(["training.epochs=true"])
    assert load_config(["training.lr=1"]).training.lr == 1.0


def test_json_round_trip_is_validated_again():
    cfg = load_config(["training.epochs=3"])
    assert config_from_json(config_to_json(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_json('{"training": {"epochs": 3, "bogus": 1}}')
