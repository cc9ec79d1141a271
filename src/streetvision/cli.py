"""`streetvision` command line: run, plan, compile, config.

The library never imports kfp; the commands that need it (run, plan, compile) import the pipeline package
when they are called.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streetvision.config import ConfigError, config_to_yaml, load_config
from streetvision.contracts.errors import ContractError
from streetvision.phase_graph import resolve_phases

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
  streetvision predict outputs/<run>/bundle street.jpg more_images/   # JSON lines: P(roadwork), accept/defer
  streetvision export outputs/<run>/bundle -o triton_models           # ONNX + Triton model repository
"""

PREDICT_EPILOG = """Loads only the bundle (every file's sha256 is checked) and prints one JSON line per image:
  {"path": "...", "prob_roadwork": 0.93, "prediction": 1, "decision": "accept"}
"decision" is the bundle's one policy: accept (Stage 1 answers) or defer (hand the image to Stage 2).
An unreadable image prints {"path": ..., "error": ..., "fix": ...} and the exit status is 1.
Python: streetvision.inference.predict(bundle, paths) returns the same records.
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="key=value or group=preset")
    parser.add_argument("--config", metavar="FILE", help="a YAML file merged over the defaults, before overrides")
    parser.add_argument(
        "--phases", nargs="+", metavar="PHASE",
        help="phases to include (ingest phase1 phase2 phase3 phase5 phase6 evaluate, or all); dependencies are "
             "added; a bundle takes exactly one policy phase: phase2 (threshold), phase3 (gate) or phase5 (SCRC)",
    )


def _resolve_config(args: argparse.Namespace):
    overrides = list(args.overrides)
    phases = list(args.phases or [])
    # `--phases a b key=value` puts the override into --phases; move it back.
    overrides += [p for p in phases if "=" in p]
    phases = [p for p in phases if "=" not in p]
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
    if args.presets:
        from streetvision.config.loader import preset_groups

        for group, names in preset_groups().items():
            print(f"{group}: {', '.join(names)}")
        return 0
    cfg, _ = _resolve_config(args)
    print(config_to_yaml(cfg), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from streetvision_pipelines.inspect_spec import compile_to_documents, describe, format_resources

    cfg, added = _resolve_config(args)
    plans = describe(compile_to_documents(cfg))
    print(f"pipeline '{cfg.pipeline.name}': {' -> '.join(cfg.pipeline.phases)}"
          + (f"   (added as dependencies: {', '.join(added)})" if added else ""))

    def fmt(ref, with_source: bool) -> str:
        split = f" [{ref.split.upper()}]" if ref.split else ""
        source = f" <- {ref.producer}" if with_source and ref.producer else ""
        return f"{ref.name}: {ref.type.removeprefix('system.')}{split}{source}"

    rows = [
        (i + 1, p.display_name, "\n".join(fmt(r, True) for r in p.inputs) or "-",
         "\n".join(fmt(r, False) for r in p.outputs), f"{p.image}\n{format_resources(p)}")
        for i, p in enumerate(plans)
    ]
    _print_table("plan (from the compiled pipeline; nothing is run)", ["#", "phase", "reads", "writes", "image / resources"],
                 rows)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from streetvision_pipelines.factory import compile_pipeline

    cfg, _ = _resolve_config(args)
    path = compile_pipeline(cfg, args.output)
    print(f"compiled {' -> '.join(cfg.pipeline.phases)} to {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from streetvision_pipelines.local_run import prepare_run, run_local

    if args.resume and (args.overrides or args.phases or args.config):
        raise ConfigError(["--resume reruns a run with its saved config; drop the overrides, or start a new run"],
                          "command line")
    cfg = None if args.resume else _resolve_config(args)[0]
    run_dir, cfg = prepare_run(cfg, args.output_dir, args.resume)
    print(f"run folder: {run_dir}  (phases: {' -> '.join(cfg.pipeline.phases)})", flush=True)
    result = run_local(cfg, run_dir)
    _print_table(f"run summary ({'succeeded' if result.succeeded else 'FAILED'}, {result.seconds:.0f} s)",
                 ["phase", "status", "output", "numbers"], result.summary.rows())
    evaluation = result.summary.evaluation
    if evaluation:
        above = evaluation["accuracy"] > evaluation["majority_rate"]
        print(f"VAL_TEST accuracy {evaluation['accuracy']:.3f} is {'above' if above else 'NOT above'} the "
              f"majority-class rate {evaluation['majority_rate']:.3f} (balanced accuracy "
              f"{evaluation['balanced_accuracy']:.3f}, MCC {evaluation['mcc']:.3f}).")
    if result.summary.policy_guarantee:
        print(f"policy: {result.summary.policy_guarantee}")
    if result.summary.bundle:
        print(f"bundle: {result.summary.bundle}")
    if result.summary.report:
        print(f"report: {result.summary.report}")
    if not result.succeeded:
        print(f"\n{result.error or 'some phases did not finish'}\nThe task log above (and {run_dir}/run.log) shows "
              f"the cause. If it was transient (killed, out of memory) or fixed in code, resume "
              f"and finished phases are reused:\n  streetvision run --resume {run_dir}\nIf it needs another config, "
              "start a new run with the changed overrides.", file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from streetvision.inference import predict

    records = predict(args.bundle, args.images, batch_size=args.batch_size, device=args.device)
    for record in records:
        print(json.dumps(record), flush=True)
    failed = sum("error" in r for r in records)
    if failed:
        print(f"{failed} of {len(records)} image(s) could not be read (see their 'error')", file=sys.stderr)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from streetvision.export import export_onnx, export_triton

    if args.onnx_only:
        path = export_onnx(args.bundle, Path(args.output) / "model.onnx")
        print(f"ONNX model: {path}  (input 'images' uint8 N x S x S x 3, output 'logits' N x 2)")
        return 0
    model_dir = export_triton(args.bundle, args.output, args.name, args.max_batch_size, gpu=args.device == "gpu")
    print(f"Triton model repository: {args.output}  (model '{args.name}': {model_dir}/config.pbtxt, "
          f"{model_dir}/1/model.onnx; calibrator.json and policy.json beside them)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streetvision",
        description="StreetVision Stage 1: a Kubeflow pipeline for a selective roadwork classifier.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline locally with the KFP local runner",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(run)
    run.add_argument("--output-dir", default="outputs", metavar="DIR",
                     help="where run folders are created (default: outputs)")
    run.add_argument("--resume", metavar="RUN_DIR", help="rerun a run folder; finished phases are reused")
    run.set_defaults(func=cmd_run)

    plan = sub.add_parser("plan", help="dry run: phases in order, typed inputs/outputs with splits, resources")
    _add_config_args(plan)
    plan.set_defaults(func=cmd_plan)

    comp = sub.add_parser("compile", help="compile the pipeline to KFP YAML")
    _add_config_args(comp)
    comp.add_argument("-o", "--output", default="streetvision_stage1.yaml", metavar="FILE",
                      help="output file (default: streetvision_stage1.yaml)")
    comp.set_defaults(func=cmd_compile)

    conf = sub.add_parser("config", help="print the resolved config (defaults + overrides)")
    _add_config_args(conf)
    conf.add_argument("--presets", action="store_true", help="list the presets of each config group")
    conf.set_defaults(func=cmd_config)

    pred = sub.add_parser("predict", help="score images with a bundle: P(roadwork) and accept/defer, JSON lines",
                          epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pred.add_argument("bundle", metavar="BUNDLE", help="a bundle folder written by phase6")
    pred.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                      help="image files, or folders (their .jpg/.jpeg/.png/.webp/.bmp files, recursively)")
    pred.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    pred.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    pred.set_defaults(func=cmd_predict)

    exp = sub.add_parser("export", help="export a bundle's model to ONNX and a Triton model repository")
    exp.add_argument("bundle", metavar="BUNDLE", help="a bundle folder written by phase6")
    exp.add_argument("-o", "--output", required=True, metavar="DIR",
                     help="the Triton model repository to create the model in (or the ONNX folder with --onnx-only)")
    exp.add_argument("--name", default="streetvision_stage1", help="Triton model name (default: streetvision_stage1)")
    exp.add_argument("--max-batch-size", type=int, default=64, help="Triton max_batch_size (default: 64)")
    exp.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="Triton instance kind (default: gpu)")
    exp.add_argument("--onnx-only", action="store_true", help="write only DIR/model.onnx")
    exp.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ContractError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
