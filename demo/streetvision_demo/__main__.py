"""python -m streetvision_demo OUT_DIR [key=value ...]: render the demo scenes into a folder with a manifest.

The overrides are the pipeline's own (e.g. data.demo.num_sequences=100); the printed manifest is what
``data.source=manifest data.manifest=...`` reads, wherever the folder is copied to (a bucket, a volume).
"""

from __future__ import annotations

import argparse
import sys

from streetvision.config import ConfigError, load_config
from streetvision_demo.folder import write_demo_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streetvision_demo", description=__doc__)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to render into (created if missing)")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="config overrides, key=value")
    args = parser.parse_args(argv)
    try:
        data = load_config(args.overrides).data
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = write_demo_folder(args.out_dir, data.demo, (data.label_names[0], data.label_names[1]))
    print(f"{manifest}  (data.source=manifest data.manifest={manifest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
