"""`recon eval-suite` over three tiny generated Blender-format scenes: the standard scene list (and
the fallback to whatever is present), the tables against each run's own results, and --compare."""
from __future__ import annotations

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest

from data import DataError
from data.synth import generate
from recon.cli import main
from recon.suite import suite_scenes

STANDARD = ("chair", "lego", "ship")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """ROOT/{chair,lego,ship}: three of Blender's standard names, and ROOT/extra, which is not one."""
    root = tmp_path_factory.mktemp("nerf_synthetic")
    for seed, name in enumerate((*STANDARD, "extra")):
        generate(root / name, seed=seed, views=8, res=32)
    return root


def test_scene_lists(root, tmp_path):
    scenes, note = suite_scenes("blender", root)
    assert [p.name for p in scenes] == list(STANDARD) and note.startswith("3 of the 8 standard blender scenes")
    scenes, note = suite_scenes("llff", root)  # none of LLFF's names: every scene present
    assert [p.name for p in scenes] == ["chair", "extra", "lego", "ship"] and note.startswith("no standard llff scene (fern,")
    with pytest.raises(DataError, match="no standard blender scene .* and no other scene folder"):
        suite_scenes("blender", tmp_path)


def test_suite_tables_and_compare(root, tmp_path, capsys):
    out, other = tmp_path / "suite", tmp_path / "other"
    argv = ["eval-suite", "blender", str(root), "--method", "splat", "--preset", "fast", "--max-steps", "30", "--set", "eval_views=1",
            "--out", str(out), "--no-ray", "--workers", "2", "--cpus-per-job", "1"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["scene"] for r in results["rows"]] == list(STANDARD) and sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == list(STANDARD)
    for row in results["rows"]:
        own = json.loads((out / "runs" / row["scene"] / "eval" / "results.json").read_text())["mean"]
        assert row["status"] == "trained" and row["psnr"] == own["psnr"] > 15 and row["ssim"] == own["ssim"] and row["fps"] == own["fps"] and row["train_time"] > 0
    assert results["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in results["rows"]])) and results["mean"]["lpips"] is None

    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ") and not line.startswith("| scene")]
    assert [line.split(" | ")[0] for line in table] == ["| chair", "| lego", "| ship", "| mean"]
    assert f"| {results['mean']['psnr']:.2f} | {results['mean']['ssim']:.4f} | n/a |" in table[-1]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["scene"] for r in rows] == [*STANDARD, "mean"] and float(rows[1]["psnr"]) == results["rows"][1]["psnr"] and rows[0]["lpips"] == ""
    assert iio.imread(out / "psnr.png").ndim == 3

    other.mkdir()  # another suite: lego 1 dB worse, ship never run
    edited = {**results, "rows": [{**r, "psnr": r["psnr"] - 1.0} if r["scene"] == "lego" else r for r in results["rows"] if r["scene"] != "ship"]}
    (other / "results.json").write_text(json.dumps(edited))
    capsys.readouterr()
    assert main([*argv, "--compare", str(other)]) == 0  # a rerun: every scene skipped, the same tables
    assert "3 skipped" in capsys.readouterr().out and json.loads((out / "results.json").read_text())["rows"] == [
        {**r, "status": "skipped"} for r in results["rows"]]
    compare = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in (out / "compare.md").read_text().splitlines() if line.startswith("| ") and "---" not in line}
    assert compare == {"scene": "PSNR", "chair": "+0.00", "lego": "+1.00", "mean": "+0.50"}
    assert "only here: ship" in (out / "compare.md").read_text()
