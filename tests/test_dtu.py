"""The DTU loader (MVSNet layout) on a small DTU-layout dataset the test writes from a generated
scene: cameras (with MVSNet's ¼-size training intrinsics), images per light, ¼-size PFM depth and
masks, pair.txt, scan lists, and clear errors."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import data
from data.formats.dtu import dtu_pairs, dtu_scans, read_pfm, write_pfm
from data.synth import generate


def write_dtu(root, source, scan: int = 114, quarter_cams: bool = True, depth: bool = True):
    """The views of `source` (a Scene with depths and masks) as DTU scan `scan` under ROOT."""
    cams, images, depths = root / "Cameras" / "train", root / "Rectified" / f"scan{scan}_train", root / "Depths" / f"scan{scan}_train"
    for folder in (cams, images, depths) if depth else (cams, images):
        folder.mkdir(parents=True, exist_ok=True)
    for v in range(source.num_views):
        K = source.K[v].double().numpy().copy()
        if quarter_cams:
            K[:2] /= 4
        w2c = np.linalg.inv(source.c2w[v].double().numpy())
        text = "extrinsic\n" + "\n".join(" ".join(f"{x:.10f}" for x in row) for row in w2c) + "\n\nintrinsic\n"
        text += "\n".join(" ".join(f"{x:.10f}" for x in row) for row in K) + f"\n\n{source.near:.6f} {(source.far - source.near) / 192:.6f}\n"
        (cams / f"{v:08d}_cam.txt").write_text(text)
        for light in (0, 3):
            rgb = source.images[v].numpy() * (1.0 if light == 3 else 0.5)
            iio.imwrite(images / f"rect_{v + 1:03d}_{light}_r5000.png", (rgb * 255 + 0.5).astype(np.uint8))
        if depth:
            write_pfm(depths / f"depth_map_{v:04d}.pfm", source.depths[v].numpy()[2::4, 2::4])
            iio.imwrite(depths / f"depth_visual_{v:04d}.png", ((source.masks[v].numpy()[2::4, 2::4] > 0.5) * 255).astype(np.uint8))
    (root / "Cameras" / "pair.txt").write_text(f"{source.num_views}\n" + "".join(
        f"{v}\n2 {(v + 1) % source.num_views} 10.5 {(v + 2) % source.num_views} 3.0\n" for v in range(source.num_views)))
    return images


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return data.load(generate(tmp_path_factory.mktemp("dtu") / "blender", format="blender", seed=2, views=10, res=32))


def test_a_dtu_scan_loads_the_cameras_images_depth_and_masks(source, tmp_path):
    scan = write_dtu(tmp_path, source)
    scene = data.load(scan, holdout=4)
    n = source.num_views
    assert scene.num_views == n and scene.name == "dtu_scan114_train" and scene.background == (0.0, 0.0, 0.0)
    torch.testing.assert_close(scene.K, source.K, atol=1e-4, rtol=1e-5)  # ¼-size cam intrinsics scaled back to the images
    torch.testing.assert_close(scene.c2w, source.c2w, atol=1e-5, rtol=1e-5)
    assert (scene.images - source.images).abs().max() <= 0.5 / 255 + 1e-6  # light 3 by default
    assert scene.split("test").tolist() == list(range(0, n, 4)) and len(scene.split("train")) == n - len(range(0, n, 4))
    # ¼-size depth brought back by nearest neighbour: each 4×4 block holds its sampled pixel's depth
    torch.testing.assert_close(scene.depths[:, 2::4, 2::4], source.depths[:, 2::4, 2::4])
    assert torch.equal(scene.masks[:, 2::4, 2::4], (source.masks[:, 2::4, 2::4] > 0.5).float())
    assert scene.near == pytest.approx(source.near, rel=1e-5) and scene.far == pytest.approx(source.far, rel=1e-4)
    dim = data.load(scan, light=0)
    assert (dim.images - source.images * 0.5).abs().max() <= 0.5 / 255 + 1e-6
    assert dtu_pairs(tmp_path)[3] == [4, 5]


def test_full_size_cams_pfm_round_trip_and_scan_lists(source, tmp_path):
    write_dtu(tmp_path, source, scan=1, quarter_cams=False, depth=False)
    write_dtu(tmp_path, source, scan=3, depth=False)
    scene = data.load(tmp_path / "Rectified" / "scan1_train")
    torch.testing.assert_close(scene.K, source.K, atol=1e-4, rtol=1e-5)
    assert scene.depths is None and scene.masks is None
    assert [p.name for p in dtu_scans(tmp_path, "test")] == ["scan1_train"]  # scan 1 is an MVSNet test scan
    assert [p.name for p in dtu_scans(tmp_path, "train")] == ["scan3_train"]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text("scan3\n")
    assert [p.name for p in dtu_scans(tmp_path, "val")] == ["scan3_train"]
    image = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    write_pfm(tmp_path / "x.pfm", image)
    assert np.array_equal(read_pfm(tmp_path / "x.pfm"), image)


BREAKS = [  # (what breaks a DTU-layout root, the error it gives)
    (lambda root: (root / "Cameras" / "train" / "00000002_cam.txt").write_text("extrinsic\n1 0 0\n"), "00000002_cam.txt: expected 'extrinsic'"),
    (lambda root: (root / "Cameras" / "train" / "00000001_cam.txt").unlink(), "00000001_cam.txt: camera file missing"),
    (lambda root: (root / "Depths" / "scan114_train" / "depth_map_0003.pfm").write_bytes(b"P6\n"), "depth_map_0003.pfm: not a PFM image"),
    (lambda root: (root / "Cameras" / "train" / "00000000_cam.txt").write_text(
        (root / "Cameras" / "train" / "00000000_cam.txt").read_text().rsplit("\n\n", 1)[0] + "\n\n5.0 -1.0\n"), "00000000_cam.txt: depth range"),
]


@pytest.mark.parametrize("breakage, message", BREAKS)
def test_broken_dtu_scans_fail_with_one_error_naming_the_file(source, tmp_path, breakage, message):
    scan = write_dtu(tmp_path, source)
    breakage(tmp_path)
    with pytest.raises(data.DataError, match=message):
        data.load(scan)
