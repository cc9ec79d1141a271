import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from streetvision import registry
from streetvision.cli import main
from streetvision.config import Config, ConfigError, config_from_json, config_to_json, load_config, loader, schema
from streetvision.config.loader import preset_groups, selected_presets
from streetvision.config.schema import ClusterConfig, TaskResources
from streetvision.registry import PHASE_NAMES, default_resources

OVERLAYS = ["manifests/overlays/h100/streetvision.yaml", "manifests/overlays/a100/streetvision.yaml"]


def test_defaults_live_once_the_schema_equals_the_loaded_defaults():
    assert Config().model_dump() == load_config().model_dump() and Config() == load_config()
    cfg = load_config()
    assert cfg.model.img_size == 64 and cfg.model.name == "test_resnet"  # the demo_tiny preset is the default
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
        ("{data: big}", "defaults: 'data' has no presets; groups with presets: ['model', 'signing', 'training']"),
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
    assert shown.startswith("# presets: model=demo_tiny, training=gpu, signing=cluster\n")
    assert yaml.safe_load(shown)["training"] == training.model_dump()


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


def test_cluster_has_a_resources_key_per_registry_phase(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: {phase1: {gpus: 2}, phase9: {gpus: 1}, retries: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path)
    retries, phase9 = info.value.problems  # the unknown phase is reported with the group's other problems
    assert retries == "cluster.retries: must be >= 0, got -1"
    assert phase9.startswith("cluster.phase9: unknown key (did you mean 'phase"), phase9
    with pytest.raises(ConfigError, match=r"'cluster.phase9' is not a config group \(did you mean 'phase"):
        load_config(["cluster.phase9.gpus=2"])
    path.write_text("cluster: {phase1: {gpus: 2}}\n")
    assert load_config(config_file=path).cluster.resources_for("phase1").gpus == 2
    # A phase given in part takes the rest from the registry, also outside the loader.
    phase1 = ClusterConfig.model_validate({"phase1": {"gpus": 2}}).resources_for("phase1")
    assert phase1 == TaskResources(**{**default_resources("phase1"), "gpus": 2})
    # A phase added to the registry is a cluster key with its registry defaults, with no change to the schema.
    monkeypatch.setattr(schema, "PHASE_NAMES", (*PHASE_NAMES, "phase7"))
    monkeypatch.setitem(registry.PHASE_SPECS, "phase7", replace(registry.PHASE_SPECS["phase2"], name="phase7"))
    cluster = ClusterConfig.model_validate({"phase7": {"gpus": 1}})
    assert cluster.resources_for("phase7") == TaskResources(cpu="2", memory="4G", gpus=1)
    assert list(cluster.model_dump())[-1] == "phase7"


def test_bool_is_not_an_int_and_int_is_a_float():
    with pytest.raises(ConfigError, match="training.epochs: expected int, got bool"):
        load_config(["training.epochs=true"])
    assert load_config(["training.lr=1"]).training.lr == 1.0


def test_json_round_trip_is_validated_again():
    cfg = load_config(["training.epochs=3"])
    assert config_from_json(config_to_json(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_json('{"training": {"epochs": 3, "bogus": 1}}')


ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ROOT / "src/streetvision/config/defaults"
SHIPPED_YAML = sorted(
    [*(ROOT / "manifests/overlays").glob("*/streetvision.yaml"), *DEFAULTS.glob("*.yaml"), *DEFAULTS.glob("*/*.yaml")]
)


def test_every_preset_and_overlay_is_among_the_shipped_yaml():
    names = {p.relative_to(ROOT).as_posix() for p in SHIPPED_YAML}
    assert set(OVERLAYS) <= names and "src/streetvision/config/defaults/config.yaml" in names
    for group, presets in preset_groups().items():
        assert {f"src/streetvision/config/defaults/{group}/{p}.yaml" for p in presets} <= names


@pytest.mark.parametrize("path", SHIPPED_YAML, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_yaml_validates(path, capsys):
    assert main(["config", "--validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {path} is a valid ") and out.count("\n") == 1
    if path.parent.parent == DEFAULTS:  # a preset is checked as its group picks it
        assert f"{path.parent.name}={path.stem}" in out and "valid preset" in out


def test_validate_lists_every_problem_of_a_file_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("defaults: {training: gpu}\ntraining: {epohcs: 1, lr: fast}\ncluster: {phase1: {memory: lots}}\n")
    assert main(["config", "--validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"3 problem(s) in {path}" in err and "training.epohcs: unknown key (did you mean 'epochs'?)" in err
    assert "training.lr: expected float, got str 'fast'" in err and "cluster.phase1.memory: a Kubernetes memory" in err
    assert main(["config", "--validate", str(tmp_path / "gone.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_validate_checks_a_preset_over_the_defaults(tmp_path, monkeypatch, capsys):
    defaults = tmp_path / "defaults"
    shutil.copytree(DEFAULTS, defaults)
    (defaults / "training" / "broken.yaml").write_text("precison: bf16\nwarmup_epochs: -1\n")
    monkeypatch.setattr(loader, "_defaults_dir", lambda: defaults)
    assert main(["config", "--validate", str(defaults / "training" / "broken.yaml")]) == 2
    err = capsys.readouterr().err
    assert "training.precison: unknown key (did you mean 'precision'?)" in err
    assert "training.warmup_epochs: must be >= 0.0, got -1" in err


def test_value_ranges_quantities_and_lists_are_checked():
    with pytest.raises(ConfigError) as info:
        load_config(
            [
                "model.patch_size=0",
                "model.depth=-1",
                "training.warmup_epochs=-0.5",
                "data.max_quarantine_fraction=1.5",
                "cluster.phase1.cpu=lots",
                "cluster.evaluate.memory=32 GB",
                "pipeline.phases=phase1",  # a string is not a list of one-letter phases
            ]
        )
    text = str(info.value)
    assert len(info.value.problems) == 7, text
    assert "model.patch_size: must be > 0, got 0" in text and "model.depth: must be > 0, got -1" in text
    assert "training.warmup_epochs: must be >= 0.0" in text
    assert "data.max_quarantine_fraction: must be in [0.0, 1.0], got 1.5" in text
    assert "cluster.phase1.cpu: a Kubernetes CPU quantity" in text and "cluster.evaluate.memory" in text
    assert "pipeline.phases: expected a list, got str 'phase1'" in text
    cfg = load_config(["cluster.phase1.cpu=500m", "cluster.phase1.memory=96Gi", "model.patch_size=null"])
    assert cfg.cluster.resources_for("phase1").cpu == "500m" and cfg.model.patch_size is None


def test_cross_field_rules_are_reported_with_the_other_problems_of_their_group():
    with pytest.raises(ConfigError) as info:
        load_config(
            [
                "model=vit_tiny",
                "cluster.retries=-1",
                "cluster.checkpoint_root=relative",
                "model.img_size=66",
                "model.depth=0",
            ]
        )
    text = str(info.value)
    assert "cluster.retries" in text and "cluster.checkpoint_root: with checkpoint_pvc set" in text
    assert "model.patch_size: 8 does not divide model.img_size=66" in text and "model.depth" in text


def test_config_objects_copy_and_mutate_like_plain_records():
    cfg = load_config()
    copied = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 2})})
    assert copied.training.epochs == 2 and cfg.training.epochs == Config().training.epochs
    cfg.training.resume_dir = "/tmp/resume"  # components set run-time locations on the parsed config
    assert config_from_json(config_to_json(cfg)).training.resume_dir == "/tmp/resume"
    assert Config().training.resume_dir == ""  # defaults are not shared between instances


# Each row of the config table that used to crash later, or pass when it should not: the problem line it gives.
CRASHING_OVERRIDES = {
    "cluster.phase1.memory=lots": "cluster.phase1.memory: a Kubernetes memory quantity",
    "cluster.phase1.cpu=abc": "cluster.phase1.cpu: a Kubernetes CPU quantity",
    "model.patch_size=0": "model.patch_size: must be > 0, got 0",
    "model.num_heads=0": "model.num_heads: must be > 0, got 0",
    "model.depth=0": "model.depth: must be > 0, got 0",
    "model.embed_dim=0": "model.embed_dim: must be > 0, got 0",
    "model.depth=-1": "model.depth: must be > 0, got -1",
    "training.warmup_epochs=-1": "training.warmup_epochs: must be >= 0.0, got -1",
    "data.min_image_size=-5": "data.min_image_size: must be >= 1, got -5",
    "pipeline.phases=[]": "pipeline.phases: name at least one phase",
    "pipeline.phases=phase1": "pipeline.phases: expected a list, got str 'phase1'",
    "pipeline.phases=[phase6]": "pipeline.phases: the bundle takes exactly one policy phase",
    "model.embed_dim=100": "model.embed_dim: shrinks a ViT only; model.name=test_resnet takes none",
    "data.max_record_bytes=0": "data.max_record_bytes: must be >= 1, got 0",
    "cluster.phase1.cpu=0": "cluster.phase1.cpu: must be more than 0, got '0'",
    "cluster.phase1.memory=0.5Gi": "cluster.phase1.memory: a Kubernetes memory quantity",  # kfp refuses fractions
    "cluster.phase1.memory=512K": "cluster.phase1.memory: a Kubernetes memory quantity",  # Kubernetes refuses K
}


@pytest.mark.parametrize("override", CRASHING_OVERRIDES)
def test_each_bad_value_is_one_config_error_naming_its_key(override):
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(CRASHING_OVERRIDES[override])


def test_all_the_bad_values_at_once_give_one_error_listing_each():
    issue_rows = list(CRASHING_OVERRIDES)[:12]
    one_per_key = {override.partition("=")[0]: override for override in issue_rows}  # the last one of a key wins
    with pytest.raises(ConfigError) as info:
        load_config(list(one_per_key.values()))
    assert len(info.value.problems) == len(one_per_key) == 9


def test_a_failed_validation_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(["run", "--output-dir", str(out), "cluster.phase1.memory=lots", "model.depth=0"]) == 2
    assert main(["run", "--output-dir", str(out), "--phases", "phase6"]) == 2
    err = capsys.readouterr().err
    assert "cluster.phase1.memory" in err and "model.depth" in err and "exactly one policy phase" in err
    assert not out.exists()


def test_a_plain_number_is_a_quantity():
    cfg = load_config(["cluster.phase1.cpu=4", "cluster.phase1.memory=1073741824", "cluster.ingest.cpu=0.5"])
    assert cfg.cluster.resources_for("phase1").cpu == "4" and cfg.cluster.resources_for("phase1").memory == "1073741824"
    assert cfg.cluster.resources_for("ingest").cpu == "0.5"
