"""The bundled demo dataset: procedural street scenes, rendered into a folder that ingest reads.

A package of its own, beside the library: the production images do not carry it. `streetvision run`
renders the scenes (once per demo config, cached) when the config's source is ``demo``; elsewhere render
them with ``python -m streetvision_demo OUT_DIR`` and point ``data.manifest`` at OUT_DIR/manifest.csv.
"""

from streetvision_demo.folder import MANIFEST, cached_demo_folder, with_demo_data, write_demo_folder
from streetvision_demo.scenes import DemoRecord, generate_demo_dataset

__all__ = [
    "MANIFEST",
    "DemoRecord",
    "cached_demo_folder",
    "generate_demo_dataset",
    "with_demo_data",
    "write_demo_folder",
]
