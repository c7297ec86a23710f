"""COLMAP scenes (data/formats/colmap.py): a generated scene written as a COLMAP model (binary and
text, every supported camera model) loads back with its cameras; distorted images are undistorted;
broken models fail with one error naming the file."""
import shutil

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import data
from data.formats.colmap import Camera, Image, qvec_from_rotation, write_model

DISTORTION = {"SIMPLE_PINHOLE": [], "PINHOLE": [], "SIMPLE_RADIAL": [1.0], "RADIAL": [1.0, 0.5], "OPENCV": [1.0, 0.5, 0.02, -0.02]}


def camera_for(model: str, K: np.ndarray, width: int, height: int) -> Camera:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    head = [fx, cx, cy] if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else [fx, fy, cx, cy]
    return Camera(model, width, height, np.array(head + DISTORTION[model], dtype=np.float64))


def distort(image: np.ndarray, camera: Camera) -> np.ndarray:
    """The photo a camera with this distortion takes of the pinhole `image`."""
    K, d = camera.intrinsics()
    h, w = image.shape[:2]
    shifted = K.copy()
    shifted[:2, 2] -= 0.5
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1).reshape(-1, 1, 2)
    undistorted = cv2.undistortPoints(grid, shifted, d, P=shifted).reshape(h, w, 2)
    return cv2.remap(image, undistorted[..., 0], undistorted[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def checkers(height: int, width: int, phase: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return ((((x + phase) // 16 + y // 16) % 2)[..., None] * np.array([0.9, 0.6, 0.3]) + 0.05).astype(np.float32)


def write_colmap(root, scene, model: str = "PINHOLE", binary: bool = True, views=None, pattern: bool = False):
    """scene's views (or, with `pattern`, checkerboards of 4× their size) as ROOT/images/*.png + ROOT/sparse/0,
    one camera per view."""
    views = list(range(scene.num_views)) if views is None else views
    (root / "images").mkdir(parents=True)
    cameras, images = {}, {}
    for k, v in enumerate(views):
        factor = 4 if pattern else 1
        K = scene.K[v].double().numpy() * np.array([[factor], [factor], [1]])
        camera = camera_for(model, K, scene.width * factor, scene.height * factor)
        cameras[k + 1] = camera
        w2c = np.linalg.inv(scene.c2w[v].double().numpy())
        name = f"frame_{k:03d}.png"
        images[k + 1] = Image(qvec_from_rotation(w2c[:3, :3]), w2c[:3, 3], k + 1, name)
        rgb = checkers(scene.height * 4, scene.width * 4, k) if pattern else scene.images[v].numpy()
        if DISTORTION[model]:
            rgb = distort(rgb, camera)
        iio.imwrite(root / "images" / name, (rgb * 255 + 0.5).astype(np.uint8))
    write_model(root / "sparse" / "0", cameras, images, scene.points.double().numpy(), scene.point_colors.double().numpy(), binary=binary)
    return root


@pytest.fixture(scope="module")
def source(tiny_blender):
    return data.load(tiny_blender)


def normalised_centres(c2w: torch.Tensor) -> torch.Tensor:
    centres = c2w[:, :3, 3] - c2w[:, :3, 3].mean(0)
    return centres / centres.norm(dim=1).max()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("model", ["SIMPLE_PINHOLE", "PINHOLE"])
def test_a_colmap_model_loads_back_its_cameras_and_points(source, tmp_path, model, binary):
    views = list(range(12))
    scene = data.load(write_colmap(tmp_path / "capture", source, model, binary, views))
    assert scene.num_views == 12 and scene.split("test").tolist() == [0, 8] and len(scene.split("train")) == 10
    torch.testing.assert_close(scene.K, source.K[views], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scene.c2w[:, :3, :3], source.c2w[views, :3, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scene.c2w[:, :3, 3], normalised_centres(source.c2w[views]), atol=1e-5, rtol=1e-5)
    assert scene.c2w[:, :3, 3].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    assert (scene.images - source.images[views]).abs().max() <= 0.5 / 255 + 1e-6
    assert len(scene.points) == len(source.points) and scene.point_colors.shape == scene.points.shape
    depths = torch.cat([(scene.points - pose[:3, 3]) @ pose[:3, 2] for pose in scene.c2w])
    assert scene.near < depths[depths > 0].quantile(0.01) and scene.far > depths.quantile(0.99)


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "RADIAL", "OPENCV"])
def test_distorted_photos_are_undistorted_to_the_pinhole(source, tmp_path, model):
    scene = data.load(write_colmap(tmp_path / "capture", source, model, True, [0, 1, 2], pattern=True))
    truth = torch.from_numpy(np.stack([checkers(scene.height, scene.width, k) for k in range(3)]))
    raw = torch.from_numpy(np.stack([iio.imread(p) for p in scene.image_paths])).float() / 255
    inner = (slice(None), slice(16, -16), slice(16, -16))
    undistorted_error, raw_error = (scene.images - truth)[inner].abs().mean(), (raw - truth)[inner].abs().mean()
    assert undistorted_error < 0.4 * raw_error, (float(undistorted_error), float(raw_error))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-5])


BREAKS = {
    "missing image": (lambda root: (root / "images" / "frame_001.png").unlink(), "frame_001.png: image 'frame_001.png' of the COLMAP model is not on disk"),
    "fisheye": (lambda root: (root / "sparse" / "0" / "cameras.txt").write_text("1 OPENCV_FISHEYE 32 32 20 20 16 16 0 0 0 0\n"),
                "camera model OPENCV_FISHEYE is not supported: undistort the images first"),
    "truncated": (lambda root: _truncate(root / "sparse" / "0" / "images.bin"), "images.bin: not a valid COLMAP images file"),
    "empty": (lambda root: (root / "sparse" / "0" / "images.bin").write_bytes((0).to_bytes(8, "little")), "the COLMAP model registers no images"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_models_fail_with_one_error_naming_the_file(source, tmp_path, name):
    breaker, message = BREAKS[name]
    root = write_colmap(tmp_path / "capture", source, "PINHOLE", name != "fisheye", [0, 1, 2])
    breaker(root)
    with pytest.raises(data.DataError, match=message):
        data.load(root)
    shutil.rmtree(root)
