"""The ingest data report: where every record went and why.

Files (each written atomically): ``records.csv`` (one row per input record: placement or quarantine reason),
``report.json`` (the numbers), ``report.md`` and ``report.html`` (counts per split and class, quarantine
reasons with examples, duplicate groups, a thumbnail grid per class; the HTML embeds its images so the KFP UI
shows it as one file), ``thumbnails_<label>.png``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from streetvision import io as storage
from streetvision.data.shards import class_counts
from streetvision.selective import calibration_size_check

QUARANTINE = "quarantine"
EXAMPLES_PER_REASON = 5
THUMB = 96  # thumbnail side in pixels
REPORT_HTML = "report.html"
LARGEST_GROUPS = 10


def _records_csv(records, labels, placement, quarantined) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "record",
            "sample_id",
            "uri",
            "label",
            "label_index",
            "source_group_id",
            "group_id",
            "source",
            "origin",
            "placement",
            "reason",
            "pixel_sha256",
        ]
    )
    for index, rec in enumerate(records):
        item, reason = placement.get(index), quarantined.get(index)
        writer.writerow(
            [
                index,
                rec.sample_id,
                rec.location,
                rec.label,
                labels.get(index, ""),
                rec.group_id,
                item.group if item else "",
                rec.source,
                rec.origin,
                item.split.value if item else QUARANTINE,
                str(reason) if reason else "",
                item.image.pixel_hash if item else "",
            ]
        )
    return buf.getvalue().encode()


def _thumbnail_grid(staging: np.ndarray, rows: list[int], columns: int = 8) -> Image.Image:
    n_rows = max(1, -(-len(rows) // columns))
    grid = Image.new("RGB", (columns * THUMB, n_rows * THUMB), (255, 255, 255))
    for k, row in enumerate(rows):
        tile = Image.fromarray(np.asarray(staging[row])).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        grid.paste(tile, ((k % columns) * THUMB, (k // columns) * THUMB))
    return grid


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; the report is small either way
    return buf.getvalue()


def write_data_report(
    report_dir: Path, cfg, records, labels, by_split, quarantined, dedupe, partition, staging
) -> dict:
    """Write every report file; return the report's numbers (also in report.json)."""
    placement = {p.index: p for items in by_split.values() for p in items}
    placed = list(placement.values())
    storage.write_bytes(str(report_dir / "records.csv"), _records_csv(records, labels, placement, quarantined))

    splits = {}
    for split, items in by_split.items():
        counts = class_counts(np.array([p.label for p in items], dtype=np.int64))
        splits[split.value] = {
            "count": len(items),
            "share": round(len(items) / max(1, len(placed)), 4),
            "positive_rate": round(counts["1"] / len(items), 4) if items else None,
            "class_counts": counts,
            "groups": len({p.group for p in items}),
            "sources": dict(sorted(Counter(p.record.source for p in items).items())),
            "majority_rate": round(max(counts.values()) / len(items), 4) if items else None,
        }
    reasons = Counter(r.code for r in quarantined.values())
    examples = {
        code: [
            f"{records[i].sample_id} ({records[i].location}): {r.detail}"
            for i, r in sorted(quarantined.items())
            if r.code == code
        ][:EXAMPLES_PER_REASON]
        for code in reasons
    }
    sizes: Counter = Counter(p.group for p in placed)
    group_split = {p.group: p.split.value for p in placed}
    group_labels: dict[str, Counter] = {}
    for p in placed:
        group_labels.setdefault(p.group, Counter())[p.label] += 1
    largest = [
        {"group": g, "images": n, "split": group_split[g], "labels": {str(k): v for k, v in group_labels[g].items()}}
        for g, n in sorted(sizes.items(), key=lambda gn: (-gn[1], gn[0]))[:LARGEST_GROUPS]
    ]
    limit = max(2, cfg.data.split.large_group_fraction * len(placed))
    warnings = [
        f"group {g['group']} holds {g['images']} images ({g['images'] / len(placed):.1%} of the data, more than "
        f"data.split.large_group_fraction={cfg.data.split.large_group_fraction}): check that they are really "
        "duplicates or one sequence (records.csv lists its members)"
        for g in largest
        if g["images"] > limit
    ]
    report = {
        "records": len(records),
        "placed": len(placed),
        "quarantined": len(quarantined),
        "quarantine_fraction": round(len(quarantined) / max(1, len(records)), 4),
        "quarantine_reasons": dict(reasons.most_common()),
        "quarantine_examples": examples,
        "records_per_source": dict(sorted(Counter(r.origin for r in records).items())),
        "duplicates": dedupe,
        "exact_duplicate_label_conflicts": len(dedupe["exact_duplicate_label_conflicts"]),
        "splits": splits,
        "split_notes": dedupe.get("split_notes", []),
        "largest_groups": largest,
        "warnings": warnings,
        "partition": partition,
        "image_size": cfg.model.img_size,
        "label_names": list(cfg.data.label_names),
        # Before any training: can this VAL_CALIB certify the configured target at all?
        "calibration_size": calibration_size_check(
            sum(len(items) for split, items in by_split.items() if split.value == "val_calib"),
            cfg.calibration.target_risk,
            cfg.calibration.delta,
            cfg.calibration.threshold_method,
            cfg.data.split.val_calib,
            len(placed),
        ),
    }
    storage.write_bytes(str(report_dir / "report.json"), json.dumps(report, indent=2).encode())

    thumbs = {}
    for label, name in enumerate(cfg.data.label_names):
        items = [p for p in sorted(placed, key=lambda p: p.record.sample_id) if p.label == label]
        firsts = set({p.group: p.index for p in reversed(items)}.values())  # one frame per group first: variety
        rows = [p.index for p in items if p.index in firsts] + [p.index for p in items if p.index not in firsts]
        rows = rows[: cfg.data.report_thumbnails]
        if rows:
            png = _png(_thumbnail_grid(staging, rows))
            storage.write_bytes(str(report_dir / f"thumbnails_{name}.png"), png)
            thumbs[name] = png
    storage.write_bytes(str(report_dir / "report.md"), _markdown(report, thumbs).encode())
    page = _html(report, thumbs).encode()
    storage.write_bytes(str(report_dir / REPORT_HTML), page)
    return report


def _split_rows(report: dict) -> list[list[str]]:
    names = report["label_names"]
    rows = []
    for split, s in report["splits"].items():
        rows.append(
            [
                split,
                str(s["count"]),
                f"{s['share']:.1%}",
                *(str(s["class_counts"][str(k)]) for k in (0, 1)),
                f"{s['positive_rate']:.1%}" if s["positive_rate"] is not None else "-",
                str(s["groups"]),
                ", ".join(f"{k}: {v}" for k, v in s["sources"].items()),
                str(s["majority_rate"]),
            ]
        )
    header = ["split", "images", "share", names[0], names[1], f"{names[1]} rate", "groups", "sources", "majority rate"]
    return [header, *rows]


def _summary_lines(report: dict) -> list[str]:
    d = report["duplicates"]
    return [
        f"{report['records']} records: {report['placed']} placed, {report['quarantined']} quarantined "
        f"({report['quarantine_fraction']:.1%}); partition {report['partition']}; {report['image_size']} px cache",
        f"exact duplicates: {d['exact_duplicate_records']} records in {d['exact_duplicate_sets']} sets, "
        f"{len(d['exact_duplicate_label_conflicts'])} with conflicting labels; near duplicates (pHash radius "
        f"{d['near_duplicate_radius']}): {d['near_duplicate_pairs']} pairs; {d['joined_groups']} groups joined; "
        f"{d['groups_with_mixed_labels']} groups hold both labels; {d['flat_images_not_hashed']} flat images "
        "matched by exact hash only",
        *report["split_notes"],
        "largest groups: "
        + ", ".join(f"{g['group']} ({g['images']} images, {g['split']})" for g in report["largest_groups"][:5]),
        *(f"WARNING: {w}" for w in report["warnings"]),
        ("" if report["calibration_size"]["reachable"] else "WARNING: ") + report["calibration_size"]["message"],
    ]


def _markdown(report: dict, thumbs: dict) -> str:
    table = _split_rows(report)
    lines = [
        "# Ingest data report",
        "",
        *(f"- {line}" for line in _summary_lines(report)),
        "",
        "## Splits",
        "",
        "| " + " | ".join(table[0]) + " |",
        "|" + "---|" * len(table[0]),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    lines += ["", "## Quarantine", ""]
    if not report["quarantine_reasons"]:
        lines.append("No record was quarantined.")
    for code, n in report["quarantine_reasons"].items():
        lines.append(f"- **{code}** x{n}")
        lines += [f"  - `{e}`" for e in report["quarantine_examples"][code]]
    lines += ["", "## Duplicate groups (largest first)", ""]
    for g in report["duplicates"]["joined_group_examples"]:
        lines.append(f"- `{g['group']}`: {g['size']} source groups ({', '.join(g['source_groups'][:6])} ...)")
    for c in report["duplicates"]["exact_duplicate_label_conflicts"][:20]:
        lines.append(f"- label conflict: {c['labels']} kept {c['kept_label']}: {', '.join(c['samples'][:6])}")
    lines += ["", "## Samples per class", ""]
    lines += [f"![{name}](thumbnails_{name}.png)" for name in thumbs]
    return "\n".join(lines) + "\n"


def _html(report: dict, thumbs: dict) -> str:
    esc = html.escape
    table = _split_rows(report)
    head = "".join(f"<th>{esc(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    quarantine = (
        "".join(
            f"<li><b>{esc(code)}</b> x{n}<ul>"
            + "".join(f"<li><code>{esc(e)}</code></li>" for e in report["quarantine_examples"][code])
            + "</ul></li>"
            for code, n in report["quarantine_reasons"].items()
        )
        or "<li>No record was quarantined.</li>"
    )
    groups = (
        "".join(
            f"<li><code>{esc(g['group'])}</code>: {g['size']} source groups</li>"
            for g in report["duplicates"]["joined_group_examples"]
        )
        or "<li>No groups were joined.</li>"
    )
    conflicts = "".join(
        f"<li>labels {esc(str(c['labels']))}, kept {esc(str(c['kept_label']))}: {esc(', '.join(c['samples'][:6]))}</li>"
        for c in report["duplicates"]["exact_duplicate_label_conflicts"][:20]
    )
    grids = "".join(
        f"<h3>{esc(name)}</h3><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        for name, png in thumbs.items()
    )
    summary = "".join(f"<li>{esc(line)}</li>" for line in _summary_lines(report))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ingest data report</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>Ingest data report</h1><ul>{summary}</ul><h2>Splits</h2><table><tr>{head}</tr>{body}</table>"
        f"<h2>Quarantine</h2><ul>{quarantine}</ul><h2>Duplicate groups (largest first)</h2><ul>{groups}</ul>"
        f"<ul>{conflicts}</ul><h2>Samples per class</h2>{grids}</body></html>"
    )
