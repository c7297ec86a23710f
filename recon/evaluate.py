"""`recon eval` (metrics on the test split) and `recon render` (camera paths to frames and video)."""
from __future__ import annotations

import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from recon.io import atomic_write, write_json, write_text
from recon.methods.base import Method
from recon.metrics import lpips, psnr, ssim
from renderers.cameras import orbit_path, spiral_path


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] → uint8 array."""
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def write_png(path: Path, image: torch.Tensor) -> None:
    atomic_write(path, lambda tmp: iio.imwrite(tmp, to_uint8(image)))


ERROR_MAP_MAX = 0.25  # mean absolute RGB error shown at the top of the error map's colour scale


def comparison_image(target: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """[H, 3·W, 3]: ground truth | render | error map (mean absolute RGB error, inferno colours,
    black = 0, yellow-white ≥ ERROR_MAP_MAX)."""
    from matplotlib import colormaps

    error = ((rgb - target).abs().mean(-1) / ERROR_MAP_MAX).clamp(0, 1)  # [H, W]
    colours = torch.from_numpy(colormaps["inferno"](error.numpy())[..., :3]).float()  # [H, W, 3]
    return torch.cat([target, rgb, colours], dim=1)


def evaluate(method: Method, out_dir: Path, split: str = "test", max_views: int | None = None) -> dict:
    """Render every view of `split`; write per-view renders, compare/ images (ground truth | render |
    error map), results.json and results.md to out_dir.

    Metrics are computed on 8-bit-quantised renders, as 3DGS and NerfBaselines do.
    """
    scene = method.scene
    views = scene.split(split).tolist()[:max_views]
    if not views:
        raise ValueError(f"{scene.root}: split {split!r} has no views to evaluate")
    rows = []
    for i in views:
        tic = time.perf_counter()
        rgb = method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"].cpu()  # waits for CUDA
        seconds = time.perf_counter() - tic
        rgb = torch.from_numpy(to_uint8(rgb)).float() / 255
        name = scene.image_paths[i].stem if scene.image_paths else f"view_{i:04d}"
        write_png(out_dir / f"{name}.png", rgb)
        write_png(out_dir / "compare" / f"{name}.png", comparison_image(scene.images[i], rgb))
        score = lpips(rgb, scene.images[i])
        rows.append({
            "view": name,
            "psnr": float(psnr(rgb, scene.images[i])),
            "ssim": float(ssim(rgb, scene.images[i])),
            "lpips": None if score is None else float(score),
            "render_seconds": seconds,
        })
    mean = {key: _mean([r[key] for r in rows]) for key in ("psnr", "ssim", "lpips", "render_seconds")}
    mean["fps"] = 1.0 / max(mean["render_seconds"], 1e-9)  # frames per second over the split
    results = {"split": split, "num_views": len(rows), "mean": mean, "views": rows}
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "results.md", _markdown(results))
    return results


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _markdown(results: dict) -> str:
    def cell(value, digits):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [f"# {results['split']} split: {results['num_views']} views", "", "| view | PSNR | SSIM | LPIPS | render s |", "|---|---|---|---|---|"]
    for r in results["views"] + [{"view": "**mean**", **results["mean"]}]:
        lines.append(f"| {r['view']} | {cell(r['psnr'], 2)} | {cell(r['ssim'], 4)} | {cell(r['lpips'], 4)} | {cell(r['render_seconds'], 3)} |")
    return "\n".join(lines) + "\n"


def render_path(method: Method, out_dir: Path, path: str = "orbit", num_frames: int = 120, fps: int = 30) -> Path:
    """Render a camera path (orbit around the training cameras, or a forward-facing spiral);
    write frame PNGs to out_dir/<path>/ and out_dir/<path>.mp4; returns the video path."""
    if num_frames < 1 or fps < 1:
        raise ValueError(f"--frames {num_frames} --fps {fps}: expected positive numbers")
    scene = method.scene
    train_c2w = scene.c2w[scene.split("train")]
    if path == "orbit":
        poses = orbit_path(train_c2w, num_frames)
    elif path == "spiral":
        poses = scene.render_poses if scene.render_poses is not None else spiral_path(train_c2w, _focus_depth(scene), num_frames)
    else:
        raise ValueError(f"--path must be 'orbit' or 'spiral', got {path!r}")
    K = scene.K[0]
    frames = []
    for k, c2w in enumerate(poses):
        rgb = method.render_view(K, c2w, scene.width, scene.height)["rgb"]
        write_png(out_dir / path / f"frame_{k:04d}.png", rgb)
        frames.append(to_uint8(rgb))
    video = out_dir / f"{path}.mp4"
    atomic_write(video, lambda tmp: iio.imwrite(tmp, np.stack(frames), fps=fps, macro_block_size=1))
    return video


def _focus_depth(scene) -> float:
    """Depth a forward-facing path looks at: mean GT depth when known, else mid-range."""
    if scene.depths is not None and (scene.depths > 0).any():
        return float(scene.depths[scene.depths > 0].mean())
    return 0.5 * (scene.near + scene.far) if not scene.ndc else 4.0


def parse_clip(clip: str) -> tuple[str, Path]:
    """"ARCH:FILE" → (open_clip architecture, weights file); ValueError unless the file exists."""
    arch, _, weights = clip.partition(":")
    if not arch or not Path(weights).is_file():
        raise ValueError(f"--clip {clip}: expected ARCH:FILE with a local weights file, e.g. ViT-B-32:open_clip_model.bin")
    return arch, Path(weights)


def clip_score(frames_dir: Path, prompt: str, clip: str | None) -> dict:
    """CLIP similarity (100 × cosine, as text-to-3D papers report it) between `prompt` and each
    frame in frames_dir, averaged; `clip` = "ARCH:FILE", an open_clip architecture and its local
    weights. {"clip_score": None, "note": why} when there are no weights or no open_clip."""
    if not clip:
        return {"clip_score": None, "note": "n/a: no CLIP weights (--clip ARCH:FILE or $RECON_CLIP)"}
    arch, weights = parse_clip(clip)
    try:
        import open_clip
    except ImportError:
        return {"clip_score": None, "note": "n/a: open_clip is not installed (pip install open-clip-torch)"}
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
    tokenizer = open_clip.get_tokenizer(arch)
    frames = sorted(Path(frames_dir).glob("*.png"))
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tokenizer([prompt])), dim=-1)  # [1, E]
        images = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in frames])
        features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)  # [F, E]
    scores = 100 * (features @ text.T).squeeze(1)
    return {"clip_score": float(scores.mean()), "note": f"{arch} on {len(frames)} frames", "per_frame": scores.tolist()}
