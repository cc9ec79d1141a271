"""`streetvision` command line: run, plan, compile, config, report, drift, submit, lint.

The library never imports kfp; the commands that need it (run, plan, compile) import the pipeline package
when they are called.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from streetvision.config import config_to_yaml, load_config
from streetvision.contracts.errors import (
    ClusterError,
    ConfigError,
    DataError,
    IntegrityError,
    LeakageViolationError,
    StreetVisionError,
    TrainingError,
)
from streetvision.phase_graph import resolve_phases

# The exit status of each kind of error (the first of an error's classes found here); README lists them.
# 1 is a run whose task failed, or a command with some bad inputs; 3 is `drift`'s verdict "drifted".
EXIT_CODES: dict[type[Exception], int] = {
    ConfigError: 2,
    FileNotFoundError: 2,  # a file named on the command line or in the config
    DataError: 4,
    LeakageViolationError: 5,
    IntegrityError: 6,
    TrainingError: 7,
    ClusterError: 8,
    StreetVisionError: 1,
}

EPILOG = """\
overrides (any number, after the command):
  key=value        set one config key, e.g. training.epochs=1 data.demo.num_sequences=100
  group=preset     pick a preset, e.g. model=vit_small (see `streetvision config --presets`)

examples:
  streetvision run                                  # the whole pipeline on the bundled demo data
  streetvision run training.epochs=1 --phases phase1 phase2 phase6
  streetvision run --resume outputs/20261126-101500-ab12cd   # finish a failed run
  streetvision plan model=vit_base cluster.accelerator=a100
  streetvision compile -o pipeline.yaml
  streetvision report outputs/20261126-101500-ab12cd        # open the evaluation report
  streetvision predict BUNDLE --public-key KEY.pem street.jpg more/   # JSON lines: P(roadwork), accept/defer
  streetvision export BUNDLE --public-key KEY.pem -o triton_models      # ONNX + Triton model repository
  (`streetvision run` prints its bundle and the public key it was signed with)
"""


SUBMIT_EPILOG = """\
examples:
  export KFP_TOKEN=$(gcloud auth print-access-token)   # or any bearer token your KFP endpoint accepts
  streetvision submit --config manifests/overlays/h100/streetvision.yaml model=vit_small \\
      data.source=manifest data.manifest=gs://my-bucket/roadwork/manifest.csv \\
      cluster.pipeline_root=gs://my-bucket/pipeline-root --host https://kubeflow.example.com/pipeline
  streetvision submit --pipeline-file pipelines/streetvision_stage1.yaml --host ... --dry-run
  streetvision submit --in-cluster --experiment nightly        # from a pod inside the cluster
"""

# predict and drift: some files could not be used (each has its error record); the rest were scored.
SOME_FAILED_EXIT = 1

PREDICT_EPILOG = """Loads only the bundle (exactly its files, each file's sha256, and its signature against
--public-key or another identity) and prints one JSON line per image:
  {"path": "...", "prob_roadwork": 0.93, "prediction": 1, "decision": "accept"}
"decision" is the bundle's one policy: accept (Stage 1 answers) or defer (hand the image to Stage 2).
An image that cannot be read, or that ingest would quarantine (too small, 16-bit, alpha ...), prints
{"path": ..., "error": ..., "fix": ...}; the others are still scored, and the exit status is 1.
Python: streetvision.inference.predict(bundle, paths) returns the same records.
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="key=value or group=preset")
    parser.add_argument("--config", metavar="FILE", help="a YAML file merged over the defaults, before overrides")
    parser.add_argument(
        "--phases",
        type=_phase_list,
        action="extend",
        metavar="PHASE",
        help="phases to include, space- or comma-separated, up to the first key=value or option (ingest "
        "phase4 phase1 phase2 phase3 phase5 phase6 evaluate, or all); dependencies are added; a bundle takes "
        "exactly one policy phase: phase2 (threshold), phase3 (gate) or phase5 (SCRC); phase4 (ExPLoRA "
        "backbone adaptation) is optional: e.g. --phases phase4 phase2 phase6 evaluate",
    )


def _phase_list(value: str) -> list[str]:
    if "=" in value:
        raise argparse.ArgumentTypeError(f"{value!r} is an override, not a phase: give one or more phases first")
    return [name for name in value.split(",") if name]


def _phases_as_one_value(argv: list[str]) -> list[str]:
    """`--phases a b key=value` as `--phases=a,b key=value`: the phase list ends at the first key=value token or
    option, so the overrides after it stay overrides (argparse's nargs="+" would take them as phases)."""
    out, i = [], 0
    while i < len(argv):
        end = i + 1
        if argv[i] == "--phases":
            while end < len(argv) and "=" not in argv[end] and not argv[end].startswith("-"):
                end += 1
        out.append(f"--phases={','.join(argv[i + 1 : end])}" if end > i + 1 else argv[i])
        i = end
    return out


def _add_trust_args(parser: argparse.ArgumentParser) -> None:
    """Whom to trust as the bundle's signer (README, "Signed bundles")."""
    group = parser.add_argument_group("signature (the bundle is refused unless signed by this identity)")
    group.add_argument("--public-key", metavar="PEM", help="the signer's public key (a local run prints its own)")
    group.add_argument(
        "--certificate-chain",
        action="append",
        metavar="PEM",
        help="a root/intermediate certificate a certificate signature must chain to (repeatable)",
    )
    group.add_argument("--sigstore-identity", metavar="ID", help="the expected Sigstore signer (needs network)")
    group.add_argument("--sigstore-issuer", metavar="URL", help="its OIDC issuer, e.g. https://accounts.google.com")
    group.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept a bundle without a signature, or without checking it: skips the only check that a consistent "
        "forgery (files edited and manifest.json re-hashed) cannot pass; the manifest's hashes are still checked",
    )


def _trust(args: argparse.Namespace):
    from streetvision.config.schema import SigningConfig

    if args.public_key:
        return SigningConfig(method="key", public_key=args.public_key)
    if args.certificate_chain:
        return SigningConfig(method="certificate", certificate_chain=args.certificate_chain)
    if args.sigstore_identity or args.sigstore_issuer:
        return SigningConfig(
            method="sigstore",
            sigstore_identity=args.sigstore_identity or "",
            sigstore_issuer=args.sigstore_issuer or "",
        )
    return None


def _resolve_config(args: argparse.Namespace):
    overrides = list(args.overrides)
    phases = list(args.phases or [])
    if phases:
        overrides.append(f"pipeline.phases=[{', '.join(phases)}]")
    cfg = load_config(overrides, args.config)
    resolved, added = resolve_phases(cfg.pipeline.phases)
    cfg.pipeline.phases = resolved
    return cfg, added


def _print_table(title: str, columns: list[str], rows: list[tuple]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain text: names like "split[train]" are not markup

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[Text(str(c)) for c in row])
    Console(width=160).print(table)


def cmd_config(args: argparse.Namespace) -> int:
    if args.validate:
        from streetvision.config.loader import validate_file

        print(validate_file(args.validate, list(args.overrides)))
        return 0
    if args.presets:
        from streetvision.config.loader import preset_groups

        for group, names in preset_groups().items():
            print(f"{group}: {', '.join(names)}")
        return 0
    from streetvision.config.loader import selected_presets

    cfg, _ = _resolve_config(args)
    presets = selected_presets(list(args.overrides), args.config)
    print(f"# presets: {', '.join(f'{group}={name}' for group, name in presets.items())}")
    print(config_to_yaml(cfg), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from streetvision_pipelines.inspect_spec import compile_to_documents, describe, format_resources

    cfg, added = _resolve_config(args)
    plans = describe(compile_to_documents(cfg))
    print(
        f"pipeline '{cfg.pipeline.name}': {' -> '.join(cfg.pipeline.phases)}"
        + (f"   (added as dependencies: {', '.join(added)})" if added else "")
    )

    def fmt(ref, with_source: bool) -> str:
        split = f" [{ref.split.upper()}]" if ref.split else ""
        source = f" <- {ref.producer}" if with_source and ref.producer else ""
        return f"{ref.name}: {ref.type.removeprefix('system.')}{split}{source}"

    rows = [
        (
            i + 1,
            p.display_name,
            "\n".join(fmt(r, True) for r in p.inputs) or "-",
            "\n".join(fmt(r, False) for r in p.outputs),
            f"{p.image}\n{format_resources(p)}",
        )
        for i, p in enumerate(plans)
    ]
    _print_table(
        "plan (from the compiled pipeline; nothing is run)",
        ["#", "phase", "reads", "writes", "image / resources"],
        rows,
    )
    print(_calibration_size_line(cfg))
    return 0


def _calibration_size_line(cfg) -> str:
    """Before training: how large VAL_CALIB must be for the target, and for the demo source whether it will be."""
    import math

    from streetvision.selective import calibration_size_check, min_val_calib_size

    c, fraction = cfg.calibration, cfg.data.split.val_calib
    if cfg.data.source == "demo":  # the only source whose size is known before ingest
        demo = cfg.data.demo
        placed = round(demo.num_sequences * (demo.frames_min + demo.frames_max) / 2)
        check = calibration_size_check(
            round(placed * fraction), c.target_risk, c.delta, c.threshold_method, fraction, placed
        )
        return ("" if check["reachable"] else "WARNING: ") + check["message"].replace(
            "VAL_CALIB holds", "VAL_CALIB will hold about", 1
        )
    size = min_val_calib_size(c.target_risk, c.delta, c.threshold_method)
    return (
        f"calibration: certifying error <= {c.target_risk:.1%} among accepted images at delta={c.delta} "
        f"({c.threshold_method}) needs at least {size} accepted VAL_CALIB images without one error; with "
        f"data.split.val_calib={fraction} that is at least {math.ceil(size / fraction)} images in all (ingest "
        "reports the real VAL_CALIB size and warns when it falls short)."
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from streetvision_pipelines.factory import compile_pipeline

    cfg, _ = _resolve_config(args)
    path = compile_pipeline(cfg, args.output)
    print(f"compiled {' -> '.join(cfg.pipeline.phases)} to {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from streetvision_pipelines.local_run import prepare_run, run_local, signing_summary

    from streetvision.preflight import check_local_inputs

    if args.resume and (args.overrides or args.phases or args.config):
        raise ConfigError(
            ["--resume reruns a run with its saved config; drop the overrides, or start a new run"], "command line"
        )
    if args.retries < 0:
        raise ConfigError([f"--retries: must be >= 0, got {args.retries}"], "command line")
    if args.resume:
        run_dir, cfg = prepare_run(None, args.output_dir, args.resume)
    else:
        run_dir, cfg = None, _resolve_config(args)[0]
    # An input path that cannot be read fails every attempt alike: say so before any task starts, and before a
    # new run's folder exists. Docker-run tasks read the image's files, not this machine's.
    if args.runner == "subprocess":
        check_local_inputs(cfg)
    if run_dir is None:
        run_dir, cfg = prepare_run(cfg, args.output_dir, None, group_readable_key=args.runner == "docker")
    print(f"run folder: {run_dir}  (phases: {' -> '.join(cfg.pipeline.phases)})", flush=True)
    result = run_local(cfg, run_dir, runner=args.runner, retries=args.retries)
    _print_table(
        f"run summary ({'succeeded' if result.succeeded else 'FAILED'}, {result.seconds:.0f} s)",
        ["phase", "status", "output", "numbers"],
        result.summary.rows(),
    )
    evaluation = result.summary.evaluation
    if evaluation:
        above = evaluation["accuracy"] > evaluation["majority_rate"]
        print(
            f"VAL_TEST accuracy {evaluation['accuracy']:.3f} is {'above' if above else 'NOT above'} the "
            f"majority-class rate {evaluation['majority_rate']:.3f} (balanced accuracy "
            f"{evaluation['balanced_accuracy']:.3f}, MCC {evaluation['mcc']:.3f})."
        )
    if evaluation and "blessed" in evaluation:
        checks = "; ".join(evaluation.get("blessing_checks", [])) or "no rule configured"
        print(f"blessing: {'PASSED' if evaluation['blessed'] else 'FAILED'} ({checks})")
    if result.summary.policy_guarantee:
        print(f"policy: {result.summary.policy_guarantee}")
    if result.summary.bundle:
        print(f"bundle: {result.summary.bundle}")
        if cfg.signing.public_key:
            fingerprint = signing_summary(cfg).get("fingerprint", "?")
            print(f"  signed; verify with --public-key {cfg.signing.public_key}  ({fingerprint})")
    if result.summary.report:
        print(f"report: {result.summary.report}")
    if not result.succeeded:
        attempts = (
            f"the failed task was tried {args.retries + 1} times"
            if args.retries
            else "a failed task is not retried locally unless --retries N is given"
        )
        print(
            f"\n{result.error or 'some phases did not finish'}\nThe task log above (and {run_dir}/run.log) shows "
            f"the cause ({attempts}). If it was transient (killed, out of memory) or fixed in code, resume "
            f"and finished phases are reused:\n  streetvision run --resume {run_dir}\nIf it needs another config, "
            "start a new run with the changed overrides.",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import webbrowser

    from streetvision.run_summary import find_report

    report = find_report(args.path).resolve()
    print(f"report: {report}")
    if not args.no_open and not webbrowser.open(report.as_uri()):
        print("no browser found here; open the file above in one (it is self-contained, no network needed)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import tempfile

    from streetvision_pipelines.submit import SubmitOptions, prepare_submission, send_submission

    if args.pipeline_file and (args.overrides or args.phases or args.config):
        raise ConfigError(
            [
                "--pipeline-file submits that YAML as compiled; drop the overrides and --config, "
                "or leave out --pipeline-file to compile with them"
            ],
            "command line",
        )
    cfg = None if args.pipeline_file else _resolve_config(args)[0]
    # Each option is the command-line flag of the same name; --param (repeatable) gives the list `params`.
    named = {f.name: getattr(args, f.name) for f in dataclasses.fields(SubmitOptions) if f.name != "params"}
    options = SubmitOptions(params=args.param or [], **named)
    with tempfile.TemporaryDirectory(prefix="streetvision-submit-") as tmp:
        sub = prepare_submission(cfg, options, Path(tmp))
        if args.dry_run:
            print(json.dumps(sub.describe(), indent=2))
            print("(dry run: nothing was sent)")
            return 0
        run_id = send_submission(sub)
    print(f"run {run_id} ({sub.run_name}) created in experiment '{sub.experiment}', namespace '{sub.namespace}'")
    print(f"  {sub.host.rstrip('/')}/#/runs/details/{run_id}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from streetvision_pipelines.lint import lint_file

    failed = 0
    for path in args.pipelines:
        report = lint_file(path)
        if report.ok:
            print(f"ok   {path}: {report.tasks} tasks, {report.inputs_checked} input artifacts obey the split policy")
            continue
        failed += 1
        print(f"FAIL {path}: {len(report.findings)} split-policy violation(s)")
        for finding in report.findings:
            print(f"  - {finding}")
    return 1 if failed else 0


def cmd_drift(args: argparse.Namespace) -> int:
    import json

    from streetvision.drift import check_drift

    result = check_drift(
        args.bundle, args.images, args.alpha, args.permutations, _trust(args), allow_unsigned=args.allow_unsigned
    )
    if args.json:
        print(json.dumps({**result.__dict__, "drifted": result.drifted}))
    else:
        for record in result.errors:
            print(f"left out {record['path']}: {record['error']} ({record['fix']})")
        print(f"{result.n_new} new images vs {result.n_reference} VAL_CALIB reference images")
        print(f"  confidences  KS statistic {result.ks_statistic:.4f}  p={result.ks_pvalue:.4g}")
        print(
            f"  embeddings   MMD^2 {result.mmd:.4g}  p={result.mmd_pvalue:.4g}  Frechet distance {result.frechet:.4g}"
        )
        print(result.verdict())
    if result.errors:
        print(f"{len(result.errors)} image(s) could not be used (see their 'error')", file=sys.stderr)
    return 3 if result.drifted else SOME_FAILED_EXIT if result.errors else 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from streetvision.inference import predict

    records = predict(
        args.bundle,
        args.images,
        batch_size=args.batch_size,
        device=args.device,
        trust=_trust(args),
        allow_unsigned=args.allow_unsigned,
    )
    for record in records:
        print(json.dumps(record), flush=True)
    failed = sum("error" in r for r in records)
    if failed:
        print(f"{failed} of {len(records)} image(s) could not be read (see their 'error')", file=sys.stderr)
    return SOME_FAILED_EXIT if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from streetvision.export import export_onnx, export_triton

    trust = {"trust": _trust(args), "allow_unsigned": args.allow_unsigned}
    if args.onnx_only:
        path = export_onnx(args.bundle, Path(args.output) / "model.onnx", **trust)
        print(f"ONNX model: {path}  (input 'images' uint8 N x S x S x 3, output 'logits' N x 2)")
        return 0
    model_dir = export_triton(
        args.bundle, args.output, args.name, args.max_batch_size, gpu=args.device == "gpu", **trust
    )
    print(
        f"Triton model repository: {args.output}  (model '{args.name}': {model_dir}/config.pbtxt, "
        f"{model_dir}/1/model.onnx; calibrator.json and policy.json beside them)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streetvision",
        description="StreetVision Stage 1: a Kubeflow pipeline for a selective roadwork classifier.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the pipeline locally with the KFP local runner",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(run)
    run.add_argument(
        "--output-dir", default="outputs", metavar="DIR", help="where run folders are created (default: outputs)"
    )
    run.add_argument("--resume", metavar="RUN_DIR", help="rerun a run folder; finished phases are reused")
    run.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="try a failed task N more times, at once (default 0: report a failure at its first "
        "attempt); the YAML compiled for a cluster keeps cluster.retries and cluster.retry_backoff",
    )
    run.add_argument(
        "--runner",
        choices=["subprocess", "docker"],
        default="subprocess",
        help="subprocess (default): tasks run in this Python environment; docker: each task runs in "
        "its phase's image (cluster.gpu_image/cpu_image, in the local Docker engine) without "
        "network, as on a cluster node (needs the docker Python package)",
    )
    run.set_defaults(func=cmd_run)

    plan = sub.add_parser("plan", help="dry run: phases in order, typed inputs/outputs with splits, resources")
    _add_config_args(plan)
    plan.set_defaults(func=cmd_plan)

    comp = sub.add_parser("compile", help="compile the pipeline to KFP YAML")
    _add_config_args(comp)
    comp.add_argument(
        "-o",
        "--output",
        default="streetvision_stage1.yaml",
        metavar="FILE",
        help="output file (default: streetvision_stage1.yaml)",
    )
    comp.set_defaults(func=cmd_compile)

    subm = sub.add_parser(
        "submit",
        help="compile (or take a YAML) and start a run on a Kubeflow Pipelines server",
        epilog=SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(subm)
    subm.add_argument(
        "--pipeline-file",
        metavar="YAML",
        help="submit this compiled pipeline instead of compiling (overrides are then refused)",
    )
    subm.add_argument(
        "--host",
        metavar="URL",
        help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (default: $KF_PIPELINES_ENDPOINT)",
    )
    subm.add_argument(
        "--namespace",
        default="streetvision",
        help="namespace (Kubeflow profile) the run executes in (default: streetvision)",
    )
    subm.add_argument("--experiment", metavar="NAME", help="experiment, created if missing (default: pipeline.name)")
    subm.add_argument("--run-name", metavar="NAME", help="run name (default: pipeline name and UTC time)")
    subm.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a pipeline parameter (repeatable); typed by the YAML's declarations",
    )
    subm.add_argument(
        "--pipeline-root",
        metavar="URI",
        help="artifact root for this run, e.g. gs://bucket/root (default: cluster.pipeline_root)",
    )
    subm.add_argument(
        "--service-account", metavar="NAME", help="service account the pods run as (default: cluster.service_account)"
    )
    subm.add_argument("--no-cache", action="store_true", help="disable KFP's step cache for this run")
    subm.add_argument(
        "--token-env",
        default="KFP_TOKEN",
        metavar="VAR",
        help="environment variable holding a bearer token (default: KFP_TOKEN)",
    )
    subm.add_argument(
        "--in-cluster",
        action="store_true",
        help="authenticate with the pod's projected KFP token; host defaults to the in-cluster API",
    )
    subm.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")
    subm.set_defaults(func=cmd_submit)

    lint = sub.add_parser(
        "lint",
        help="check a compiled pipeline YAML against the split policy (leakage lint)",
        description="Read compiled pipeline YAMLs as a cluster would and check every task's input artifacts "
        "(declared types and what is wired in) against the split policy. Exit 1 on a violation.",
    )
    lint.add_argument("pipelines", nargs="+", metavar="PIPELINE.yaml", help="compiled pipeline file(s)")
    lint.set_defaults(func=cmd_lint)

    conf = sub.add_parser("config", help="print the resolved config (defaults, presets, --config file, overrides)")
    _add_config_args(conf)
    conf.add_argument("--presets", action="store_true", help="list the presets of each config group")
    conf.add_argument(
        "--validate",
        metavar="FILE",
        help="check a config file (or a preset file) with every problem listed; exit 0 if valid, 2 if not",
    )
    conf.set_defaults(func=cmd_config)

    report = sub.add_parser("report", help="open the evaluation report of a run (HTML: plots, intervals, blessing)")
    report.add_argument("path", metavar="RUN", help="a run folder (outputs/<run>), an evaluation folder or report.html")
    report.add_argument("--no-open", action="store_true", help="only print where the report is")
    report.set_defaults(func=cmd_report)

    drift = sub.add_parser(
        "drift",
        help="compare new images with the bundle's VAL_CALIB reference (exit 3 on drift, 1 if files were left out)",
        description="Tests whether new images differ from the data the bundle's policy was fitted on: KS on the "
        "calibrated confidences and an MMD permutation test on the model's embeddings, each with a "
        "p-value (Bonferroni over the two), plus the Frechet distance as the size of the shift.",
    )
    drift.add_argument("bundle", metavar="BUNDLE", help="a bundle folder (phase6 output)")
    drift.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders (searched recursively)"
    )
    drift.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate of the verdict (default 0.05)")
    drift.add_argument("--permutations", type=int, default=500, help="MMD permutation resamples (default 500)")
    drift.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _add_trust_args(drift)
    drift.set_defaults(func=cmd_drift)
    pred = sub.add_parser(
        "predict",
        help="score images with a bundle: P(roadwork) and accept/defer, JSON lines",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pred.add_argument("bundle", metavar="BUNDLE", help="a bundle folder written by phase6")
    pred.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="image files, or folders (their .jpg/.jpeg/.png/.webp/.bmp files, recursively)",
    )
    pred.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    pred.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    _add_trust_args(pred)
    pred.set_defaults(func=cmd_predict)

    exp = sub.add_parser("export", help="export a bundle's model to ONNX and a Triton model repository")
    exp.add_argument("bundle", metavar="BUNDLE", help="a bundle folder written by phase6")
    exp.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="the Triton model repository to create the model in (or the ONNX folder with --onnx-only)",
    )
    exp.add_argument("--name", default="streetvision_stage1", help="Triton model name (default: streetvision_stage1)")
    exp.add_argument("--max-batch-size", type=int, default=64, help="Triton max_batch_size (default: 64)")
    exp.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="Triton instance kind (default: gpu)")
    exp.add_argument("--onnx-only", action="store_true", help="write only DIR/model.onnx")
    _add_trust_args(exp)
    exp.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_phases_as_one_value(sys.argv[1:] if argv is None else list(argv)))
    try:
        return args.func(args)
    except (StreetVisionError, FileNotFoundError) as exc:
        # What, where and how to fix, without a traceback: these are the user's to fix, not bugs.
        print(f"error: {exc}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES.items() if isinstance(exc, kind))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {exc}", file=sys.stderr)  # a full disk: says where, and how much was needed
        return EXIT_CODES[StreetVisionError]


if __name__ == "__main__":
    sys.exit(main())
