"""Command-line parsing: --phases ends at the first key=value or option, so the overrides after it stay overrides."""

import pytest
import yaml

from streetvision.cli import _phases_as_one_value, build_parser, main


def _config(capsys, *argv: str) -> dict:
    assert main(["config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_overrides_after_phases_are_overrides_not_phases(capsys):
    shown = _config(capsys, "--phases", "phase1", "phase5", "phase6", "training.epochs=3", "model.head_dropout=0.2")
    assert shown["pipeline"]["phases"] == ["ingest", "phase1", "phase5", "phase6"]
    assert shown["training"]["epochs"] == 3 and shown["model"]["head_dropout"] == 0.2


def test_phases_take_a_comma_list_and_options_end_the_list(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("model: {head_dropout: 0.1}\n")
    shown = _config(
        capsys, "--phases", "phase1,phase2", "phase6", "--config", str(tmp_path / "c.yaml"), "training.epochs=2"
    )
    assert shown["pipeline"]["phases"] == ["ingest", "phase1", "phase2", "phase6"]
    assert shown["training"]["epochs"] == 2 and shown["model"]["head_dropout"] == 0.1


def test_the_rewrite_touches_only_the_phase_list():
    argv = ["run", "a=1", "--phases", "phase1", "phase2", "b=2", "--resume", "x", "--phases", "evaluate"]
    assert _phases_as_one_value(argv) == [
        "run",
        "a=1",
        "--phases=phase1,phase2",
        "b=2",
        "--resume",
        "x",
        "--phases=evaluate",
    ]
    args = build_parser().parse_args(_phases_as_one_value(["plan", "--phases", "phase1", "phase2", "k=v"]))
    assert args.phases == ["phase1", "phase2"] and args.overrides == ["k=v"]


def test_phases_without_a_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--phases", "training.epochs=1"])
    assert info.value.code == 2
    assert "'training.epochs=1' is an override, not a phase" in capsys.readouterr().err
