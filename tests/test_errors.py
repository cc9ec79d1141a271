"""The domain errors: one hierarchy under the what/where/fix base, existing classes under their domain, and one
exit status per domain from the command line, printed without a traceback."""

import pytest

from streetvision import cli
from streetvision.config import ConfigError, load_config
from streetvision.contracts import errors
from streetvision.explora.train import SSLDivergedError


@pytest.mark.parametrize(
    "error, code",
    [
        (errors.ConfigError("training.epochs must be > 0", "training.epochs", "set it to 1 or more"), 2),
        (errors.ConfigError(["a: bad", "b: worse"]), 2),
        (errors.DataError("12 of 40 records quarantined", "ingest", "fix the sources"), 4),
        (errors.LeakageViolationError("VAL_TEST read to fit", "phase1", "wire TRAIN"), 5),
        (errors.IncompleteArtifactError("no completion record", "/x/train", "rerun ingest"), 6),
        (errors.BundleError("sha256 mismatch", "bundle/model.safetensors", "export it again"), 6),
        (errors.TrainingDivergedError("loss is nan", "phase1 epoch 2", "lower training.lr"), 7),
        (SSLDivergedError("loss is inf", "phase4", "lower explora.lr"), 7),
        (errors.ServerUnreachableError("connection refused", "http://kfp", "check --host"), 8),
        (errors.ClusterError("403 Forbidden", "http://kfp", "check the token"), 8),
    ],
)
def test_each_domain_has_its_exit_code_and_prints_what_where_fix(error, code, monkeypatch, capsys):
    def fails(args):
        raise error

    monkeypatch.setattr(cli, "cmd_lint", fails)
    assert cli.main(["lint", "any.yaml"]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"error: {error.what}") and f"  where: {error.where}\n" in err
    assert f"  fix:   {error.fix}" in err and "Traceback" not in err


def test_existing_classes_keep_their_imports_under_the_new_bases():
    from streetvision.contracts import ContractError, DataError, LeakageViolationError
    from streetvision.training.loop import TrainingDivergedError

    for kind in (ConfigError, DataError, LeakageViolationError, errors.IntegrityError):
        assert issubclass(kind, ContractError) and issubclass(kind, ValueError)
    for kind in (errors.CheckpointError, errors.BundleError, errors.LogitsError, errors.PolicyError):
        assert issubclass(kind, errors.IntegrityError)
    # Divergence and an unreachable server are not bad input: no ValueError, no ContractError.
    for kind in (TrainingDivergedError, errors.ServerUnreachableError):
        assert not issubclass(kind, ValueError) and issubclass(kind, errors.StreetVisionError)


def test_config_errors_list_every_problem_in_the_common_format():
    with pytest.raises(ConfigError) as info:
        load_config(["training.epohcs=1", "model.depth=two"])
    text = str(info.value)
    assert "2 problem(s) in" in text and "training.epohcs" in text and "model.depth" in text
    assert "\n  where: " in text and "\n  fix:   " in text and len(info.value.problems) == 2


def test_an_unknown_phase_is_a_config_error_with_exit_code_2(capsys):
    assert cli.main(["plan", "--phases", "phase9"]) == 2
    assert "unknown phase(s) ['phase9']" in capsys.readouterr().err
