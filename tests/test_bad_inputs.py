"""The CLI on a corpus of bad inputs: each must end with exit status 2 and one line naming the file or
argument, with no traceback and nothing written. New formats and commands add their rows here.

Also: what must never be lost (an old run under a new one, a half-written file), and the warnings
that replace silent repairs (dropped .ply rows, a torn metrics line).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from corrupt import BLENDER_BREAKS, BLENDER_RES, BLENDER_VIEWS, LLFF_BREAKS, LLFF_RES, LLFF_VIEWS, ROOM_FRAMES, ROOM_RES, ROOM_SCENE, SCANNET_BREAKS
from data import load
from recon.cli import main
from test_colmap import BREAKS as COLMAP_BREAKS, write_colmap
from test_dtu import BREAKS as DTU_BREAKS, write_dtu
from recon.export import read_ply, write_ply
from recon.io import atomic_write

TRAIN_FAST = ("--preset", "fast", "--quiet", "--set", "eval_views=1")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small Blender and LLFF scene and a short 3DGS run on the first, never modified by the cases."""
    root = tmp_path_factory.mktemp("world")
    assert run_cli("data", "synth", "--format", "blender", "--out", root / "scene", "--views", BLENDER_VIEWS, "--res", BLENDER_RES) == 0
    assert run_cli("data", "synth", "--format", "llff", "--out", root / "llff", "--views", LLFF_VIEWS, "--res", LLFF_RES) == 0
    assert run_cli("train", "splat", "--data", root / "scene", *TRAIN_FAST, "--max-steps", 20, "--out", root / "run") == 0
    assert run_cli("data", "synth", "--format", "scannet", "--out", root / "rooms", "--rooms", 1, "--val", 1, "--frames", ROOM_FRAMES, "--res", ROOM_RES) == 0
    scene = load(root / "scene")
    write_colmap(root / "colmap", scene, "PINHOLE", binary=False, views=[0, 1, 2, 3])
    write_dtu(root / "dtu", scene)
    return root


def tree(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime, a content digest) of every entry under `roots`: equal trees mean nothing was written."""
    entries = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            stat = path.lstat()
            digest = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            entries[str(path)] = (stat.st_size if path.is_file() else 0, stat.st_mtime_ns, digest)
    return entries


# ---- the corpus: case -> setup(world, tmp) returning (argv, text the error line must contain) ----------
def _photos(tmp: Path, count: int) -> Path:
    """A folder of `count` small photos."""
    folder = tmp / "photos"
    folder.mkdir()
    for k in range(count):
        iio.imwrite(folder / f"p{k}.png", np.full((8, 8, 3), 40 * k, np.uint8))
    return folder


def _copy_run(world: Path, tmp: Path, edit_checkpoint=None, edit_config=None) -> Path:
    """A copy of the world's run; `edit_checkpoint(state)` changes its checkpoint, `edit_config(info)` its config.json."""
    run = shutil.copytree(world / "run", tmp / "run")
    if edit_checkpoint is not None:
        checkpoint = next((run / "checkpoints").glob("step_*.pt"))
        state = torch.load(checkpoint, weights_only=True)
        edit_checkpoint(state)
        torch.save(state, checkpoint)
    if edit_config is not None:
        info = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(edit_config(info))
    return run


def _ply_header(world: Path, tmp: Path, header: str) -> list:
    """`recon eval` of a .ply with this vertex header and no data."""
    path = tmp / "bad.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\n" + header.encode() + b"end_header\n")
    return ["eval", path, "--data", world / "scene"]


GAUSSIAN_PROPERTIES = "".join(f"property float {n}\n" for n in ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _gaussians(n: int, sh_rest: int = 0) -> dict[str, torch.Tensor]:
    """Raw parameters of n small Gaussians near the origin, with sh_rest higher SH coefficients."""
    return {"means": torch.randn(n, 3) * 0.3, "scales": torch.full((n, 3), -3.0), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
            "opacities": torch.zeros(n), "sh0": torch.rand(n, 1, 3), "shN": torch.zeros(n, sh_rest, 3)}


def _eval_ply(world: Path, tmp: Path, gaussians: dict[str, torch.Tensor], cut: int = 0) -> list:
    """`recon eval` of a .ply holding `gaussians`, its last `cut` bytes removed."""
    path = tmp / "bad.ply"
    write_ply(path, gaussians)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) - cut])
    return ["eval", path, "--data", world / "scene"]


def _train_on_broken(fmt: str, breaker, scene: str = ""):
    def setup(world: Path, tmp: Path) -> list:
        root = shutil.copytree(world / fmt, tmp / "data")
        breaker(root)
        return ["train", "splat", "--data", root / scene, *TRAIN_FAST, "--max-steps", 1, "--out", tmp / "out"]
    return setup


def _unwritable(tmp: Path) -> Path:
    """A directory nothing can be created in; as root (where permissions do not apply) a path under a file."""
    folder = tmp / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        (folder / "file").write_text("")
        return folder / "file"
    folder.chmod(0o555)
    return folder


def _break_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _object(tmp: Path) -> Path:
    """A small 3DGS object (a text-to-3D oracle's target)."""
    write_ply(tmp / "object.ply", _gaussians(8))
    return tmp / "object.ply"


def _dream_run(tmp: Path) -> Path:
    """A 2-step text-to-3D run on an oracle, for "a cat"."""
    assert run_cli("dream", "a cat", "--oracle", _object(tmp), "--preset", "fast", "--stage", "1", "--max-steps", 2, "--quiet", "--frames", 1,
                   "--set", "eval_resolution=16", "--out", tmp / "dream") == 0
    return tmp / "dream"


def _train(world: Path, *args) -> list:
    return ["train", "splat", "--data", world / "scene", *args]


CASES = {
    # training settings and run directories
    "unknown setting": lambda w, t: (_train(w, "--set", "no_such_field=1"), "--set no_such_field: no such setting"),
    "setting not a number": lambda w, t: (_train(w, "--set", "max_steps=ten"), "max_steps=ten: expected an int"),
    "setting nan": lambda w, t: (_train(w, "--set", "lr_means=nan", "--out", t / "o"), "setting lr_means=nan: expected a finite number"),
    "setting inf": lambda w, t: (["train", "nerf", "--data", w / "scene", "--set", "lr=inf", "--out", t / "o"], "setting lr=inf"),
    "checkpoint_every 0": lambda w, t: (_train(w, "--set", "checkpoint_every=0", "--out", t / "o"), "checkpoint_every=0: out of range"),
    "sh_degree 7": lambda w, t: (_train(w, "--set", "sh_degree=7", "--out", t / "o"), "sh_degree=7: out of range (expected 0 ≤ sh_degree ≤ 3)"),
    "max-steps 0": lambda w, t: (_train(w, "--max-steps", 0, "--out", t / "o"), "max_steps=0: out of range"),
    "max-steps negative": lambda w, t: (["train", "pronerf", "--data", w / "scene", "--max-steps", -3, "--out", t / "o"], "max_steps=-3"),
    "bool not a bool": lambda w, t: (_train(w, "--set", "absgrad=maybe"), "absgrad=maybe: expected true or false"),
    "choice not a choice": lambda w, t: (_train(w, "--set", "backend=warp"), "backend='warp': expected one of auto, gsplat, cpu, torch"),
    "unknown preset": lambda w, t: (_train(w, "--preset", "turbo"), "turbo"),
    "unknown method": lambda w, t: (["train", "nosuch", "--data", w / "scene"], "unknown method"),
    "no data": lambda w, t: (["train", "splat", "--data", t / "nowhere"], "nowhere: dataset directory not found"),
    "out holds a run": lambda w, t: (_train(w, "--out", _copy_run(w, t)), "already holds a run (--resume continues it"),
    "resume and restart": lambda w, t: (["train", "splat", "--resume", "--restart", "--out", _copy_run(w, t)], "--resume and --restart"),
    "resume without a run": lambda w, t: (["train", "splat", "--resume", "--out", t], "config.json: not a run directory"),
    "resume malformed config": lambda w, t: (["train", "splat", "--resume", "--out", _copy_run(w, t, edit_config=lambda info: "{ nope")], "config.json: malformed run config"),
    "resume config bad value": lambda w, t: (["train", "splat", "--resume", "--out", _copy_run(w, t, edit_config=lambda info: json.dumps({**info, "config": {"sh_degree": "x"}}))], "config.json: malformed run config"),
    "resume no training state": lambda w, t: (["train", "splat", "--resume", "--out", _copy_run(w, t, lambda state: state.pop("training"))], "no valid 'training' entry"),
    "resume below its step": lambda w, t: (["train", "splat", "--resume", "--out", _copy_run(w, t), "--max-steps", 10], "at step 20, past max_steps=10"),
    "train out unwritable": lambda w, t: (_train(w, *TRAIN_FAST, "--max-steps", 1, "--out", _unwritable(t) / "run"), "locked"),
    # checkpoints and runs
    "not a run": lambda w, t: (["eval", t], "not a run directory"),
    "checkpoint garbage": lambda w, t: (["eval", _break_file(next((_copy_run(w, t) / "checkpoints").glob("*.pt")), b"junk").parent.parent], "step_0000020.pt: not a readable"),
    "checkpoint no model": lambda w, t: (["eval", _copy_run(w, t, lambda state: state.pop("model"))], "step_0000020.pt: checkpoint has no valid 'model'"),
    "checkpoint wrong shapes": lambda w, t: (["eval", _copy_run(w, t, lambda state: state["model"].update({"params.means": torch.zeros(5, 2)}))], "params.means has shape (5, 2)"),
    "checkpoint nan": lambda w, t: (["eval", _copy_run(w, t, lambda state: state["model"]["params.means"].fill_(float("nan")))], "non-finite parameter values (params.means"),
    "checkpoint other method": lambda w, t: (["eval", _copy_run(w, t, edit_config=lambda info: json.dumps({**info, "method": "nerf", "config": {}}))], "not 'nerf'"),
    "bad device": lambda w, t: (["--device", "warp9", "eval", w / "run"], "--device warp9"),
    "render no frames": lambda w, t: (["render", w / "run", "--frames", 0], "--frames 0"),
    "export out unwritable": lambda w, t: (["export", w / "run", "--out", _unwritable(t) / "x.ply"], "locked"),
    # .ply files
    "ply negative count": lambda w, t: (_ply_header(w, t, "element vertex -1\n" + GAUSSIAN_PROPERTIES), "bad.ply: header line 3 'element vertex -1'"),
    "ply count not a number": lambda w, t: (_ply_header(w, t, "element vertex many\n" + GAUSSIAN_PROPERTIES), "bad.ply: header line 3 'element vertex many'"),
    "ply property without name": lambda w, t: (_ply_header(w, t, "element vertex 1\nproperty float\n"), "bad.ply: header line 4 'property float'"),
    "ply duplicate property": lambda w, t: (_ply_header(w, t, "element vertex 1\nproperty float x\nproperty float x\n"), "bad.ply: header line 5: vertex property 'x' appears twice"),
    "ply no vertices": lambda w, t: (_ply_header(w, t, "element vertex 0\n" + GAUSSIAN_PROPERTIES), "bad.ply: holds no Gaussians"),
    "ply sh degree 4": lambda w, t: (_eval_ply(w, t, _gaussians(3, 24)), "bad.ply: SH degree 4"),
    "ply all nan": lambda w, t: (_eval_ply(w, t, {**_gaussians(3), "means": torch.full((3, 3), float("nan"))}), "bad.ply: every one of its 3 Gaussians"),
    "ply truncated": lambda w, t: (_eval_ply(w, t, _gaussians(4), cut=7), "bad.ply: truncated"),
    "ply without data": lambda w, t: (["eval", t / "x.ply"], "--data DIR is required"),
    # text-to-3D
    "dream via train": lambda w, t: (["train", "dream", "--data", w / "scene"], "recon dream \"PROMPT\""),
    "dream without weights": lambda w, t: (["dream", "a cat", "--out", t / "o"], "stage 1 needs DeepFloyd IF weights: --if DIR"),
    "dream stage 2 without weights": lambda w, t: (["dream", "a cat", "--stage", "2", "--if", t], "stage 2 needs Stable Diffusion weights: --sd DIR"),
    "dream missing model": lambda w, t: (["dream", "a cat", "--stage", "2", "--sd", t / "sd21"], "sd21: no Stable Diffusion model there (does not exist)"),
    "dream incomplete model": lambda w, t: (["dream", "a cat", "--stage", "1", "--if", t], "no DeepFloyd IF stage I model there (lacks unet/config.json"),
    "dream missing oracle": lambda w, t: (["dream", "a cat", "--oracle", t / "none.ply"], "none.ply: no such file"),
    "dream bad weighting": lambda w, t: (["dream", "a cat", "--oracle", _object(t), "--set", "stage1_weighting=sqrt"], "stage1_weighting='sqrt': expected one of dreamfusion"),
    "dream elevation": lambda w, t: (["dream", "a cat", "--oracle", _object(t), "--set", "elevation_max=120"], "elevation_max=120.0: out of range"),
    "dream stage steps": lambda w, t: (["dream", "a cat", "--oracle", _object(t), "--max-steps", 100], "stage=both needs stage1_steps < max_steps"),
    "dream t range": lambda w, t: (["dream", "a cat", "--oracle", _object(t), "--set", "stage2_t_min=0.9"], "settings stage2_t_*: timestep schedule: expected 0 ≤ low ≤ high"),
    "dream elevation order": lambda w, t: (["dream", "a cat", "--oracle", _object(t), "--set", "elevation_min=50", "--set", "elevation_max=10"], "expected elevation_min ≤ elevation_max"),
    "dream without prompt": lambda w, t: (["dream", "--oracle", _object(t)], "PROMPT is required"),
    "dream resume another prompt": lambda w, t: (["dream", "a dog", "--resume", "--out", _dream_run(t)], "was made for the prompt 'a cat', not 'a dog'"),
    "dream clip weights": lambda w, t: (["dream", "a cat", "--oracle", _object(t), "--clip", "ViT-B-32"], "--clip ViT-B-32: expected ARCH:FILE"),
    # synthetic data
    "synth huge": lambda w, t: (["data", "synth", "--res", 100000, "--out", t / "s"], "res: expected an integer in [8, 2048], got 100000"),
    "synth no views": lambda w, t: (["data", "synth", "--views", 0, "--out", t / "s"], "views: expected an integer"),
    "synth into a scene": lambda w, t: (["data", "synth", "--out", shutil.copytree(w / "scene", t / "s")], "expected a new or empty directory"),
    "synth out unwritable": lambda w, t: (["data", "synth", "--res", 8, "--views", 2, "--out", _unwritable(t) / "s"], "locked"),
    "unknown format": lambda w, t: (["train", "splat", "--data", t], "unknown dataset format"),
    # every dataset break of the loaders' tests, through the CLI (messages are regular expressions;
    # without its train file a Blender scene is no longer detected: "unknown format" above)
    **{f"blender: {name}": lambda w, t, b=breaker, m=message: (_train_on_broken("scene", b)(w, t), re.compile(m)) for name, (breaker, message) in BLENDER_BREAKS.items() if name != "no train file"},
    **{f"llff: {name}": lambda w, t, b=breaker, m=message: (_train_on_broken("llff", b)(w, t), re.compile(m)) for name, (breaker, message) in LLFF_BREAKS.items()},
    **{f"scannet: {name}": lambda w, t, b=breaker, m=message: (_train_on_broken("rooms", b, ROOM_SCENE)(w, t), re.compile(m)) for name, (breaker, message) in SCANNET_BREAKS.items()},
    **{f"colmap: {name}": lambda w, t, b=COLMAP_BREAKS[name][0], m=COLMAP_BREAKS[name][1]: (_train_on_broken("colmap", b)(w, t), m) for name in ("missing image", "fisheye")},
    **{f"dtu: {message}": lambda w, t, b=breaker, m=message: (_train_on_broken("dtu", b, "Rectified/scan114_train")(w, t), m) for breaker, message in DTU_BREAKS},
    "unknown data option": lambda w, t: (_train(w, "--data-option", "frames=3"), "--data-option frames: no loader takes it"),
    "synth no rooms": lambda w, t: (["data", "synth", "--format", "scannet", "--rooms", 0, "--out", t / "r"], "rooms: expected an integer in [1, 10000], got 0"),
    "reconstruct no scenes": lambda w, t: (["detect", "reconstruct", "--data", w / "scene", "--out", t / "r"], "scene: no ScanNet scenes"),
    "reconstruct bad setting": lambda w, t: (["detect", "reconstruct", "--data", w / "rooms", "--out", t / "r", "--set", "sh_degree=9"], "sh_degree=9: out of range"),
    "reconstruct workers": lambda w, t: (["detect", "reconstruct", "--data", w / "rooms", "--out", t / "r", "--workers", 0], "--workers 0: expected a positive number"),
    "batch glob matches nothing": lambda w, t: (["batch", "train", "splat", "--scenes", t / "none*", "--out", t / "r"], "matches no scene (nothing)"),
    "batch glob matches no scene": lambda w, t: (["batch", "train", "splat", "--scenes", w / "run*", "--out", t / "r"], "matches no scene (1 paths, none a dataset folder"),
    "batch unknown method": lambda w, t: (["batch", "train", "nope", "--scenes", w / "scene", "--out", t / "r"], "unknown method 'nope'"),
    "batch generalizing method": lambda w, t: (["batch", "train", "gpf", "--scenes", w / "scene", "--out", t / "r"], "gpf: not a per-scene method"),
    "batch bad setting": lambda w, t: (["batch", "train", "splat", "--scenes", w / "scene", "--out", t / "r", "--set", "sh_degree=9"], "sh_degree=9: out of range"),
    "batch workers": lambda w, t: (["batch", "train", "splat", "--scenes", w / "scene", "--out", t / "r", "--workers", 0], "--workers 0: expected a positive number"),
    "batch gpus": lambda w, t: (["batch", "train", "splat", "--scenes", w / "scene", "--out", t / "r", "--gpus-per-job", 99], "--gpus-per-job 99.0: this machine has"),
    "batch cluster without ray": lambda w, t: (["batch", "train", "splat", "--scenes", w / "scene", "--out", t / "r", "--address", "auto", "--no-ray"],
                                               "--address auto: joining a Ray cluster needs Ray (drop --no-ray)"),
    "suite root missing": lambda w, t: (["eval-suite", "blender", t / "none", "--method", "splat", "--out", t / "o"], "none: benchmark root not found"),
    "suite no scenes": lambda w, t: (["eval-suite", "llff", t, "--method", "splat", "--out", t / "o"], "no standard llff scene (fern, flower"),
    "suite compare missing": lambda w, t: (["eval-suite", "blender", w, "--method", "splat", "--out", t / "o", "--compare", t], "results.json not found (recon eval-suite writes it)"),
    "suite compare malformed": lambda w, t: (["eval-suite", "blender", w, "--method", "splat", "--out", t / "o", "--compare", _break_file(t / "results.json", b"[]").parent],
                                             "results.json not a suite's results"),
    "detect eval malformed": lambda w, t: (["detect", "eval", "--pred", _break_file(t / "p.json", b"{ no"), "--data", w / "rooms"], "p.json: not a predictions file"),
    "detect eval unknown scene": lambda w, t: (["detect", "eval", "--pred", _break_file(t / "p.json", b'{"scene0000_00": {"boxes": [], "labels": [], "scores": []}}'), "--data", w / "rooms"],
                                               "predictions for 1 scenes not in the val split"),
    "detect eval scores": lambda w, t: (["detect", "eval", "--pred", _break_file(t / "p.json", b'{"scene0001_00": {"boxes": [[0,0,0,1,1,1]], "labels": ["bed"], "scores": []}}'), "--data", w / "rooms"],
                                        "scene0001_00: 1 predicted boxes but 0 scores"),
    "detect train no recon": lambda w, t: (["detect", "train", "--data", w / "rooms", "--out", t / "r"], "--recon DIR is required"),
    "detect train not reconstructed": lambda w, t: (["detect", "train", "--recon", t, "--data", w / "rooms", "--out", t / "r"],
                                                    "scene0000_00/export/point_cloud.ply: no reconstruction (run recon detect reconstruct first)"),
    "detect train bad setting": lambda w, t: (["detect", "train", "--recon", t, "--data", w / "rooms", "--set", "num_points=0"], "num_points=0: out of range"),
    "detect train milestones": lambda w, t: (["detect", "train", "--recon", t, "--data", w / "rooms", "--set", "lr_milestones=0.5,x"],
                                             "lr_milestones='0.5,x': expected fractions of max_steps"),
    "detect train viewer": lambda w, t: (["detect", "train", "--recon", t, "--data", w / "rooms", "--viewer"], "--viewer: a detection run is viewed once trained"),
    "detect train resumes a splat run": lambda w, t: (["detect", "train", "--resume", "--out", _copy_run(w, t)], "a 'splat' run, not a 'detect' run"),
    "colmap too few photos": lambda w, t: (["data", "colmap", "--images", _photos(t, 2), "--out", t / "o"], "2 photos (.jpg or .png); posing needs at least 3"),
    "colmap broken video": lambda w, t: (["data", "colmap", "--video", _break_file(t / "clip.mp4", b"not a video"), "--out", t / "o"], "clip.mp4: cannot read the video"),
    "colmap small": lambda w, t: (["data", "colmap", "--images", _photos(t, 3), "--out", t / "o", "--max-size", 10], "--max-size 10: expected at least 64 pixels"),
    "gpf finetunes a splat run": lambda w, t: (["train", "gpf", "--finetune", _copy_run(w, t), "--data", w / "scene"], "a 'splat' run, not a 'gpf' run"),
    "nerf finetune": lambda w, t: (["train", "nerf", "--finetune", t, "--data", w / "scene"], "--finetune: nerf trains per scene already"),
    "gpf edit nothing": lambda w, t: (["gpf", "edit", _copy_run(w, t)], "nothing to edit: give --delete, --move or --duplicate"),
    "gpf edit bad offset": lambda w, t: (["gpf", "edit", _copy_run(w, t), "--move", "1", "0", "x", "0"], "--move 1 0 x 0: expected I DX DY DZ"),
    "eval another scene with splat": lambda w, t: (["eval", _copy_run(w, t), "--data", w / "scene"], "renders the scene it was trained on"),
    "detect eval nothing": lambda w, t: (["detect", "eval"], "give one of a detection run"),
    "detect eval not a run": lambda w, t: (["detect", "eval", t], "config.json: not a run directory"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_line_and_writes_nothing(case, world, tmp_path, capsys):
    argv, expected = CASES[case](world, tmp_path)
    before = tree(world, tmp_path)
    status = run_cli(*argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("recon: error: ") and "Traceback" not in captured.err
    assert (expected.search(lines[0]) if isinstance(expected, re.Pattern) else expected in lines[0]), lines[0]
    assert tree(world, tmp_path) == before


# ---- nothing lost ---------------------------------------------------------------------------------
def test_a_new_run_never_replaces_an_old_one(world, tmp_path, capsys):
    run = _copy_run(world, tmp_path)
    before = tree(run)
    assert run_cli("train", "splat", "--data", world / "scene", *TRAIN_FAST, "--max-steps", 5, "--out", run) == 2
    assert "--resume continues it" in capsys.readouterr().err and tree(run) == before
    assert run_cli("train", "splat", "--data", world / "scene", *TRAIN_FAST, "--max-steps", 5, "--out", run, "--restart") == 0
    (aside,) = tmp_path.glob("run.old-*")
    assert f"moved the previous run to {aside}" in capsys.readouterr().out
    assert {k.replace(str(aside), str(run)): v for k, v in tree(aside).items()} == before  # moved whole, untouched
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000005.pt"]


def test_resume_drops_a_torn_metrics_line_and_stale_temporaries(world, tmp_path, capsys):
    run = _copy_run(world, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "loss": 0.')  # killed mid-line
    stale = run / "checkpoints" / ".step_0000030.pt.k2j3.tmp.pt"
    stale.write_bytes(b"\0" * 100)  # killed mid-save
    assert run_cli("train", "splat", "--resume", "--out", run, "--max-steps", 25, "--quiet") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl: dropped a torn last line" in err
    assert not stale.exists()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 25 and steps == sorted(steps)


def test_a_failed_synth_leaves_nothing_and_can_be_rerun(tmp_path, monkeypatch):
    import data.synth

    def fail(*args):
        raise MemoryError("simulated")

    monkeypatch.setattr(data.synth, "_write_points", fail)
    with pytest.raises(MemoryError):
        data.synth.generate(tmp_path / "scene", views=2, res=8)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert (data.synth.generate(tmp_path / "scene", views=2, res=8) / "transforms_train.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path, monkeypatch):
    target = tmp_path / "state.bin"
    target.write_bytes(b"previous contents")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"new con")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"previous contents" and [p.name for p in tmp_path.iterdir()] == ["state.bin"]

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.realpath(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new contents"))
    assert target.read_bytes() == b"new contents"
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".state.bin.")) and synced[1] == str(tmp_path)


# ---- repairs are said, not silent -----------------------------------------------------------------
def test_ply_rows_with_nan_are_dropped_with_a_warning(world, tmp_path, capsys):
    gaussians = _gaussians(6)
    gaussians["means"][1, 0] = float("nan")
    gaussians["opacities"][4] = float("inf")
    write_ply(tmp_path / "some_nan.ply", gaussians)
    with pytest.warns(UserWarning, match="some_nan.ply: dropped 2 of 6 Gaussians"):
        kept = read_ply(tmp_path / "some_nan.ply")
    torch.testing.assert_close(kept["means"], gaussians["means"][[0, 2, 3, 5]])
    assert run_cli("eval", tmp_path / "some_nan.ply", "--data", world / "scene") == 0
    err = capsys.readouterr().err
    assert err == f"recon: warning: {tmp_path / 'some_nan.ply'}: dropped 2 of 6 Gaussians with NaN or infinite values\n"
