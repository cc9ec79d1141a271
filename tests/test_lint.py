"""The leakage lint (`streetvision lint`) on the committed pipeline YAML and on hand-broken copies of it.

Each broken copy is what a person could do to the YAML after compilation (KFP's definition-time type check
no longer applies then): re-wire an edge, change a declared type, launder a split through a generic
artifact input, add a second reader of VAL_TEST, or swap in an unknown component."""

import copy

import pytest
import yaml
from streetvision_pipelines.factory import DEFAULT_PIPELINE_FILE
from streetvision_pipelines.inspect_spec import load_documents
from streetvision_pipelines.lint import lint_documents, lint_file

from streetvision.cli import main


def _committed() -> list[dict]:
    return load_documents(DEFAULT_PIPELINE_FILE.read_text())


def _write(tmp_path, documents: list[dict]):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def _messages(report) -> str:
    return "\n".join(str(f) for f in report.findings)


def test_committed_pipeline_passes(capsys):
    report = lint_file(DEFAULT_PIPELINE_FILE)
    assert report.ok, _messages(report)
    assert report.tasks == 5 and report.inputs_checked == 9  # every artifact input of every task was looked at
    assert main(["lint", str(DEFAULT_PIPELINE_FILE)]) == 0
    assert "obey the split policy" in capsys.readouterr().out


def test_text_edit_rewiring_select_logits_into_the_policy_fails(tmp_path, capsys):
    # The literal hand edit: phase 2 now fits its policy on VAL_SELECT logits.
    text = DEFAULT_PIPELINE_FILE.read_text()
    assert text.count("outputArtifactKey: val_calib_logits") == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("outputArtifactKey: val_calib_logits", "outputArtifactKey: val_select_logits"))
    assert main(["lint", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "phase2-threshold" in out
    assert "VAL_SELECT data was given to a step whose role is policy_fitting" in out


def test_training_on_val_test_fails_and_counts_two_readers(tmp_path):
    text = DEFAULT_PIPELINE_FILE.read_text()
    assert text.count("outputArtifactKey: train\n") == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("outputArtifactKey: train\n", "outputArtifactKey: val_test\n"))
    messages = _messages(lint_file(broken))
    assert "VAL_TEST data was given to a step whose role is fit" in messages
    assert "VAL_TEST is read by 2 tasks" in messages


def test_declared_type_changed_together_with_the_wiring_fails(tmp_path):
    docs = _committed()
    spec = docs[0]
    spec["components"]["comp-phase2-threshold"]["inputDefinitions"]["artifacts"]["val_calib_logits"]["artifactType"][
        "schemaTitle"
    ] = "system.ValSelectLogits"
    spec["root"]["dag"]["tasks"]["phase2-threshold"]["inputs"]["artifacts"]["val_calib_logits"]["taskOutputArtifact"][
        "outputArtifactKey"
    ] = "val_select_logits"
    report = lint_file(_write(tmp_path, docs))
    messages = _messages(report)
    # No type mismatch is left for KFP to notice; the policy table still knows what phase 2 may read.
    assert "was bypassed" not in messages
    assert "phase2 reads VAL_CALIB here" in messages and "role is policy_fitting" in messages


def test_split_laundered_through_a_generic_artifact_input_fails(tmp_path):
    docs = _committed()
    spec = docs[0]
    spec["components"]["comp-phase2-threshold"]["inputDefinitions"]["artifacts"]["extra"] = {
        "artifactType": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"}
    }
    spec["root"]["dag"]["tasks"]["phase2-threshold"]["inputs"]["artifacts"]["extra"] = {
        "taskOutputArtifact": {"outputArtifactKey": "val_test", "producerTask": "ingest"}
    }
    messages = _messages(lint_file(_write(tmp_path, docs)))
    assert "receives VAL_TEST data through an input of type system.Artifact" in messages
    assert "VAL_TEST is read by 2 tasks" in messages


def test_second_reader_of_val_test_fails():
    docs = _committed()
    tasks = docs[0]["root"]["dag"]["tasks"]
    tasks["evaluate-again"] = copy.deepcopy(tasks["evaluate"])
    report = lint_documents(docs)
    assert [f.what for f in report.findings] == [
        "VAL_TEST is read by 2 tasks; it may be touched once, by the final evaluation"
    ]


def test_unknown_component_cannot_be_vouched_for(tmp_path):
    docs = _committed()
    executor = docs[0]["deploymentSpec"]["executors"]["exec-phase2-threshold"]["container"]
    executor["args"][executor["args"].index("phase2_threshold")] = "my_calibrator"
    messages = _messages(lint_file(_write(tmp_path, docs)))
    assert "runs 'my_calibrator', which is not a known phase" in messages


def _importer_pipeline(tmp_path, artifact_class, uri: str) -> dict:
    """A real importer task, compiled by KFP, of `artifact_class` at `uri`."""
    from kfp import compiler, dsl

    @dsl.pipeline(name="importer")
    def importing():
        dsl.importer(artifact_uri=uri, artifact_class=artifact_class, reimport=False)

    compiler.Compiler().compile(importing, str(tmp_path / "importer.yaml"))
    return load_documents((tmp_path / "importer.yaml").read_text())[0]


@pytest.mark.parametrize("wired", [True, False])
def test_an_importer_task_of_a_split_type_fails(tmp_path, capsys, wired):
    """An importer typed system.TrainSplit makes any URI pass as TRAIN, with a type KFP accepts downstream."""
    from streetvision_components.types import TrainSplit

    importer = _importer_pipeline(tmp_path, TrainSplit, "gs://anywhere/val_test")
    docs = _committed()
    spec = docs[0]
    spec["components"]["comp-importer"] = importer["components"]["comp-importer"]
    spec["deploymentSpec"]["executors"]["exec-importer"] = importer["deploymentSpec"]["executors"]["exec-importer"]
    tasks = spec["root"]["dag"]["tasks"]
    tasks["importer"] = importer["root"]["dag"]["tasks"]["importer"]
    if wired:
        [(task_name, task)] = [(n, t) for n, t in tasks.items() if "train" in t.get("inputs", {}).get("artifacts", {})]
        task["inputs"]["artifacts"]["train"]["taskOutputArtifact"] = {
            "producerTask": "importer",
            "outputArtifactKey": "artifact",
        }
        task.setdefault("dependentTasks", []).append("importer")
    path = _write(tmp_path, docs)
    messages = _messages(lint_file(path))
    assert (
        "task 'importer': produces TRAIN data (output 'artifact', system.TrainSplit) from an importer task" in messages
    )
    assert "'gs://anywhere/val_test' pass as TRAIN" in messages
    assert main(["lint", str(path)]) == 1
    capsys.readouterr()


def test_lint_refuses_what_is_not_a_pipeline(tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\n")
    assert main(["lint", str(other)]) == 2
    assert "not a compiled KFP pipeline" in capsys.readouterr().err
    assert main(["lint", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.parametrize("edit", ["none", "break"])
def test_lint_reports_each_file_of_several(tmp_path, edit, capsys):
    broken = tmp_path / "b.yaml"
    text = DEFAULT_PIPELINE_FILE.read_text()
    broken.write_text(
        text if edit == "none" else text.replace("outputArtifactKey: val_test", "outputArtifactKey: val_calib")
    )
    code = main(["lint", str(DEFAULT_PIPELINE_FILE), str(broken)])
    out = capsys.readouterr().out
    assert code == (0 if edit == "none" else 1)
    assert out.count("ok   ") == (2 if edit == "none" else 1)
