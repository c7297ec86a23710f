"""`recon data colmap`: pose a folder of photos (or a video's frames) with pycolmap and write the
COLMAP scene layout `data.load` reads (data/formats/colmap.py):

    OUT/images/        the photos, undistorted to pinhole cameras
    OUT/sparse/0/      cameras.bin, images.bin, points3D.bin

Stages: frames from the video (imageio-ffmpeg, `fps` per second) or the photos, resized so the
longer side is at most `max_size`; SIFT features (one shared camera, SIMPLE_RADIAL, unless
`single_camera` is off); exhaustive or sequential matching (sequential suits video); incremental
mapping, keeping the model that registers most images; undistortion. OUT is written beside itself
and renamed when complete, so a failure leaves nothing behind.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.scene import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
MIN_REGISTERED = 0.5  # a model registering fewer than this share of the images is an error


def video_frames(video: Path, fps: float) -> list[np.ndarray]:
    """uint8 frames [H, W, 3] of a video, `fps` per second of it."""
    import imageio.v2 as iio2

    try:
        reader = iio2.get_reader(video, "ffmpeg")
        source_fps = float(reader.get_meta_data().get("fps", 30.0))
        step = max(1, round(source_fps / fps))
        frames = [frame[..., :3] for k, frame in enumerate(reader) if k % step == 0]
    except (OSError, RuntimeError, ValueError) as error:
        raise DataError(f"{video}: cannot read the video ({str(error).splitlines()[0]})") from None
    if not frames:
        raise DataError(f"{video}: no frames")
    return frames


def pose_images(out: Path, *, images: Path | None = None, video: Path | None = None, fps: float = 2.0, matcher: str = "exhaustive",
                max_size: int = 1600, single_camera: bool = True, progress: Callable[[str], None] = print) -> dict:
    """Pose the photos in `images` (or frames of `video`) into OUT; returns a summary."""
    import imageio.v3 as iio

    try:
        import pycolmap
    except ImportError:
        raise DataError("recon data colmap needs pycolmap: pip install pycolmap (the colmap extra)") from None
    from data.formats.common import resize_area
    from data.synth import write_dataset

    pycolmap.logging.minloglevel = 2  # COLMAP's own log: errors only (the stages are reported through `progress`)
    if matcher not in ("exhaustive", "sequential"):
        raise DataError(f"--matcher: expected exhaustive or sequential, got {matcher!r}")
    if max_size < 64:
        raise DataError(f"--max-size {max_size}: expected at least 64 pixels")
    if (images is None) == (video is None):
        raise DataError("give --images DIR or --video FILE")
    if video is not None:
        frames = video_frames(video, fps)
        names = [f"frame_{k:05d}.png" for k in range(len(frames))]
    else:
        if not images.is_dir():
            raise DataError(f"{images}: not a directory of photos")
        paths = sorted(p for p in images.iterdir() if p.suffix in IMAGE_SUFFIXES)
        if len(paths) < 3:
            raise DataError(f"{images}: {len(paths)} photos (.jpg or .png); posing needs at least 3, and overlap between them")
        frames, names = None, [p.stem + ".png" for p in paths]
    stats: dict = {"images": len(names)}

    def write(work: Path) -> None:
        source = work / "input"
        source.mkdir()
        progress(f"preparing {len(names)} images")
        for k, name in enumerate(names):
            frame = frames[k] if frames is not None else iio.imread(paths[k])[..., :3]
            h, w = frame.shape[:2]
            scale = min(1.0, max_size / max(h, w))
            if scale < 1:
                size = (round(h * scale), round(w * scale))
                frame = (resize_area(frame.astype(np.float32) / 255, size) * 255 + 0.5).astype(np.uint8)
            iio.imwrite(source / name, frame)
        database = work / "database.db"
        tic = time.perf_counter()
        progress("extracting SIFT features")
        mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.AUTO
        pycolmap.extract_features(database, source, camera_mode=mode, device=pycolmap.Device.cpu)
        progress(f"matching ({matcher})")
        (pycolmap.match_exhaustive if matcher == "exhaustive" else pycolmap.match_sequential)(database, device=pycolmap.Device.cpu)
        progress("incremental mapping")
        models = pycolmap.incremental_mapping(database, source, work / "sparse")
        if not models:
            raise DataError(f"{images or video}: COLMAP registered no images: the photos need more overlap and texture"
                            + (" (for a video, try --matcher sequential)" if video is not None else ""))
        best = max(models, key=lambda k: models[k].num_reg_images())
        registered = models[best].num_reg_images()
        stats.update(registered=registered, points=models[best].num_points3D(), models=len(models))
        if registered < MIN_REGISTERED * len(names):
            raise DataError(f"{images or video}: COLMAP registered only {registered} of {len(names)} images (in {len(models)} pieces): "
                            "more overlap between neighbouring photos, more texture, fewer moving objects or a larger --max-size usually help")
        progress(f"undistorting ({registered} of {len(names)} images registered)")
        pycolmap.undistort_images(work / "undistorted", work / "sparse" / str(best), source)
        (work / "undistorted" / "images").rename(work / "images")
        target = work / "sparse_final" / "0"
        target.mkdir(parents=True)
        for part in ("cameras.bin", "images.bin", "points3D.bin"):
            shutil.move(work / "undistorted" / "sparse" / part, target / part)
        for leftover in ("input", "undistorted", "sparse", "database.db"):
            path = work / leftover
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        (work / "sparse_final").rename(work / "sparse")
        stats["seconds"] = round(time.perf_counter() - tic, 1)

    write_dataset(out, write)
    return stats
