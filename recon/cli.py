"""`recon` command line: data synth|colmap | train | gpf edit | dream | detect reconstruct|train|eval | batch train|prepare | eval-suite
| eval | render | view | export.

Errors a user can fix (bad paths, malformed data, wrong checkpoints, unknown settings) end in one
line naming the file or argument, and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description="3D reconstruction and neural rendering toolkit")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="torch device to train/render on, e.g. cpu, cuda, cuda:1 (default: cuda when present, else cpu)")
    commands = parser.add_subparsers(dest="command", required=True)

    data_cmd = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data_cmd.add_parser("synth", help="generate a synthetic scene (or ScanNet-layout rooms) in a real dataset format")
    synth.add_argument("--format", choices=["blender", "llff", "scannet"], default="blender")
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--views", type=int, default=100, help="training views (blender) or all views (llff)")
    synth.add_argument("--res", type=int, default=None, help="image width in pixels (default 128; scannet 320)")
    synth.add_argument("--rooms", type=int, default=10, help="scannet: training rooms")
    synth.add_argument("--val", type=int, default=0, help="scannet: validation rooms (after the training ones)")
    synth.add_argument("--frames", type=int, default=100, help="scannet: frames per room")
    synth.add_argument("--workers", type=int, default=1, help="scannet: rooms built in parallel processes")
    synth.add_argument("--scenes", type=int, default=1, help="blender|llff: scenes, each from its own seed, as OUT/scene_XXX/ with split lists (generalization)")
    synth.add_argument("--unseen", type=int, default=None, help="with --scenes: the last ones are test scenes no model trains on (default a fifth, at least 1)")

    colmap = data_cmd.add_parser("colmap", help="pose your own photos or video with COLMAP (pycolmap) into a scene recon trains on")
    colmap_source = colmap.add_mutually_exclusive_group(required=True)
    colmap_source.add_argument("--images", type=Path, help="a folder of photos (.jpg, .png)")
    colmap_source.add_argument("--video", type=Path, help="a video file; frames taken --fps per second")
    colmap.add_argument("--fps", type=float, default=2.0, help="video frames per second of video")
    colmap.add_argument("--out", type=Path, required=True, help="the scene: OUT/images/ and OUT/sparse/0/")
    colmap.add_argument("--matcher", choices=["exhaustive", "sequential"], default=None, help="default exhaustive for photos, sequential for a video")
    colmap.add_argument("--max-size", type=int, default=1600, help="longer image side in pixels (larger photos are shrunk)")

    train = commands.add_parser("train", help="train a method on one scene")
    train.add_argument("method", help="method name, e.g. nerf")
    train.add_argument("--data", type=Path, help="dataset directory (Blender or LLFF format); not needed with --resume")
    train.add_argument("--samples", type=int, default=None, help="shaded samples per ray, e.g. 8 or 12 (pronerf)")
    train.add_argument("--downscale", type=int, default=1, help="image downscale factor")
    train.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="a loader option, e.g. max_frames=100, frame_step=10, width=320, holdout=0 (ScanNet)")
    train.add_argument("--finetune", type=Path, default=None, metavar="RUN",
                       help="gpf: finetune the generalizable RUN on the scene --data (its per-point features and positions become parameters; 1000 steps unless --max-steps)")
    _add_run_options(train)

    gpf_cmd = commands.add_parser("gpf", help="GPF tools").add_subparsers(dest="gpf_command", required=True)
    edit = gpf_cmd.add_parser("edit", help="edit a scene's points (delete, move, duplicate objects) and render the result")
    edit.add_argument("run_dir", type=Path, help="a gpf run (generalizable or finetuned)")
    edit.add_argument("--data", type=Path, default=None, help="the scene to edit (default: the run's own render scene)")
    edit.add_argument("--delete", action="append", default=[], metavar="I", help="an instance id, or box:x0,y0,z0,x1,y1,z1")
    edit.add_argument("--move", action="append", nargs=4, default=[], metavar=("I", "DX", "DY", "DZ"))
    edit.add_argument("--duplicate", action="append", nargs=4, default=[], metavar=("I", "DX", "DY", "DZ"))
    edit.add_argument("--frames", type=int, default=60, help="orbit frames of the edited scene")
    edit.add_argument("--out", type=Path, default=None, help="output directory (default RUN/edit/<scene>)")
    edit.add_argument("--view", action="store_true", help="then serve the edited scene in the viewer (until Ctrl-C)")
    edit.add_argument("--port", type=int, default=8080)

    dream = commands.add_parser("dream", help="text-to-3D: Gaussians from a prompt by score distillation (StableDreamer)")
    dream.add_argument("prompt", nargs="?", default=None, help="what to make, e.g. \"a ceramic teapot\" (a resumed run keeps its own)")
    dream.add_argument("--if", dest="if_model", default=None, metavar="DIR", help="DeepFloyd IF stage I weights (local diffusers directory or a repo id in the local HF cache): stage 1")
    dream.add_argument("--sd", dest="sd_model", default=None, metavar="DIR", help="Stable Diffusion weights (likewise): stage 2")
    dream.add_argument("--oracle", type=Path, default=None, metavar="FILE.ply", help="replace both priors by the exact noise predictor of this 3DGS object (tests, diagnostics)")
    dream.add_argument("--stage", choices=["1", "2", "both"], default=None, help="image-space stage 1, latent stage 2, or both (default)")
    dream.add_argument("--negative-prompt", default=None, help="the unconditional prompt of classifier-free guidance (default empty)")
    dream.add_argument("--clip", default=os.environ.get("RECON_CLIP"), metavar="ARCH:FILE",
                       help="open_clip architecture and local weights for the CLIP score, e.g. ViT-B-32:open_clip_model.bin (default $RECON_CLIP; else n/a)")
    dream.add_argument("--frames", type=int, default=120, help="turntable frames")
    _add_run_options(dream)

    detect_cmd = commands.add_parser("detect", help="3D object detection").add_subparsers(dest="detect_command", required=True)
    detect_rec = detect_cmd.add_parser("reconstruct", help="3DGS per ScanNet scene (the detector's input); finished scenes are skipped")
    detect_rec.add_argument("--data", type=Path, required=True, help="ScanNet root (scans/, split lists, label table)")
    detect_rec.add_argument("--out", type=Path, required=True, help="RECON_ROOT: one splat run per scene")
    detect_rec.add_argument("--guidance", choices=["none", "boundary", "center", "mask"], default="boundary", help="2D prior painted into the images")
    detect_rec.add_argument("--split", nargs="+", default=["train", "val"], choices=["train", "val", "test"])
    detect_rec.add_argument("--preset", default="default", help="splat preset, e.g. fast")
    detect_rec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a splat setting")
    detect_rec.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="a loader option, e.g. max_frames=100")
    detect_rec.add_argument("--workers", type=int, default=1, help="scenes reconstructed in parallel processes")
    detect_train = detect_cmd.add_parser("train", help="train the sparse detector on reconstructed scenes (validation mAP on the val split)")
    detect_train.add_argument("--recon", type=Path, default=None, help="RECON_ROOT of recon detect reconstruct; not needed with --resume")
    detect_train.add_argument("--data", type=Path, default=None, help="ScanNet root (boxes, splits; frames for box sampling); not needed with --resume")
    detect_train.add_argument("--sampling", choices=["box", "random", "fps", "gt"], default=None,
                              help="Gaussians the detector sees: box-focused (3DGS-DET, default), random, farthest-point, ground-truth boxes (upper bound)")
    _add_run_options(detect_train)
    detect_eval = detect_cmd.add_parser("eval", help="indoor AP (mmdet3d's indoor_eval) of a detection run, or of a predictions file, on a ScanNet split")
    detect_eval.add_argument("run_dir", type=Path, nargs="?", default=None, help="a recon detect train run (writes RUN/eval/)")
    detect_eval.add_argument("--pred", type=Path, default=None, help="instead of a run, PRED.json: {scene_id: {boxes, labels, scores}}, boxes as (x_min, y_min, z_min, x_max, y_max, z_max) in the aligned frame")
    detect_eval.add_argument("--data", type=Path, default=None, help="ScanNet root (needed with --pred; a run knows its own)")
    detect_eval.add_argument("--split", default="val", choices=["train", "val", "test"])
    detect_eval.add_argument("--out", type=Path, default=None, help="results JSON (default RUN/eval/results.json, or PRED.ap.json beside PRED.json)")

    batch_cmd = commands.add_parser("batch", help="many independent scenes on Ray (or a local process pool)").add_subparsers(dest="batch_command", required=True)
    batch_train = batch_cmd.add_parser("train", help="train and evaluate one run per scene (finished scenes are skipped, interrupted ones resume)")
    batch_train.add_argument("method", help="a per-scene method, e.g. splat or nerf")
    batch_train.add_argument("--scenes", required=True, metavar="GLOB", help="quoted glob of scene folders, e.g. 'data/*' (folders in no format recon reads are left out)")
    batch_train.add_argument("--out", type=Path, required=True, help="RUNS_ROOT: a run per scene in RUNS_ROOT/<scene>/, summary.json and summary.md")
    _add_batch_options(batch_train)
    batch_prepare = batch_cmd.add_parser("prepare", help="GPF's per-scene preprocessing: each scene's point scaffold fused into a cache (recon train gpf --set scaffolds=CACHE)")
    batch_prepare.add_argument("method", choices=["gpf"])
    batch_prepare.add_argument("--scenes", required=True, metavar="GLOB", help="quoted glob of scene folders, e.g. 'ROOT/scene_*'")
    batch_prepare.add_argument("--out", type=Path, required=True, help="CACHE: CACHE/<scene>/scaffold-<settings hash>.pt, summary.json and summary.md")
    _add_batch_options(batch_prepare)

    suite = commands.add_parser("eval-suite", help="train and evaluate a benchmark's scenes; paper-style tables (Markdown, JSON, CSV) and a PSNR chart")
    suite.add_argument("benchmark", choices=["blender", "llff", "scannet", "dtu"])
    suite.add_argument("root", type=Path, help="the benchmark's root, e.g. nerf_synthetic/ (its standard scenes, else every scene present)")
    suite.add_argument("--method", required=True, help="a per-scene method, e.g. splat")
    suite.add_argument("--out", type=Path, required=True, help="DIR: runs/<scene>/, results.md|json|csv, psnr.png")
    suite.add_argument("--compare", type=Path, default=None, metavar="DIR2", help="another suite's DIR: per-scene and mean differences (this − DIR2) in DIR/compare.md")
    _add_batch_options(suite)

    evaluate = commands.add_parser("eval", help="render the test split of a run (or a 3DGS .ply) and write PSNR/SSIM/LPIPS")
    evaluate.add_argument("run_dir", type=Path, help="run directory, or a 3DGS .ply file (then --data is needed)")
    evaluate.add_argument("--data", type=Path, default=None, help="dataset to evaluate a .ply file on, or an unseen scene for a generalizing run (gpf)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--max-views", type=int, default=None)

    render = commands.add_parser("render", help="render a camera path of a run to frames and a video")
    render.add_argument("run_dir", type=Path)
    render.add_argument("--path", choices=["orbit", "spiral"], default="orbit")
    render.add_argument("--frames", type=int, default=120)
    render.add_argument("--fps", type=int, default=30)

    view = commands.add_parser("view", help="open a saved run in the viser viewer (until Ctrl-C)")
    view.add_argument("run_dir", type=Path)
    view.add_argument("--scene", default=None, help="detection runs: the val scene to show (default the first)")
    view.add_argument("--port", type=int, default=8080, help="port (the next free one if taken)")
    view.add_argument("--host", default="127.0.0.1", help="interface (default loopback only; 0.0.0.0 exposes it to the network)")

    export = commands.add_parser("export", help="export a run's scene representation")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", choices=["ply"], default="ply")
    export.add_argument("--out", type=Path, default=None, help="output file (default RUN_DIR/export/point_cloud.ply)")
    return parser


def _add_run_options(command: argparse.ArgumentParser) -> None:
    """What every training command takes: preset, steps, seed, settings, run directory, viewer."""
    command.add_argument("--preset", default="default", help="named configuration, e.g. fast")
    command.add_argument("--max-steps", type=int, default=None)
    command.add_argument("--seed", type=int, default=None)
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    command.add_argument("--out", type=Path, default=None, help="run directory (default runs/<method>/<scene>/<time>)")
    command.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    command.add_argument("--restart", action="store_true", help="start over in an --out that holds a run, after moving the old run to OUT.old-<time>")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.add_argument("--viewer", action="store_true", help="serve a live viser viewer while training (and after, until Ctrl-C)")
    command.add_argument("--viewer-port", type=int, default=8080, help="viewer port (the next free one if taken)")
    command.add_argument("--viewer-host", default="127.0.0.1", help="viewer interface (default loopback only; 0.0.0.0 exposes it to the network)")


def _add_batch_options(command: argparse.ArgumentParser) -> None:
    """What every many-scene command takes: the run settings of each scene and the engine."""
    command.add_argument("--preset", default="default", help="named configuration, e.g. fast")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    command.add_argument("--max-steps", type=int, default=None)
    command.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="a loader option, e.g. downscale=2")
    command.add_argument("--workers", type=int, default=1, help="scenes trained at once on this machine")
    command.add_argument("--cpus-per-job", type=int, default=None, help="CPU cores (torch threads) per scene (default: the cores shared among the workers)")
    command.add_argument("--gpus-per-job", type=float, default=0, help="GPUs per scene (Ray may share one: 0.5); 0 trains on the CPU")
    command.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto, or HEAD_IP:6379) instead of starting a local Ray")
    command.add_argument("--no-ray", action="store_true", help="a local process pool even when Ray is installed")


def _overrides(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair}: expected KEY=VALUE")
        result[key.strip()] = value.strip()
    return result


def _data_options(pairs: list[str]) -> dict[str, int | float | str]:
    """--data-option KEY=VALUE pairs, values read as int, else float, else text."""
    from data.load import loader_options

    options = {}
    for key, text in _overrides(pairs).items():
        if key not in loader_options():
            raise ValueError(f"--data-option {key}: no loader takes it (options: {', '.join(sorted(loader_options()))})")
        for kind in (int, float, str):
            try:
                options[key] = kind(text)
                break
            except ValueError:
                continue
    return options


def _check_device(device: str) -> None:
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"--device {device}: {str(error).splitlines()[0]}") from None


def cmd_data(args: argparse.Namespace) -> None:
    if args.data_command == "colmap":
        from rich.console import Console

        from data.capture import pose_images

        console = Console(stderr=True, log_path=False)
        matcher = args.matcher or ("sequential" if args.video else "exhaustive")
        with console.status("posing") as status:
            stats = pose_images(args.out, images=args.images, video=args.video, fps=args.fps, matcher=matcher, max_size=args.max_size,
                                progress=lambda stage: (console.log(stage), status.update(stage)))
        print(f"{stats['registered']} of {stats['images']} images posed, {stats['points']:,} points, {stats['seconds']} s -> {args.out} "
              f"(recon train splat --data {args.out})")
        return
    cmd_data_synth(args)


def cmd_data_synth(args: argparse.Namespace) -> None:
    if args.format == "scannet":
        from data.rooms import DEFAULT_RES, generate_rooms

        path = generate_rooms(args.out, rooms=args.rooms, val=args.val, seed=args.seed, frames=args.frames, res=args.res or DEFAULT_RES, workers=args.workers)
        print(f"wrote {args.rooms} training and {args.val} validation rooms in ScanNet's layout to {path}")
        return
    from data.synth import DEFAULT_RES, generate, generate_scenes

    if args.scenes != 1 or args.unseen is not None:
        unseen = args.unseen if args.unseen is not None else max(1, args.scenes // 5)
        path = generate_scenes(args.out, scenes=args.scenes, unseen=unseen, format=args.format, seed=args.seed, views=args.views, res=args.res or DEFAULT_RES)
        print(f"wrote {args.scenes - unseen} training and {unseen} unseen {args.format} scenes to {path}")
        return
    path = generate(args.out, format=args.format, seed=args.seed, views=args.views, res=args.res or DEFAULT_RES)
    print(f"wrote {args.format} scene to {path}")


def _run_config(args: argparse.Namespace, method_cls, overrides: dict[str, str]) -> tuple:
    """(config, run info) of a new run (preset + overrides) or of the run that
    --resume continues (its own settings; only explicit overrides change them)."""
    from recon.methods.base import config_from_dict
    from recon.runs import apply_overrides, preset_config, read_run_info

    for flag, key in ((args.max_steps, "max_steps"), (args.seed, "seed")):
        if flag is not None:
            overrides[key] = str(flag)
    if args.resume and args.restart:
        raise ValueError("--resume and --restart: choose one (continue the run, or move it aside and start over)")
    if args.resume:
        if args.out is None:
            raise ValueError("--resume: --out must name the run to continue")
        info = read_run_info(args.out, method_cls)
        return apply_overrides(config_from_dict(method_cls.Config, info["config"]), overrides), info
    if getattr(args, "finetune", None) is not None:
        base = read_run_info(args.finetune, method_cls)
        base_config = config_from_dict(method_cls.Config, base["config"])
        return apply_overrides(base_config, overrides), {"method": method_cls.name, "preset": f"finetune of {base['preset']}"}
    return apply_overrides(preset_config(method_cls, args.preset), overrides), {"method": method_cls.name, "preset": args.preset}


def _train(args: argparse.Namespace, method, run_dir: Path, info: dict) -> None:
    """Train `method` into run_dir (with a live viewer when asked); the viewer stays until Ctrl-C.
    A new run's --out that holds a run is refused, or moved aside with --restart. In a data-parallel
    job (torchrun) rank 0 alone prepares the run directory, talks and serves the viewer."""
    from recon import distributed
    from recon.runs import prepare_run_dir
    from recon.trainer import Trainer

    run_dir, main = distributed.broadcast(run_dir), distributed.world().main
    if main and args.out is not None and not args.resume:
        prepare_run_dir(args.out, restart=args.restart)
    if main:
        print(f"run directory: {run_dir}" + (f" ({distributed.world().size} processes)" if distributed.world().size > 1 else ""))
    viewer = None
    if args.viewer and main:
        from viewer import Viewer

        viewer = Viewer(method, host=args.viewer_host, port=args.viewer_port, training=True)
        print(f"viewer: {viewer.url}", flush=True)
    result = Trainer(method, run_dir, info).run(resume=args.resume, quiet=args.quiet, viewer=viewer)
    if result and main:
        print("final validation: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    if viewer is not None:
        viewer.complete()
        print(f"training done; the viewer stays at {viewer.url} until Ctrl-C", flush=True)
        viewer.serve_forever()


def cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from recon.methods import find_method
    from recon.runs import default_run_dir

    method_cls = find_method(args.method)
    if method_cls.name == "dream":
        raise ValueError("dream: text-to-3D trains from a prompt, not a dataset: recon dream \"PROMPT\" --if DIR --sd DIR")
    overrides = _overrides(args.set)
    if args.finetune is not None and not args.resume:
        if not method_cls.generalizes:
            raise ValueError(f"--finetune: {method_cls.name} trains per scene already (gpf finetunes a generalizable run)")
        overrides = {"max_steps": "1000", **overrides, "finetune_from": str(args.finetune.resolve())}
    if args.samples is not None:
        if "num_samples" not in {f.name for f in fields(method_cls.Config)}:
            raise ValueError(f"--samples: method {method_cls.name!r} has no sample-count setting (pronerf has)")
        overrides["num_samples"] = str(args.samples)
    config, info = _run_config(args, method_cls, overrides)
    if not args.resume:
        if args.data is None:
            raise ValueError("--data DIR is required (the dataset to train on)")
        info |= {"data": str(args.data.resolve()), "data_options": {"downscale": args.downscale, **_data_options(args.data_option)}}
    torch.manual_seed(config.seed)
    method = method_cls.create(config, info, device=args.device, training=True)
    run_dir = args.out or default_run_dir(method_cls.name, method.scene.name)
    _train(args, method, run_dir, info)


def cmd_dream(args: argparse.Namespace) -> None:
    from recon import distributed
    from recon.evaluate import clip_score, parse_clip, render_path
    from recon.io import write_json
    from recon.methods.dreamer import Dreamer, check_priors
    from recon.runs import default_run_dir

    overrides = _overrides(args.set)
    given = {"negative_prompt": args.negative_prompt, "stage": args.stage, "if_model": args.if_model,
             "sd_model": args.sd_model, "oracle": args.oracle and str(args.oracle.resolve())}
    overrides |= {key: value for key, value in given.items() if value is not None}
    if not args.resume:
        if args.prompt is None:
            raise ValueError("PROMPT is required: recon dream \"a ceramic teapot\" --if DIR --sd DIR")
        overrides["prompt"] = args.prompt
    config, info = _run_config(args, Dreamer, overrides)
    if args.prompt is not None and args.prompt != config.prompt:
        raise ValueError(f"--resume: the run in {args.out} was made for the prompt {config.prompt!r}, not {args.prompt!r}")
    check_priors(config)
    if args.clip:
        parse_clip(args.clip)
    info |= {"data": "", "data_options": {}}
    scene = Dreamer.load_scene(config, info)
    run_dir = args.out or default_run_dir(Dreamer.name, scene.name)
    torch.manual_seed(config.seed)
    method = Dreamer(config, scene, device=args.device)
    _train(args, method, run_dir, info)
    if not distributed.world().main:
        return
    method.export_ply(run_dir / "export" / "point_cloud.ply")
    video = render_path(method, run_dir / "render", "orbit", args.frames, 30)
    score = clip_score(run_dir / "render" / "orbit", config.prompt, args.clip)
    write_json(run_dir / "eval" / "clip.json", score)
    shown = score["note"] if score["clip_score"] is None else f"{score['clip_score']:.2f} ({score['note']})"
    print(f"wrote {method.num_gaussians} Gaussians to {run_dir / 'export' / 'point_cloud.ply'}, the turntable {video}; CLIP score {shown}")


def cmd_detect(args: argparse.Namespace) -> None:
    {"reconstruct": cmd_detect_reconstruct, "train": cmd_detect_train, "eval": cmd_detect_eval}[args.detect_command](args)


def cmd_detect_reconstruct(args: argparse.Namespace) -> None:
    import data
    from detect.reconstruct import reconstruct
    from recon.io import write_json
    from recon.methods.splat import Splat
    from recon.runs import apply_overrides, preset_config

    overrides, options = _overrides(args.set), {"downscale": 1, **_data_options(args.data_option)}
    apply_overrides(preset_config(Splat, args.preset), {**overrides, "guidance": args.guidance})  # bad settings fail here, once
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: expected a positive number")
    scenes = [scene for split in args.split for scene in data.scannet_scenes(args.data, split)]
    with _scene_progress("reconstruct", len(scenes)) as progress:
        rows = reconstruct(scenes, args.out, guidance=args.guidance, preset=args.preset, overrides=overrides, data_options=options,
                           workers=args.workers, progress=progress)
    write_json(args.out / "reconstruct.json", rows)
    _report(rows, args.out, args.out / "reconstruct.json")


@contextmanager
def _scene_progress(label: str, total: int):
    """A progress bar counting scenes; yields the callback that advances it with a job's row."""
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task(label, total=total)
        yield lambda row: progress.update(task, advance=1, description=f"{row['scene']} {row['status']}")


def _report(rows: list[dict], out: Path, table: Path) -> None:
    """Print how many scenes were trained, resumed, skipped, failed; one error line if any failed."""
    counts = {status: sum(r["status"] == status for r in rows) for status in ("trained", "resumed", "prepared", "skipped", "failed")}
    print(", ".join(f"{n} {status}" for status, n in counts.items() if n) + f" -> {out}")
    if failed := [r for r in rows if r["status"] == "failed"]:
        raise ValueError(f"{len(failed)} of {len(rows)} scenes failed (first: {failed[0]['scene']}: {failed[0]['error']}); see {table}")


def cmd_batch(args: argparse.Namespace) -> None:
    from recon.batch import find_scenes

    rows = _batch(args, find_scenes(args.scenes), args.out, "train" if args.batch_command == "train" else "scaffold")
    _report(rows, args.out, args.out / "summary.md")


def _batch(args: argparse.Namespace, scenes: list[Path], out: Path, task: str = "train") -> list[dict]:
    """Train and evaluate args.method on every scene into out/<scene>/ (task "train"), or fuse GPF's
    scaffolds into the cache `out` (task "scaffold"), on the engine the options ask for; writes
    out/summary.json and summary.md; the rows. Bad options fail before anything is written."""
    from recon.batch import METRICS, RAY_HINT, choose_engine, make_jobs, run_jobs, write_summary
    from recon.methods import find_method
    from recon.runs import apply_overrides, preset_config

    method_cls = find_method(args.method)
    if task == "train" and (method_cls.generalizes or method_cls.name == "dream"):
        raise ValueError(f"{method_cls.name}: not a per-scene method (recon {'train gpf --data ROOT' if method_cls.generalizes else 'dream'} trains it)")
    overrides = _overrides(args.set) | ({"max_steps": str(args.max_steps)} if args.max_steps is not None else {})
    apply_overrides(preset_config(method_cls, args.preset), overrides)  # bad settings fail here, once
    options = {"downscale": 1, **_data_options(args.data_option)}  # as recon train records them
    engine = choose_engine(args.workers, args.cpus_per_job, args.gpus_per_job, args.address, args.no_ray)
    if engine.kind == "processes" and not args.no_ray:
        print(RAY_HINT, file=sys.stderr)
    jobs = make_jobs(scenes, out, method_cls.name, engine, preset=args.preset, overrides=overrides, data_options=options, task=task)
    with _scene_progress(f"{method_cls.name} {task} on {engine.kind}", len(jobs)) as progress:
        rows = run_jobs(jobs, engine, progress)
    metrics = METRICS if task == "train" else (("points", "points", 0),)
    write_summary(out, rows, metrics, method=method_cls.name, preset=args.preset, engine=engine.kind)
    return rows


def cmd_eval_suite(args: argparse.Namespace) -> None:
    from recon.io import write_text
    from recon.suite import compare, read_results, suite_results, suite_scenes, write_results

    other = read_results(args.compare) if args.compare is not None else None
    scenes, note = suite_scenes(args.benchmark, args.root)
    print(note)
    rows = _batch(args, scenes, args.out / "runs")
    results = suite_results(rows, benchmark=args.benchmark, method=args.method, preset=args.preset, scene_list=note)
    print(write_results(args.out, results))
    if other is not None:
        table = compare(results, other, args.compare)
        write_text(args.out / "compare.md", table)
        print(table)
    _report(rows, args.out, args.out / "runs" / "summary.md")


def cmd_detect_train(args: argparse.Namespace) -> None:
    from detect.training import DetectionTraining, load_detection_data, steps_per_epoch
    from recon import distributed
    from recon.runs import default_run_dir

    if args.viewer:
        raise ValueError("--viewer: a detection run is viewed once trained: recon view RUN")
    overrides = _overrides(args.set) | ({"sampling": args.sampling} if args.sampling else {})
    config, info = _run_config(args, DetectionTraining, overrides)
    if not args.resume:
        for flag, path in (("--recon", args.recon), ("--data", args.data)):
            if path is None:
                raise ValueError(f"{flag} DIR is required (a new run)")
            if not path.is_dir():
                raise ValueError(f"{flag} {path}: not a directory")
        info |= {"recon": str(args.recon.resolve()), "data": str(args.data.resolve()), "data_options": {}}
    data = load_detection_data(info["recon"], info["data"], config)
    run_dir = args.out or default_run_dir(DetectionTraining.name, f"{Path(info['recon']).name}-{config.sampling}")
    if distributed.world().main:
        print(f"{len(data.train)} training and {len(data.val)} validation scenes, {config.sampling} sampling; "
              f"{steps_per_epoch(config, len(data.train), distributed.world().size)} steps per epoch, {config.max_steps} steps")
    torch.manual_seed(config.seed)
    _train(args, DetectionTraining(config, data, device=args.device), run_dir, info)


def cmd_detect_eval(args: argparse.Namespace) -> None:
    from detect.metrics import evaluate_scannet, markdown_table, read_predictions
    from recon.io import write_json, write_text

    if (args.run_dir is None) == (args.pred is None):
        raise ValueError("give one of a detection run (recon detect eval RUN) and --pred PRED.json --data ROOT")
    if args.pred is not None:
        if args.data is None:
            raise ValueError("--pred: --data ROOT is required (the ScanNet root with the ground truth)")
        predictions, data_root, out = read_predictions(args.pred), args.data, args.out or args.pred.with_suffix(".ap.json")
    else:
        from detect.training import open_detection_run

        if args.split == "test":
            raise ValueError("--split test: a detection run is scored on its train or val scenes (ScanNet's test split has no boxes)")
        method, info = open_detection_run(args.run_dir, args.device, splits=(args.split,))
        data_root, out = Path(info["data"]), args.out or args.run_dir / "eval" / "results.json"
        scenes = method.data.train if args.split == "train" else method.data.val
        predictions = method.predict(scenes)
        write_json(out.with_name("predictions.json"), predictions)
    result = evaluate_scannet(predictions, data_root, args.split)
    write_json(out, result)
    table = markdown_table(result)
    print(f"{result['scenes']} {args.split} scenes, {len(result['classes'])} classes (AP in %)\n")
    print(table)
    if args.run_dir is not None:
        write_text(out.with_suffix(".md"), table + "\n")
    if result["unmatched_classes"]:
        print(f"predicted classes absent from the ground truth (not averaged): {', '.join(result['unmatched_classes'])}")
    print(f"-> {out}")


def cmd_gpf_edit(args: argparse.Namespace) -> None:
    from recon.evaluate import render_path, write_png
    from recon.io import write_json
    from recon.runs import open_run

    def offset(values: list[str], flag: str) -> tuple[str, tuple[float, float, float]]:
        try:
            return values[0], (float(values[1]), float(values[2]), float(values[3]))
        except ValueError:
            raise ValueError(f"{flag} {' '.join(values)}: expected I DX DY DZ with numbers") from None

    moves, duplicates = [offset(m, "--move") for m in args.move], [offset(d, "--duplicate") for d in args.duplicate]
    if not (args.delete or moves or duplicates):
        raise ValueError("nothing to edit: give --delete, --move or --duplicate")
    method, info = open_run(args.run_dir, args.device, args.data)
    if info["method"] != "gpf":
        raise ValueError(f"{args.run_dir}: a {info['method']} run; point edits need a gpf run")
    scene = method.scene
    out = args.out or args.run_dir / "edit" / scene.name
    view = int(scene.split("test")[0]) if len(scene.split("test")) else 0
    if not method.deployed:
        method.deploy()
    write_png(out / "before.png", method.render_view(scene.K[view], scene.c2w[view], scene.width, scene.height)["rgb"])
    counts = method.edit(args.delete, moves, duplicates)
    write_png(out / "after.png", method.render_view(scene.K[view], scene.c2w[view], scene.width, scene.height)["rgb"])
    video = render_path(method, out, "orbit", args.frames, 30)
    write_json(out / "edit.json", {"run": str(args.run_dir), "scene": scene.name, "view": view, "delete": args.delete,
                                   "move": [list(m) for m in moves], "duplicate": [list(d) for d in duplicates], **counts})
    print(f"{counts['deleted']} points deleted, {counts['moved']} moved, {counts['duplicated']} duplicated; "
          f"{out / 'before.png'}, {out / 'after.png'} and {video}")
    if args.view:
        from viewer import Viewer

        viewer = Viewer(method, port=args.port, training=False, step=info["step"])
        print(f"viewer: {viewer.url} (the edited scene; Ctrl-C to quit)", flush=True)
        viewer.serve_forever()


def cmd_eval(args: argparse.Namespace) -> None:
    from recon.evaluate import evaluate
    from recon.runs import open_run

    if args.run_dir.suffix == ".ply":
        import data
        from recon.methods.splat import Splat

        if args.data is None:
            raise ValueError(f"--data DIR is required to evaluate {args.run_dir}")
        method, label, out_dir = Splat.from_ply(args.run_dir, data.load(args.data), args.device), str(args.run_dir), args.run_dir.with_suffix("") / "eval"
    else:
        _refuse_detection_run(args.run_dir, "its indoor AP: recon detect eval RUN")
        method, info = open_run(args.run_dir, args.device, args.data)
        label, out_dir = f"{info['method']} step {info['step']}", args.run_dir / "eval" / (method.scene.name if args.data else "")
        if info["method"] == "dream" and not method.config.oracle:
            raise ValueError(f"{args.run_dir}: a text-to-3D run has no ground truth to score unless it dreamed on an --oracle (its CLIP score is in eval/clip.json)")
    results = evaluate(method, out_dir, args.split, args.max_views)
    mean = results["mean"]
    lpips = "n/a" if mean["lpips"] is None else f"{mean['lpips']:.4f}"
    print(f"{label}, {results['num_views']} {args.split} views: "
          f"PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.4f}, LPIPS {lpips}, {mean['fps']:.2f} FPS -> {out_dir}")


def cmd_render(args: argparse.Namespace) -> None:
    from recon.evaluate import render_path
    from recon.runs import open_run

    _refuse_detection_run(args.run_dir, "recon view RUN shows its boxes over a scene's Gaussians")
    method, _ = open_run(args.run_dir, args.device)
    video = render_path(method, args.run_dir / "render", args.path, args.frames, args.fps)
    print(f"wrote {args.frames} frames and {video}")


def cmd_view(args: argparse.Namespace) -> None:
    from recon.runs import open_run, run_method_name
    from viewer import Viewer

    if run_method_name(args.run_dir) == "detect":
        viewer, shown = detection_viewer(args)
    else:
        method, info = open_run(args.run_dir, args.device)
        viewer, shown = Viewer(method, host=args.host, port=args.port, training=False, step=info["step"]), f"{info['method']} step {info['step']}"
    print(f"viewer: {viewer.url} ({shown}; Ctrl-C to quit)", flush=True)
    viewer.serve_forever()


def detection_viewer(args: argparse.Namespace) -> tuple:
    """A viewer of a detection run (args: run_dir, scene, device, host, port): one val scene's
    Gaussians with its predicted and ground-truth boxes; and a line saying what it shows."""
    import numpy as np

    from data.formats.scannet import CLASSES
    from detect.training import open_detection_run
    from recon.runs import open_run
    from viewer import Viewer

    detector, info = open_detection_run(args.run_dir, args.device)
    names = [s.name for s in detector.data.val]
    if not names:
        raise ValueError(f"{args.run_dir}: its data {info['data']} has no val scenes to show")
    if args.scene is not None and args.scene not in names:
        raise ValueError(f"--scene {args.scene}: not a val scene of {info['data']} (val scenes: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    scene = detector.data.val[names.index(args.scene or names[0])]
    predicted = detector.predict([scene])[scene.name]
    splat, splat_info = open_run(Path(info["recon"]) / scene.name, args.device)
    viewer = Viewer(splat, host=args.host, port=args.port, training=False, step=splat_info["step"])
    viewer.add_boxes("Ground truth", scene.boxes.numpy(), [CLASSES[i] for i in scene.labels.tolist()], (40, 200, 80))
    viewer.add_boxes("Predicted", np.array(predicted["boxes"]), predicted["labels"], (230, 60, 40), np.array(predicted["scores"]))
    return viewer, f"{scene.name}: {len(scene.boxes)} ground-truth and {len(predicted['boxes'])} predicted boxes, detector step {info['step']}"


def _refuse_detection_run(run_dir: Path, instead: str) -> None:
    from recon.runs import run_method_name

    if run_method_name(run_dir) == "detect":
        raise ValueError(f"{run_dir}: a detection run renders nothing; {instead}")


def cmd_export(args: argparse.Namespace) -> None:
    from recon.runs import open_run

    _refuse_detection_run(args.run_dir, "its predictions: recon detect eval RUN (RUN/eval/predictions.json)")
    method, info = open_run(args.run_dir, args.device)
    if not hasattr(method, "export_ply"):
        raise ValueError(f"{args.run_dir}: method {info['method']!r} has no .ply export (Gaussian methods do)")
    out = args.out or args.run_dir / "export" / "point_cloud.ply"
    method.export_ply(out)
    print(f"wrote {method.num_gaussians} Gaussians to {out}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings for users as one line each (they name their file), without Python's source location."""
    print(f"recon: warning: {message}", file=sys.stderr if file is None else file)


def _error_line(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename is not None:  # e.g. --out in a read-only directory
        return f"{error.filename}: {error.strerror or error}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    import warnings

    from data import DataError
    from recon import distributed
    from recon.io import CheckpointError

    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parallel = args.command in ("train", "dream") or (args.command == "detect" and args.detect_command == "train")
    handlers = {"data": cmd_data, "train": cmd_train, "gpf": cmd_gpf_edit, "dream": cmd_dream, "detect": cmd_detect, "batch": cmd_batch, "eval-suite": cmd_eval_suite, "eval": cmd_eval, "render": cmd_render, "view": cmd_view, "export": cmd_export}
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        if args.device is not None:
            _check_device(args.device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not parallel:
            raise ValueError(f"recon {args.command}: only training (recon train, dream, detect train) runs in several processes; start it without torchrun")
        _, args.device = distributed.init(args.device) if parallel else (None, args.device)  # torchrun: join the job
        handlers[args.command](args)
    except (DataError, CheckpointError, ValueError, OSError, distributed.DistributedError) as error:
        print(f"recon: error: {_error_line(error)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
        distributed.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
