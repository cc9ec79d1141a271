import dataclasses

import pytest
import yaml

from streetvision.config import Config, ConfigError, config_from_json, config_to_json, load_config
from streetvision.config.loader import default_tree, preset_groups


def test_defaults_load_and_match_the_dataclasses_shape():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.img_size == 64 and cfg.model.depth == 4  # the demo_tiny preset is the default
    # Every key of the shipped YAML is a known key (default_tree fills the rest from the dataclasses).
    assert set(default_tree()) == {f.name for f in dataclasses.fields(Config)}


def test_dotted_overrides_and_presets():
    cfg = load_config(["training.epochs=1", "model=vit_small", "data.label_names=[neg, pos]", "model.depth=null"])
    assert cfg.training.epochs == 1
    assert cfg.model.img_size == 224 and cfg.model.weights == "hub"
    assert cfg.data.label_names == ["neg", "pos"]
    assert cfg.model.depth is None
    assert "vit_base" in preset_groups()["model"]


def test_one_error_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        load_config([
            "training.epohcs=1",  # unknown key, with a suggestion
            "model=nope",  # unknown preset
            "data.demo.width=wide",  # wrong type
            "training.precision=fp16",  # refused value
            "data.split.train=0.5",  # fractions no longer sum to 1
            "nosuchgroup.x=1",
        ])
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
