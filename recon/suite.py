"""`recon eval-suite`: train and evaluate every scene of a benchmark (through recon/batch.py) and
write paper-style tables.

Scenes: the standard list found under ROOT — Blender's and LLFF's 8 scenes, ScanNet's val split,
DTU's test scans — else every scene present. ScanNet scenes are scored like the others (novel-view
PSNR/SSIM/LPIPS of a per-scene run); detection mAP is `recon detect train/eval`'s.

    DIR/runs/<scene>/          the runs (and runs/summary.json|md)
    DIR/results.md|json|csv    per scene and mean: PSNR, SSIM, LPIPS, train seconds, render FPS
    DIR/psnr.png               PSNR per scene and the mean
    DIR/compare.md             with --compare DIR2: the differences, this suite − DIR2
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from recon.batch import METRICS, cell, markdown_table
from recon.io import atomic_write, write_json, write_text

STANDARD = {
    "blender": ("chair", "drums", "ficus", "hotdog", "lego", "materials", "mic", "ship"),
    "llff": ("fern", "flower", "fortress", "horns", "leaves", "orchids", "room", "trex"),
}
KEYS = [key for _, key, _ in METRICS]


def suite_scenes(benchmark: str, root: Path) -> tuple[list[Path], str]:
    """The scenes a benchmark suite runs under `root`, and a line saying which list they are."""
    import data
    from data.formats.dtu import dtu_scans
    from data.load import is_dataset

    root = Path(root)
    if not root.is_dir():
        raise data.DataError(f"{root}: benchmark root not found")
    if benchmark == "scannet":
        scenes = data.scannet_scenes(root, "val")
        return scenes, f"{len(scenes)} ScanNet val scenes (scannetv2_val.txt, else every scan) under {root}"
    if benchmark == "dtu":
        scenes = dtu_scans(root, "test")
        if scenes:
            return scenes, f"{len(scenes)} DTU test scans under {root}"
        scenes = dtu_scans(root, "train")
        kind = "no DTU test scan"
    else:
        standard = [root / name for name in STANDARD[benchmark] if is_dataset(root / name)]
        if standard:
            return standard, f"{len(standard)} of the {len(STANDARD[benchmark])} standard {benchmark} scenes under {root}: {', '.join(p.name for p in standard)}"
        scenes = sorted(p for p in root.iterdir() if is_dataset(p))
        kind = f"no standard {benchmark} scene ({', '.join(STANDARD[benchmark])})"
    if not scenes:
        raise data.DataError(f"{root}: {kind} and no other scene folder")
    return scenes, f"{kind} under {root}; the {len(scenes)} scenes present: {', '.join(p.name for p in scenes)}"


def suite_results(rows: list[dict], **header) -> dict:
    """{**header, "rows": per scene (status and METRICS), "mean": METRICS over the scenes that have them}."""
    table = [{"scene": r["scene"], "status": r["status"], **{k: r.get(k) for k in KEYS}} for r in rows]
    return {**header, "rows": table, "mean": _mean(table)}


def _mean(rows: list[dict]) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    return {k: mean([r[k] for r in rows]) for k in KEYS}


def write_results(out: Path, results: dict) -> str:
    """DIR/results.json, results.md, results.csv and psnr.png; returns the Markdown table."""
    rows = results["rows"] + [{"scene": "mean", **results["mean"]}]
    failed = [r["scene"] for r in results["rows"] if r["status"] == "failed"]
    title = f"# {results['method']} ({results['preset']}) on {results['benchmark']}\n\n{results['scene_list']}\n\n"
    note = f"\nFailed (n/a, left out of the mean): {', '.join(failed)}\n" if failed else ""
    table = markdown_table(rows)
    write_json(out / "results.json", results)
    write_text(out / "results.md", title + table + note)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["scene", *KEYS])
    writer.writerows([r["scene"], *("" if r[k] is None else r[k] for k in KEYS)] for r in rows)
    write_text(out / "results.csv", text.getvalue())
    _plot_psnr(out / "psnr.png", rows, f"{results['method']} on {results['benchmark']}")
    return table + note


def _plot_psnr(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [np.nan if r["psnr"] is None else r["psnr"] for r in rows]  # a failed scene: no bar, "n/a"
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(rows), 3.5))
    bars = ax.bar([r["scene"] for r in rows], values, color=["tab:blue"] * (len(rows) - 1) + ["tab:orange"])  # the mean in orange
    ax.bar_label(bars, labels=[cell(r["psnr"], 2) for r in rows], fontsize=8)
    ax.set(ylabel="PSNR (dB)", title=title)
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)


def read_results(suite_dir: Path) -> dict:
    """Another suite's results.json (for --compare); ValueError naming it when absent or malformed."""
    path = Path(suite_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
        if not (isinstance(results["rows"], list) and all(isinstance(r["scene"], str) for r in results["rows"])):
            raise ValueError("rows")
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = "not found" if isinstance(error, FileNotFoundError) else "not a suite's results"
        raise ValueError(f"--compare {suite_dir}: {path.name} {reason} (recon eval-suite writes it)") from None
    return results


def difference(results: dict, other: dict) -> dict:
    """Per scene in both: this − other for each metric (None where one lacks it); and their mean over
    the scenes where both have the metric (a scene one suite failed never skews it)."""
    theirs = {r["scene"]: r for r in other["rows"]}
    shared = [r for r in results["rows"] if r["scene"] in theirs]

    def minus(a: dict, b: dict) -> dict:
        return {k: None if a.get(k) is None or b.get(k) is None else a[k] - b[k] for k in KEYS}

    rows = [{"scene": r["scene"], **minus(r, theirs[r["scene"]])} for r in shared]
    mean = _mean(rows)
    return {"rows": rows, "mean": mean, "only_here": sorted({r["scene"] for r in results["rows"]} - set(theirs)),
            "only_there": sorted(set(theirs) - {r["scene"] for r in results["rows"]})}


def compare(results: dict, other: dict, other_dir: Path) -> str:
    """A Markdown table of `difference` (the mean over the scenes both suites ran)."""
    diff = difference(results, other)
    title = f"# this suite − {other_dir} ({other.get('method')}, {other.get('preset')})\n\n"
    table = markdown_table(diff["rows"] + [{"scene": "mean", **diff["mean"]}], sign="+")
    missing = [f"only here: {', '.join(diff['only_here'])}" if diff["only_here"] else "", f"only in {other_dir}: {', '.join(diff['only_there'])}" if diff["only_there"] else ""]
    return title + table + "".join(f"\n{m}\n" for m in missing if m)
