"""Policy phases 2, 3 and 5 on a tiny trained model, and the bundle: one policy, hashes, weights it was fitted on."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY, TRUST, phase1_paths, phase3_paths, reseal_record

from streetvision.config import load_config
from streetvision.contracts import Role, Split
from streetvision.contracts.errors import BundleError, PolicyError
from streetvision.contracts.metadata import METADATA_FILE
from streetvision.contracts.validators import sha256_file, validate_policy
from streetvision.data.shards import load_split
from streetvision.inference import Bundle
from streetvision.models import load_model_dir, predict_logits
from streetvision.models.multiview import MultiViewClassifier
from streetvision.phases.phase1 import run_phase1
from streetvision.phases.phase2 import run_phase2
from streetvision.phases.phase3 import gatekeeper_loss, run_phase3
from streetvision.phases.phase5 import run_phase5
from streetvision.phases.phase6 import run_phase6
from streetvision.phases.result import PhasePaths


def _export(dirs, checkpoint, policy, bundle) -> PhasePaths:
    return PhasePaths.of("phase6", checkpoint=checkpoint, policy=policy, val_calib=dirs[Split.VAL_CALIB], bundle=bundle)


@pytest.fixture(scope="module")
def policies(trained, tmp_path_factory):
    """Each policy phase once on the shared tiny model, and a bundle from each."""
    cfg, dirs, out = trained
    root = tmp_path_factory.mktemp("policies")
    run_phase2(cfg, PhasePaths.of("phase2", val_calib_logits=out["val_calib_logits"], policy=root / "threshold"))
    run_phase5(cfg, PhasePaths.of("phase5", val_calib_logits=out["val_calib_logits"], policy=root / "scrc"))
    run_phase3(cfg, phase3_paths(dirs, out["checkpoint"], root))
    run_phase6(cfg, _export(dirs, out["checkpoint"], root / "threshold", root / "bundle_threshold"))
    run_phase6(cfg, _export(dirs, out["checkpoint"], root / "scrc", root / "bundle_scrc"))
    run_phase6(cfg, _export(dirs, root / "gate_checkpoint", root / "gate", root / "bundle_gate"))
    return cfg, dirs, out, root


@pytest.mark.parametrize("kind", ["threshold", "scrc", "gate"])
def test_each_policy_kind_makes_a_loadable_bundle(policies, kind):
    cfg, dirs, _, root = policies
    bundle = Bundle.load(root / f"bundle_{kind}", TRUST)
    assert bundle.policy["kind"] == kind
    manifest = json.loads((root / f"bundle_{kind}" / "manifest.json").read_text())
    assert manifest["policy_kind"] == kind and manifest["guarantee"] == bundle.policy["guarantee"]
    assert manifest["weights_sha256"] == sha256_file(root / f"bundle_{kind}" / "model.safetensors")
    calib = load_split(dirs[Split.VAL_CALIB], split=Split.VAL_CALIB, role=Role.PREDICTION, phase="test", input_name="x")
    images = np.asarray(calib.images[:8])
    preds = bundle.predict(images)
    assert ((preds.prob_roadwork >= 0) & (preds.prob_roadwork <= 1)).all()
    assert (preds.confidence == np.maximum(preds.prob_roadwork, 1 - preds.prob_roadwork)).all()


def test_gate_policy_names_its_tuned_weights_and_lineage(policies):
    _, _, out, root = policies
    policy = json.loads((root / "gate" / "policy.json").read_text())
    assert policy["weights_sha256"] == sha256_file(root / "gate_checkpoint" / "model.safetensors")
    assert policy["gate_val_select_aurc"] <= policy["gate_val_select_aurc_before"]
    meta = json.loads((root / "gate" / METADATA_FILE).read_text())
    assert {(e["phase"], e["role"], e["split"]) for e in meta["lineage"]} >= {
        ("phase3", "fit", "train"),
        ("phase3", "model_selection", "val_select"),
        ("phase3", "policy_fitting", "val_calib"),
    }


@pytest.mark.parametrize("record", ["policy.json", "calibrator.json"])
def test_policy_fitted_on_other_weights_is_refused_by_export(policies, tmp_path, record):
    """A policy/calibrator fitted on logits of other weights (say EMA or last-epoch) beside these weights: refused."""
    cfg, dirs, out, root = policies
    policy_dir = tmp_path / "policy"
    shutil.copytree(root / "threshold", policy_dir)
    data = json.loads((policy_dir / record).read_text())
    data["weights_sha256"] = sha256_file(root / "bundle_threshold" / "config.yaml")  # some other file's hash
    (policy_dir / record).write_text(json.dumps(data))
    reseal_record(policy_dir)  # a consistent artifact: the cross-check of weights must catch it
    with pytest.raises(BundleError, match="fitted on logits of weights"):
        run_phase6(cfg, _export(dirs, out["checkpoint"], policy_dir, tmp_path / "bundle"))
    assert not (tmp_path / "bundle" / "manifest.json").exists()


def test_swapped_weights_in_a_bundle_fail_loading(policies, tmp_path):
    _, _, _, root = policies
    bundle = tmp_path / "b"
    shutil.copytree(root / "bundle_threshold", bundle)
    # Swap in other weights and even fix up the manifest hash: the policy still names the old weights.
    from safetensors.torch import load_file, save_file

    state = load_file(str(bundle / "model.safetensors"))
    state = {k: v + 0.01 if k.startswith("head.") else v for k, v in state.items()}
    save_file(state, str(bundle / "model.safetensors"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = sha256_file(bundle / "model.safetensors")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="policy was fitted on logits of weights"):
        Bundle.load(bundle, TRUST)


@pytest.mark.parametrize(
    "damage", ["truncate_weights", "edit_policy", "truncate_manifest", "second_policy", "no_policy", "edit_calibrator"]
)
def test_tampered_bundle_fails_with_a_clear_error(policies, tmp_path, damage):
    _, _, _, root = policies
    bundle = tmp_path / "b"
    shutil.copytree(root / "bundle_scrc", bundle)
    if damage == "truncate_weights":
        data = (bundle / "model.safetensors").read_bytes()
        (bundle / "model.safetensors").write_bytes(data[: len(data) // 2])
        expected = "model.safetensors does not match its sha256"
    elif damage == "edit_policy":
        policy = json.loads((bundle / "policy.json").read_text())
        policy["target_risk"] = 0.5
        (bundle / "policy.json").write_text(json.dumps(policy))
        expected = "policy.json does not match its sha256"
    elif damage == "edit_calibrator":
        calibrator = json.loads((bundle / "calibrator.json").read_text())
        calibrator["kind"] = "temperature"
        (bundle / "calibrator.json").write_text(json.dumps(calibrator))
        expected = "calibrator.json does not match its sha256"
    elif damage == "truncate_manifest":
        text = (bundle / "manifest.json").read_text()
        (bundle / "manifest.json").write_text(text[: len(text) // 2])
        expected = "not valid JSON"
    elif damage == "second_policy":
        shutil.copyfile(root / "bundle_threshold" / "policy.json", bundle / "threshold_policy.json")
        expected = "exactly one policy"
    else:
        (bundle / "policy.json").unlink()
        expected = "missing files"
    with pytest.raises(BundleError, match=expected):
        Bundle.load(bundle, TRUST)


def test_policy_validator_per_kind(policies):
    _, _, _, root = policies
    for kind in ("threshold", "scrc", "gate"):
        policy = json.loads((root / kind / "policy.json").read_text())
        validate_policy(policy, kind)
        for field in ("weights_sha256", "guarantee"):
            with pytest.raises(PolicyError, match="missing"):
                validate_policy({k: v for k, v in policy.items() if k != field}, kind)
    scrc = json.loads((root / "scrc" / "policy.json").read_text())
    with pytest.raises(PolicyError, match="missing"):
        validate_policy({k: v for k, v in scrc.items() if k != "set_threshold"}, "scrc")


def test_gatekeeper_loss_matches_its_definition():
    import torch

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.4]])
    labels = torch.tensor([0, 0, 1, 0])  # correct, wrong, wrong, correct
    p = torch.softmax(logits, 1)
    ce = -(torch.log(p[0, 0]) + torch.log(p[3, 0])) / 2
    kl = sum((p[i] * torch.log(p[i] / 0.5)).sum() for i in (1, 2)) / 2
    assert float(gatekeeper_loss(logits, labels, 0.3)) == pytest.approx(float(0.3 * ce + 0.7 * kl), rel=1e-6)
    # The KL term pushes wrong predictions toward uniform: zero at the uniform prediction.
    assert float(
        gatekeeper_loss(torch.zeros(2, 2) + torch.tensor([[0.0, 1e-9]]), torch.tensor([0, 0]), 0.0)
    ) == pytest.approx(0.0, abs=1e-6)


# --- KFP wiring: one policy type, one required policy input on phase 6 ---


def _ops():
    from streetvision_components.phases import PHASE_FUNCTIONS
    from streetvision_pipelines.factory import make_component

    cfg = load_config()
    return {p: make_component(p, cfg) for p in PHASE_FUNCTIONS}


def test_phase6_without_a_policy_cannot_be_defined():
    from kfp import dsl

    ops = _ops()
    with pytest.raises(TypeError, match="policy"):

        @dsl.pipeline(name="no-policy")
        def no_policy(config: str = "{}"):
            ingest = ops["ingest"](config=config)
            p1 = ops["phase1"](
                config=config,
                train=ingest.outputs["train"],
                val_select=ingest.outputs["val_select"],
                val_calib=ingest.outputs["val_calib"],
            )
            ops["phase6"](config=config, checkpoint=p1.outputs["checkpoint"])


def test_phase6_with_two_policies_cannot_be_defined():
    from kfp import dsl

    ops = _ops()
    with pytest.raises(TypeError, match="second_policy"):

        @dsl.pipeline(name="two-policies")
        def two_policies(config: str = "{}"):
            ingest = ops["ingest"](config=config)
            p1 = ops["phase1"](
                config=config,
                train=ingest.outputs["train"],
                val_select=ingest.outputs["val_select"],
                val_calib=ingest.outputs["val_calib"],
            )
            p2 = ops["phase2"](config=config, val_calib_logits=p1.outputs["val_calib_logits"])
            p5 = ops["phase5"](config=config, val_calib_logits=p1.outputs["val_calib_logits"])
            ops["phase6"](
                config=config,
                checkpoint=p1.outputs["checkpoint"],
                policy=p2.outputs["policy"],
                second_policy=p5.outputs["policy"],
            )


def test_a_checkpoint_cannot_be_wired_as_the_policy():
    from kfp import dsl
    from kfp.dsl.types.type_utils import InconsistentTypeException

    ops = _ops()
    with pytest.raises(InconsistentTypeException):

        @dsl.pipeline(name="checkpoint-as-policy")
        def wrong(config: str = "{}"):
            ingest = ops["ingest"](config=config)
            p1 = ops["phase1"](
                config=config,
                train=ingest.outputs["train"],
                val_select=ingest.outputs["val_select"],
                val_calib=ingest.outputs["val_calib"],
            )
            ops["phase6"](
                config=config,
                checkpoint=p1.outputs["checkpoint"],
                policy=p1.outputs["checkpoint"],
                val_calib=ingest.outputs["val_calib"],
            )


@pytest.mark.parametrize("policy_phase", ["phase2", "phase3", "phase5"])
def test_each_policy_phase_compiles_and_feeds_phase6(policy_phase):
    from streetvision_pipelines.inspect_spec import compile_to_documents, describe

    from streetvision.config import load_config

    cfg = load_config([f"pipeline.phases=[{policy_phase}, phase6, evaluate]"])
    plans = {p.display_name: p for p in describe(compile_to_documents(cfg))}
    assert set(plans) == {"ingest", "phase1", policy_phase, "phase6", "evaluate"}
    producers = {r.name: r.producer for r in plans["phase6"].inputs}
    assert producers["policy"].startswith(policy_phase + "-") and producers["policy"].endswith(".policy")
    # The gate's bundle takes the tuned weights its threshold was fitted on.
    expected = "phase3-gate.gate_checkpoint" if policy_phase == "phase3" else "phase1-train.checkpoint"
    assert producers["checkpoint"] == expected


def test_phase_selection_requires_exactly_one_policy_phase():
    from streetvision.contracts.errors import ContractError
    from streetvision.phase_graph import resolve_phases

    assert resolve_phases(["all", "phase5"])[0] == ["ingest", "phase1", "phase5", "phase6", "evaluate"]
    assert resolve_phases(["phase3"])[0] == ["ingest", "phase1", "phase3"]
    assert resolve_phases(["phase2", "phase5"])[0] == ["ingest", "phase1", "phase2", "phase5"]  # no bundle: fine
    for bad in (["phase2", "phase5", "phase6"], ["all", "phase2", "phase3"], ["phase1", "phase6"]):
        with pytest.raises(ContractError, match="exactly one policy phase"):
            resolve_phases(bad)


def test_phase3_tunes_a_multiview_checkpoint_and_its_bundle_scores_all_views(ingested, tmp_path):
    from streetvision.config import load_config

    _, dirs, _, _ = ingested
    cfg = load_config(TINY + ["training.multiview=multi", "gate.epochs=1"])
    ckpt = tmp_path / "checkpoint"
    run_phase1(cfg, phase1_paths(dirs, tmp_path))
    assert isinstance(load_model_dir(ckpt), MultiViewClassifier)
    run_phase3(cfg, phase3_paths(dirs, ckpt, tmp_path))
    tuned = load_model_dir(tmp_path / "gate_checkpoint")
    assert isinstance(tuned, MultiViewClassifier)  # the gate keeps the views phase 1 chose
    run_phase6(cfg, _export(dirs, tmp_path / "gate_checkpoint", tmp_path / "gate", tmp_path / "bundle"))
    calib = load_split(dirs[Split.VAL_CALIB], split=Split.VAL_CALIB, role=Role.PREDICTION, phase="test", input_name="x")
    images = np.asarray(calib.images[:6])
    preds = Bundle.load(tmp_path / "bundle", TRUST).predict(images)
    prep = json.loads((tmp_path / "gate_checkpoint" / "preprocessing.json").read_text())
    multi = predict_logits(tuned, images, prep["mean"], prep["std"])
    single = predict_logits(tuned.model, images, prep["mean"], prep["std"])
    np.testing.assert_allclose(preds.logits, multi, atol=1e-5)
    assert not np.allclose(multi, single, atol=1e-5)  # the views are really scored


def _rehash(bundle):
    """What a consistent forger does after editing files: fix manifest.json's hashes to match."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "extra", ["notes.txt", "model_v2.safetensors", "inference_hook.py", "hooks/__init__.py", ".gitignore"]
)
def test_a_file_beside_the_manifests_files_is_refused_by_name(policies, tmp_path, extra):
    _, _, _, root = policies
    bundle = tmp_path / "b"
    shutil.copytree(root / "bundle_threshold", bundle)
    (bundle / extra).parent.mkdir(exist_ok=True)
    (bundle / extra).write_text("import os  # would run if a loader picked it up")
    with pytest.raises(BundleError, match=f"unexpected files .*{extra}.*a bundle holds exactly"):
        Bundle.load(bundle, TRUST)
    # Listing it in the manifest too does not make it part of the bundle.
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][extra] = sha256_file(bundle / extra)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unexpected files"):
        Bundle.load(bundle, TRUST)


@pytest.mark.parametrize("name", ["drift_reference.npz", "versions.json", "bundle.sig"])
def test_a_missing_file_is_refused_by_name(policies, tmp_path, name):
    _, _, _, root = policies
    bundle = tmp_path / "b"
    shutil.copytree(root / "bundle_threshold", bundle)
    (bundle / name).unlink()
    with pytest.raises(BundleError, match="missing files .*drift_reference|missing files .*versions|unsigned"):
        Bundle.load(bundle, TRUST)


def _forge_threshold(bundle):
    policy = json.loads((bundle / "policy.json").read_text())
    policy["threshold"], policy["feasible"] = 0.5, True  # accept far more than the fitted policy would
    (bundle / "policy.json").write_text(json.dumps(policy))


def _forge_mean(bundle):
    preprocessing = json.loads((bundle / "preprocessing.json").read_text())
    preprocessing["mean"] = [m + 0.1 for m in preprocessing["mean"]]
    (bundle / "preprocessing.json").write_text(json.dumps(preprocessing))


@pytest.mark.parametrize("forge", [_forge_threshold, _forge_mean], ids=["policy_threshold", "preprocessing_mean"])
def test_a_consistent_forgery_passes_the_hashes_but_not_the_signature(policies, tmp_path, forge):
    from streetvision.contracts.validators import validate_bundle

    _, _, _, root = policies
    bundle = tmp_path / "b"
    shutil.copytree(root / "bundle_threshold", bundle)
    forge(bundle)
    _rehash(bundle)
    validate_bundle(bundle)  # every hash in manifest.json matches: only the signature can tell
    with pytest.raises(
        BundleError, match="signature check failed .*changed since signing: .*(policy|preprocessing).json"
    ):
        Bundle.load(bundle, TRUST)


def test_the_offline_key_flow_end_to_end(trained, tmp_path, capsys):
    """A P-384 key made here with `cryptography`: phase 6 signs with it, predict verifies with its public key and
    refuses the bundle under any other key, without one, and once forged."""
    from conftest import PUBLIC_KEY, build_bundle
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from PIL import Image

    from streetvision.cli import main

    cfg, dirs, out = trained
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = tmp_path / "signer.pem", tmp_path / "signer.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing = cfg.signing.model_copy(update={"private_key": str(private), "public_key": str(public)})
    bundle = build_bundle(cfg.model_copy(update={"signing": signing}), dirs, out, tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    capsys.readouterr()

    assert main(["predict", str(bundle), "--public-key", str(public), str(image)]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] in ("accept", "defer")
    assert main(["predict", str(bundle), "--public-key", str(PUBLIC_KEY), str(image)]) == 6  # another signer
    assert "Key mismatch" in capsys.readouterr().err
    assert main(["predict", str(bundle), str(image)]) == 2
    assert "no identity to verify" in capsys.readouterr().err
    _forge_threshold(bundle)
    _rehash(bundle)
    assert main(["predict", str(bundle), "--public-key", str(public), str(image)]) == 6
    err = capsys.readouterr().err
    assert "signature check failed" in err and "policy.json" in err and "fix:" in err


def test_an_unsigned_bundle_needs_allow_unsigned(trained, tmp_path, capsys):
    from conftest import PUBLIC_KEY, build_bundle

    from streetvision.cli import build_parser, main

    cfg, dirs, out = trained
    unsigned = cfg.model_copy(update={"signing": cfg.signing.model_copy(update={"method": "none"})})
    bundle = build_bundle(unsigned, dirs, out, tmp_path)
    assert not (bundle / "bundle.sig").exists()
    with pytest.raises(BundleError, match="the bundle is unsigned"):
        Bundle.load(bundle, TRUST)
    with pytest.raises(BundleError, match="--allow-unsigned"):
        Bundle.load(bundle)
    assert Bundle.load(bundle, TRUST, allow_unsigned=True).policy["kind"] == "threshold"
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", str(bundle), "--public-key", str(PUBLIC_KEY), str(image)]) == 6
    assert "unsigned" in capsys.readouterr().err
    assert main(["predict", str(bundle), "--allow-unsigned", str(image)]) == 0
    # The flag says what it skips.
    predict_help = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert "--allow-unsigned" in predict_help and "forgery" in predict_help


def test_a_local_run_without_a_key_gets_its_own(tmp_path, tiny_cfg):
    import os
    import stat

    from streetvision_pipelines.local_run import prepare_run, signing_summary

    from streetvision.config import config_from_yaml_file

    no_key = tiny_cfg.model_copy(update={"signing": tiny_cfg.signing.model_copy(update={"private_key": ""})})
    run_dir, cfg = prepare_run(no_key, tmp_path, None)
    private, public = cfg.signing.private_key, cfg.signing.public_key
    assert private.startswith(str(run_dir.resolve() / "kfp" / "signing")) and os.path.isfile(public)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600  # owner only
    assert config_from_yaml_file(run_dir / "config.yaml").signing == cfg.signing  # a resume signs with it too
    assert signing_summary(cfg)["fingerprint"].startswith("sha256:")
    # A configured key is used as given.
    assert prepare_run(tiny_cfg, tmp_path, None)[1].signing == tiny_cfg.signing


def _certificate(subject, key, issuer, issuer_key, ca: bool):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only"), False
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, decipher_only=False, **usage),
            critical=True,
        )
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def test_the_certificate_flow_signs_and_verifies_offline(tmp_path):
    """signing.method=certificate: a key with its certificate signs, a chain to its CA verifies; a change after
    signing, or a chain to another CA, is refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from streetvision.config.schema import SigningConfig
    from streetvision.signing import sign_bundle, verify_bundle_signature

    pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    ca_key, other_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    (tmp_path / "ca.pem").write_bytes(pem(_certificate("ca", ca_key, "ca", ca_key, ca=True)))
    (tmp_path / "other.pem").write_bytes(pem(_certificate("other", other_key, "other", other_key, ca=True)))
    (tmp_path / "leaf.pem").write_bytes(pem(_certificate("signer", key, "ca", ca_key, ca=False)))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "policy.json").write_text('{"threshold": 0.9}')
    signing = SigningConfig(
        method="certificate",
        private_key=str(tmp_path / "key.pem"),
        signing_certificate=str(tmp_path / "leaf.pem"),
        certificate_chain=[str(tmp_path / "ca.pem")],
    )
    sign_bundle(folder, signing)
    assert verify_bundle_signature(folder, signing).startswith("signed by certificate chain")
    other = signing.model_copy(update={"certificate_chain": [str(tmp_path / "other.pem")]})
    with pytest.raises(BundleError, match="signature check failed"):
        verify_bundle_signature(folder, other)
    (folder / "policy.json").write_text('{"threshold": 0.5}')
    with pytest.raises(BundleError, match="changed since signing: policy.json"):
        verify_bundle_signature(folder, signing)


def test_the_default_small_cnn_trains_tunes_exports_and_predicts(ingested, tmp_path):
    """The default from-scratch model (a timm ResNet) through phase 1, phase 3, phase 6, Bundle.predict and ONNX."""
    from streetvision.config import load_config
    from streetvision.export import export_onnx, onnx_logits

    _, dirs, _, _ = ingested
    vit_keys = ("model=", "model.patch_size", "model.depth", "model.embed_dim", "model.num_heads")
    cfg = load_config([o for o in TINY if not o.startswith(vit_keys)] + ["gate.epochs=1", "training.multiview=single"])
    assert cfg.model.name == "test_resnet"
    ckpt = tmp_path / "checkpoint"
    run_phase1(cfg, phase1_paths(dirs, tmp_path))
    assert type(load_model_dir(ckpt)).__name__ == "ResNet"
    run_phase3(cfg, phase3_paths(dirs, ckpt, tmp_path))
    run_phase6(cfg, _export(dirs, tmp_path / "gate_checkpoint", tmp_path / "gate", tmp_path / "bundle"))
    calib = load_split(dirs[Split.VAL_CALIB], split=Split.VAL_CALIB, role=Role.PREDICTION, phase="test", input_name="x")
    images = np.asarray(calib.images[:5])
    preds = Bundle.load(tmp_path / "bundle", TRUST).predict(images)
    assert preds.logits.shape == (5, 2) and np.isfinite(preds.logits).all()
    onnx = export_onnx(tmp_path / "bundle", tmp_path / "model.onnx", trust=TRUST)
    np.testing.assert_allclose(onnx_logits(onnx, images), preds.logits, atol=1e-4, rtol=1e-4)
